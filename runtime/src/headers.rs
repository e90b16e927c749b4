//! Header names the host writes, the rules for which headers the host owns
//! and which a guest may write, and conversions to and from the NATS
//! client's header map.

use async_nats::HeaderMap;

/// Header naming the tenant on every output; the host's word, not the guest's.
pub const TENANT_HEADER: &str = "Sluice-Tenant";
/// Header naming the plugin version (`name@digest`) that produced an output.
pub const PLUGIN_HEADER: &str = "Sluice-Plugin";
/// JetStream's de-duplication header; outputs get
/// `<tenant>:<stream>:<seq>:<index>`.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Headers the host owns on outputs: whatever a guest or producer put there
/// is dropped before the host writes its own.
pub fn host_owned(name: &str) -> bool {
    let prefixed = |prefix: &str| {
        name.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    prefixed("sluice-") || prefixed("nats-")
}

/// NATS headers travel as text lines: a name with `:` or whitespace, or a
/// line break anywhere, would forge other headers. Guests are not trusted
/// with that.
pub(crate) fn valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        && !value.bytes().any(|b| b == b'\r' || b == b'\n')
}

/// Why the message was dead-lettered.
pub const REASON_HEADER: &str = "Sluice-Reason";
/// The stream the source came from.
pub const SOURCE_STREAM_HEADER: &str = "Sluice-Source-Stream";
/// The source's stream sequence.
pub const SOURCE_SEQ_HEADER: &str = "Sluice-Source-Seq";
/// The source's subject.
pub const SOURCE_SUBJECT_HEADER: &str = "Sluice-Source-Subject";
/// How many deliveries the source had.
pub const DELIVERED_HEADER: &str = "Sluice-Delivered";
/// Set on a dead letter whose payload was cut to fit the server's
/// `max_payload`: the original payload's length in bytes.
pub const TRUNCATED_HEADER: &str = "Sluice-Truncated";
/// A producer's `Nats-*` header is kept on a dead letter under this prefix
/// (`Nats-TTL` → `Sluice-Source-Nats-TTL`): as itself it would be an
/// instruction to the dead-letter stream (an expected sequence that never
/// matches, a TTL, a rollup that purges earlier dead letters).
pub const SOURCE_HEADER_PREFIX: &str = "Sluice-Source-";

/// The dead letter's header that carries the raw, escaped header block of
/// a message whose headers could not be read.
pub const SOURCE_HEADERS_HEADER: &str = "Sluice-Source-Headers";

/// Bytes `headers` take on the wire: `Name: value\r\n` each.
pub(crate) fn header_bytes(headers: &[(String, String)]) -> usize {
    headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum()
}

/// Our header list as a NATS header map.
pub fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(k.as_str(), v.as_str());
    }
    map
}

/// A NATS header map as our header list.
pub fn header_list(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(map) = map else { return Vec::new() };
    let mut out = Vec::new();
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        for v in values {
            out.push((name.to_owned(), v.as_str().to_owned()));
        }
    }
    out
}
