//! A bounded run of the properties in `properties.rs` on stable Rust, in CI:
//! the same properties the `cargo fuzz` targets in `fuzz/` explore without
//! bounds. Inputs lean towards what breaks parsers: wildcards, spaces,
//! empty tokens, CR/LF, `:`, non-ASCII, and the occasional huge value.

use proptest::prelude::*;

use crate::properties;

/// Cases per property: enough to cover the shapes below in about a second
/// each on a small machine.
const CASES: u32 = 512;

/// Subjects of the kinds a hostile guest returns.
fn subject() -> impl Strategy<Value = String> {
    prop_oneof![
        "acme(\\.[a-z0-9*>]{0,4}){0,5}",
        "[a-z.*> \t\r\n\u{0}é]{0,24}",
        "acme\\.out\\.[a-z]{1,8}",
        // Huge: far past every subject cap.
        "[a-z]{1,3}".prop_map(|s| format!("acme.{}", s.repeat(2000))),
    ]
}

/// Header names and values, valid and not.
fn header() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            "[A-Za-z-]{1,12}",
            "[A-Za-z: \r\n\u{7f}é-]{0,12}",
            "(Nats|Sluice)-[A-Za-z]{1,8}"
        ],
        prop_oneof!["[ -~]{0,16}", "[ -~\r\n\u{0}é]{0,16}"],
    )
}

fn output() -> impl Strategy<Value = properties::RawOutput> {
    (
        subject(),
        prop::collection::vec(header(), 0..4),
        prop::collection::vec(any::<u8>(), 0..64),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn any_verdict_publishes_only_valid_outputs_or_dead_letters(
        kind in any::<u8>(),
        outputs in prop::collection::vec(output(), 0..80),
        text in "[ -~\r\n]{0,40}",
        ms in any::<u32>(),
    ) {
        properties::verdict(properties::verdict_of(kind, outputs, text, ms));
    }

    #[test]
    fn any_packed_batch_decodes_to_its_count_or_an_error(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        count in 0usize..40,
    ) {
        properties::wire(&bytes, count);
    }

    #[test]
    fn any_template_parses_and_renders_without_panicking(
        template in "[{}a-z.\\[\\]0-9:-]{0,32}",
        tenant in "[a-z.*> ]{0,8}",
        subject in subject(),
    ) {
        properties::template(&template, &tenant, &subject);
    }

    #[test]
    fn any_stored_header_block_parses_to_headers_the_client_accepts(
        block in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..128),
            "NATS/1.0( [0-9a-z]{0,4})?\r\n([A-Za-z: \r\n\t-]{0,12}:[ -~\r\t]{0,12}\r\n){0,4}\r\n"
                .prop_map(String::into_bytes),
        ],
    ) {
        properties::header_block(&block);
    }

    #[test]
    fn any_config_text_loads_or_is_refused(
        text in prop_oneof![
            "[\\[\\]a-z_.=\" \n0-9{}]{0,200}",
            (0u64..u64::MAX, "[a-z0-9]{0,6}").prop_map(|(n, unit)| format!(
                "[nats]\nservers = [\"nats://x\"]\n[defaults]\nmax_in_flight = {n}\nack_wait = \"{n}{unit}\"\n\
                 [tenants.a]\nstream = \"A\"\noutput = \"a.{{subject}}\"\ndead_letter = \"a.d\"\npipeline = []\n"
            )),
        ],
    ) {
        properties::config_text(&text);
    }
}
