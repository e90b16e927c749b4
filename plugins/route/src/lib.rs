//! Reference plugin `route`: choose output subjects by content and subject.
//!
//! Each message is published, unchanged, to every subject the matching rules
//! name (see [`rules`] for the configuration). A message no rule matches goes
//! to the `unmatched` subject or, by default, to the dead-letter subject with
//! the reason `no route matched subject <subject>`: dropping it silently
//! would lose data, and retrying cannot change the outcome.

use sluice_guest::{Config, Handler, Message, Origin, Value, Verdict, serde_json};

pub mod rules;
pub mod subject;

use rules::Routes;

struct Route {
    routes: Routes,
}

impl Handler for Route {
    fn init(config: Config) -> Result<Self, String> {
        Ok(Self {
            routes: Routes::parse(&config)?,
        })
    }

    fn handle(&self, origin: &Origin, msg: Message) -> Verdict {
        // A payload that is not JSON only fails the field conditions;
        // subject rules still apply to it.
        let payload = if self.routes.needs_payload() {
            serde_json::from_slice::<Value>(&msg.payload).ok()
        } else {
            None
        };
        match self
            .routes
            .targets(&msg.subject, payload.as_ref(), &origin.tenant)
        {
            Some(targets) => Verdict::Publish(
                targets
                    .into_iter()
                    .map(|target| msg.clone().with_subject(target))
                    .collect(),
            ),
            None => Verdict::DeadLetter(format!("no route matched subject {}", msg.subject)),
        }
    }
}

sluice_guest::export_handler!(Route);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_cases() {
        if let Err(report) = sluice_guest::cases::run::<Route>(include_str!("../cases.json")) {
            panic!("{report}");
        }
    }
}
