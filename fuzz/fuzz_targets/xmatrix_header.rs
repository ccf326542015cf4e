//! The X-Matrix Authorization header parser: never panics; what it accepts prints back to a
//! header that parses to the same thing.
#![no_main]

use annuaire::matrix::xmatrix::XMatrixAuth;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    if let Ok(auth) = XMatrixAuth::parse(input) {
        let again = XMatrixAuth::parse(&auth.to_string()).expect("a built header parses");
        assert_eq!(again, auth);
    }
});
