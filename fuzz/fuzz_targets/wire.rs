#![no_main]
//! See `tests/properties.rs` for the property.

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/properties.rs"]
#[allow(dead_code)]
mod properties;

fuzz_target!(|i: (u8, Vec<u8>)| {
    properties::wire(&i.1, usize::from(i.0));
});
