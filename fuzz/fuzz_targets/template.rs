#![no_main]
//! See `tests/properties.rs` for the property.

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/properties.rs"]
#[allow(dead_code)]
mod properties;

fuzz_target!(|i: (String, String, String)| {
    properties::template(&i.0, &i.1, &i.2);
});
