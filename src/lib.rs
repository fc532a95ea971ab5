//! marketsync keeps Klaviyo in step with Marketplacer: deliveries in, Klaviyo requests out,
//! through mapping specs a consultant edits in YAML.
//!
//! The library's shape is the data path, one way, left to right: [`source`] turns bytes into
//! records, [`engine`] compiles a mapping set once and maps each record to [`klaviyo`]
//! requests, validated against Klaviyo's own schemas before they leave. [`spec`] is the YAML as
//! written, with positions for every diagnostic.
//!
//! ```
//! use marketsync::engine::Engine;
//! use marketsync::source::parse_delivery;
//!
//! // Compile once: the default mappings built into the binary.
//! let (engine, _warnings) = Engine::builtin().expect("the default mappings compile");
//! // Run many: each delivery becomes zero or more validated Klaviyo requests.
//! let delivery = r#"{"id": "E1", "event_name": "update", "payload": {"data": {"node": {"__typename": "Seller", "id": "U2VsbGVyLTQ="}}}}"#;
//! for record in parse_delivery(delivery).unwrap() {
//!     let mapped = engine.map(&record);
//!     assert!(!mapped.matched, "no default mapping reads sellers");
//!     assert!(mapped.requests.is_empty());
//! }
//! ```

pub mod alerts;
pub mod customer;
pub mod diagnostic;
pub mod engine;
mod group_commit;
pub mod klaviyo;
pub mod lag;
pub mod marketplacer;
pub mod metrics;
pub mod page;
mod pipeline;
pub mod queries;
pub mod reconcile;
pub mod replay;
pub mod run;
pub mod serve;
pub mod sink;
pub mod source;
pub mod spec;
pub mod standin;
pub mod store;
pub mod sync;
pub mod testing;
