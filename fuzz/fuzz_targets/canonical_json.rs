//! Canonical JSON: never panics; its output parses back to the same value and is canonical
//! itself.
#![no_main]

use annuaire::matrix::signing::canonical_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(text) = canonical_json(&value) {
        let back: serde_json::Value = serde_json::from_str(&text).expect("canonical JSON parses");
        assert_eq!(canonical_json(&back).expect("still canonical"), text);
    }
});
