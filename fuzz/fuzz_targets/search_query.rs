//! Directory search folding and query parsing: never panic; expressions only carry folded terms.
#![no_main]

use annuaire::directory::search::{fold, fts5_match_expression, parse_query, tsquery_expression};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let folded = fold(input);
    assert_eq!(fold(&folded), folded, "folding is idempotent");
    if let Ok(query) = parse_query(input) {
        assert!(!query.terms.is_empty());
        let _ = fts5_match_expression(&query);
        let _ = tsquery_expression(&query);
    }
});
