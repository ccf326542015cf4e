//! Address normalisation: never panics, and what it accepts is a fixed point.
#![no_main]

use annuaire::policy::normalize_email;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(address) = normalize_email(input) {
        let again = normalize_email(address.as_str()).expect("a normalised address is valid");
        assert_eq!(
            again.as_str(),
            address.as_str(),
            "normalisation is idempotent"
        );
        assert!(address.as_str().len() <= 254);
    }
});
