//! Fuzzes the Dockerfile parser: no input may panic it, and what it accepts must
//! print to text that parses back to the same instructions.
//!
//! Run on stable with `RUSTC_BOOTSTRAP=1 cargo fuzz run parse` from `frontend/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(d) = kiln_frontend::parser::parse(&text, "Dockerfile") {
        let printed = d.to_string();
        match kiln_frontend::parser::parse(&printed, "Dockerfile") {
            Ok(again) => assert_eq!(again, d, "reparse of {printed:?}"),
            Err(e) => panic!("printed form {printed:?} does not parse: {e}"),
        }
    }
});
