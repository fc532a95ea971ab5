//! A local stand-in for Marketplacer's GraphQL API.

mod schema;
