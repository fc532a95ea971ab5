//! Marketplacer's schema, compiled once for the stand-in.
//!
//! The stand-in must reject what Marketplacer rejects, so it validates and executes against the
//! full SDL, not the trimmed `types.json` the mapping checks use: a client may select any field
//! of any type. The copy is `schemas/marketplacer/marketplacer.graphqls` (provenance in the
//! README beside it), compiled into the binary.

use apollo_compiler::collections::HashMap;
use apollo_compiler::schema::Implementers;
use apollo_compiler::validation::Valid;
use apollo_compiler::{Name, Schema};
use std::sync::OnceLock;

/// The SDL, as copied (see `schemas/marketplacer/README.md`).
pub(crate) const SDL: &str = include_str!("../../../schemas/marketplacer/marketplacer.graphqls");

/// The schema, parsed and validated on first use (about a tenth of a second).
pub(crate) fn schema() -> &'static Valid<Schema> {
    static SCHEMA: OnceLock<Valid<Schema>> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::parse_and_validate(SDL, "marketplacer.graphqls")
            .expect("the committed Marketplacer SDL is a valid schema (tested)")
    })
}

/// Which object types implement each interface: computed once, not per request.
pub(crate) fn implementers() -> &'static HashMap<Name, Implementers> {
    static IMPLEMENTERS: OnceLock<HashMap<Name, Implementers>> = OnceLock::new();
    IMPLEMENTERS.get_or_init(|| schema().implementers_map())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdl_is_a_valid_schema() {
        let result = Schema::parse_and_validate(SDL, "marketplacer.graphqls");
        if let Err(errors) = &result {
            panic!("{}", errors.errors);
        }
        let schema = schema();
        assert!(schema.get_object("Invoice").is_some());
        assert!(schema.get_object("Query").is_some());
    }
}
