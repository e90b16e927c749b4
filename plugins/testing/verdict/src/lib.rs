//! Test guest `verdict`: returns whatever verdict the payload names, so the
//! host's tests can drive every settle rule through a real component.
//!
//! Payloads: `next` (or anything else) → `next` unchanged; `ack`;
//! `retry:MS`; `dead:REASON`; `publish:N` → N copies on
//! `<tenant>.out.p<i>`; `outside` → publish to `elsewhere.out`; `trap` →
//! panic; `origin` → `next` with header `X-Origin:
//! <tenant>/<stream>/<seq>/<delivered>/<published-ms>`, what the guest was
//! told; `work:MS` → `next` after MS milliseconds of busy work (a slow
//! handler); `flaky:N` → `retry:10` on deliveries before N, then `next`. A
//! `|` ends the argument, so a payload can carry more (`flaky:3|k1|17`). A
//! payload starting with `{` is JSON and passes through as `next`.

use sluice_guest::{Config, Handler, Message, Origin, Verdict};

struct Verdicts;

impl Handler for Verdicts {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn handle(&self, origin: &Origin, msg: Message) -> Verdict {
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let (word, arg) = text.split_once(':').unwrap_or((text.as_str(), ""));
        let arg = arg.split('|').next().unwrap_or_default();
        match word {
            "ack" => Verdict::Ack,
            "flaky" if origin.delivered < arg.parse().unwrap_or(0) => Verdict::Retry(10),
            "retry" => Verdict::Retry(arg.parse().unwrap_or(0)),
            "dead" => Verdict::DeadLetter(arg.to_owned()),
            "publish" => {
                let n: usize = arg.parse().unwrap_or(1);
                Verdict::Publish(
                    (0..n)
                        .map(|i| {
                            msg.clone()
                                .with_subject(format!("{}.out.p{i}", origin.tenant))
                        })
                        .collect(),
                )
            }
            "origin" => {
                let seen = format!(
                    "{}/{}/{}/{}/{}",
                    origin.tenant,
                    origin.stream,
                    origin.stream_seq,
                    origin.delivered,
                    origin.published_ms
                );
                let mut msg = msg;
                msg.set_header("X-Origin", seen);
                Verdict::Next(msg)
            }
            "work" => {
                let until = std::time::Instant::now()
                    + std::time::Duration::from_millis(arg.parse().unwrap_or(0));
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
                Verdict::Next(msg)
            }
            "outside" => Verdict::Publish(vec![msg.with_subject("elsewhere.out".to_owned())]),
            #[allow(clippy::panic)] // The trap is the point of this payload.
            "trap" => panic!("asked to trap"),
            _ => Verdict::Next(msg),
        }
    }
}

sluice_guest::export_handler!(Verdicts);
