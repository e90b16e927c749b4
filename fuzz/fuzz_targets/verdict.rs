#![no_main]
//! See `tests/properties.rs` for the property.

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/properties.rs"]
#[allow(dead_code)]
mod properties;

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    kind: u8,
    outputs: Vec<properties::RawOutput>,
    text: String,
    ms: u32,
}

fuzz_target!(|i: Input| {
    properties::verdict(properties::verdict_of(i.kind, i.outputs, i.text, i.ms));
});
