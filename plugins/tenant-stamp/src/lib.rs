//! Reference plugin `tenant-stamp`: write the tenant the host vouches for
//! into the payload and a header.
//!
//! Producers cannot be trusted to say which tenant they are: the host knows
//! where it pulled the message from and passes that in `origin.tenant`. This
//! stage writes it over whatever the producer claimed, so later stages and
//! consumers can rely on it.
//!
//! Configuration:
//!
//! - `field` (default `tenant_id`): dot path in the JSON object payload;
//!   missing intermediate objects are created.
//! - `header` (default `Sluice-Tenant`): header name; every header of that
//!   name, in any letter case, is replaced by one.
//!
//! A payload that is not a JSON object is dead-lettered. The result is
//! `next` with the subject unchanged.

use sluice_guest::{Config, Handler, Message, Origin, Verdict, check_path};

const DEFAULT_FIELD: &str = "tenant_id";
const DEFAULT_HEADER: &str = "Sluice-Tenant";

struct TenantStamp {
    field: String,
    header: String,
}

impl Handler for TenantStamp {
    fn init(config: Config) -> Result<Self, String> {
        config.reject_unknown(&["field", "header"])?;
        let field = config.get_or("field", DEFAULT_FIELD);
        check_path(field).map_err(|err| format!("config key \"field\": {err}"))?;
        let header = config.get_or("header", DEFAULT_HEADER);
        if !is_header_name(header) {
            return Err(format!(
                "config key \"header\": \"{header}\" is not a valid header name"
            ));
        }
        Ok(Self {
            field: field.to_owned(),
            header: header.to_owned(),
        })
    }

    fn handle(&self, origin: &Origin, mut msg: Message) -> Verdict {
        match msg.edit_json_paths(|payload| payload.set_str(&self.field, &origin.tenant)) {
            Ok(()) => {
                msg.set_header(self.header.as_str(), origin.tenant.as_str());
                Verdict::Next(msg)
            }
            Err(reason) => Verdict::DeadLetter(reason),
        }
    }
}

/// NATS header names are printable ASCII without spaces or `:`, the same
/// rule as HTTP field names; anything else would break the header block.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

sluice_guest::export_handler!(TenantStamp);

#[cfg(test)]
mod tests {
    use sluice_guest::Value;
    use sluice_guest::serde_json::{self, json};

    use super::*;

    fn stamp(pairs: &[(&str, &str)]) -> Result<TenantStamp, String> {
        TenantStamp::init(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn origin() -> Origin {
        Origin {
            tenant: "acme".into(),
            stream: "IN".into(),
            stream_seq: 1,
            delivered: 1,
            published_ms: 0,
        }
    }

    #[test]
    fn overwrites_the_claimed_tenant() {
        let t = stamp(&[]).unwrap();
        let mut msg = Message::new("acme.in", r#"{"tenant_id":"evil","n":1}"#);
        msg.headers = vec![
            ("sluice-tenant".into(), "evil".into()),
            ("Correlation-Id".into(), "c1".into()),
        ];
        let Verdict::Next(out) = t.handle(&origin(), msg) else {
            panic!("expected next");
        };
        let payload: Value = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(payload, json!({"tenant_id": "acme", "n": 1}));
        assert_eq!(
            out.headers,
            vec![
                ("Sluice-Tenant".to_owned(), "acme".to_owned()),
                ("Correlation-Id".to_owned(), "c1".to_owned()),
            ]
        );
    }

    #[test]
    fn custom_field_and_header() {
        let t = stamp(&[("field", "meta.owner"), ("header", "X-Owner")]).unwrap();
        let Verdict::Next(out) = t.handle(&origin(), Message::new("s", "{}")) else {
            panic!("expected next");
        };
        assert_eq!(out.payload, br#"{"meta":{"owner":"acme"}}"#);
        assert_eq!(out.header("x-owner"), Some("acme"));
    }

    #[test]
    fn rejects_bad_config() {
        assert!(stamp(&[("feld", "x")]).err().unwrap().contains("\"feld\""));
        assert!(
            stamp(&[("field", "a..b")])
                .err()
                .unwrap()
                .contains("\"field\"")
        );
        assert!(
            stamp(&[("header", "a b")])
                .err()
                .unwrap()
                .contains("\"header\"")
        );
        assert!(stamp(&[("header", "")]).is_err());
    }

    #[test]
    fn dead_letters_what_it_cannot_stamp() {
        let t = stamp(&[]).unwrap();
        assert_eq!(
            t.handle(&origin(), Message::new("s", "42")),
            Verdict::DeadLetter("payload is not a JSON object".into())
        );
        let t = stamp(&[("field", "a.b")]).unwrap();
        assert_eq!(
            t.handle(&origin(), Message::new("s", r#"{"a":"x"}"#)),
            Verdict::DeadLetter("cannot set \"a.b\": \"a\" is a string, not an object".into())
        );
    }

    #[test]
    fn golden_cases() {
        if let Err(report) = sluice_guest::cases::run::<TenantStamp>(include_str!("../cases.json"))
        {
            panic!("{report}");
        }
    }
}
