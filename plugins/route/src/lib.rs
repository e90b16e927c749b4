//! Reference plugin `route`: choose output subjects by content and subject.
//!
//! Each message is published, unchanged, to every subject the matching rules
//! name (see [`rules`] for the configuration). A message no rule matches goes
//! to the `unmatched` subject or, by default, to the dead-letter subject with
//! the reason `no route matched subject <subject>`: dropping it silently
//! would lose data, and retrying cannot change the outcome.

use sluice_guest::{Config, Handler, Message, Origin, Verdict};

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
        let view = self.routes.needs_payload().then(|| msg.json_view());
        let payload = view.as_ref().filter(|view| view.is_json());
        let targets = self.routes.targets(&msg.subject, payload, &origin.tenant);
        drop(view);
        match targets {
            Some(mut targets) => {
                // The last target takes the message itself: one copy fewer.
                let last = targets.pop();
                let mut outputs: Vec<Message> = targets
                    .into_iter()
                    .map(|target| msg.clone().with_subject(target))
                    .collect();
                if let Some(last) = last {
                    outputs.push(msg.with_subject(last));
                }
                Verdict::Publish(outputs)
            }
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
