#![no_main]
//! See `tests/properties.rs` for the property.

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/properties.rs"]
#[allow(dead_code)]
mod properties;

fuzz_target!(|data: &[u8]| {
    properties::header_block(data);
});
