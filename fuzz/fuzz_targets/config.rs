#![no_main]
//! See `tests/properties.rs` for the property.

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/properties.rs"]
#[allow(dead_code)]
mod properties;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        properties::config_text(text);
    }
});
