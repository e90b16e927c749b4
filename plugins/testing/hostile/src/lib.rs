//! Test guest `hostile`: what a guest author out to hurt the host would
//! return, chosen by the payload, so the host's tests can show each ends in
//! a documented outcome and leaves other tenants alone.
//!
//! Payloads: `sleep:MS` → `std::thread::sleep` (a blocking WASI poll), then
//! `next` (`sleep:MS:REST` hands `REST` on as the payload); `fanout:N` → N small outputs on `<tenant>.out.f<i>`; `big:BYTES`
//! → one output of BYTES bytes; `subject:LEN` → an output whose subject is
//! LEN bytes long; `crlf` → an output header whose name holds CR/LF;
//! `claim` → an output that sets `Nats-*` and `Sluice-*` headers of its
//! own; `retry-max` → `retry(u32::MAX)`; `log:N` → N `host.log` lines,
//! each with a line break in it, then `next`. Anything else → `next`. The
//! config key `init_sleep_ms` makes `init` sleep that long.

use std::time::Duration;

use sluice_guest::{Config, Handler, Message, Origin, Verdict};

struct Hostile;

impl Handler for Hostile {
    fn init(config: Config) -> Result<Self, String> {
        if let Some(ms) = config.get("init_sleep_ms") {
            let ms: u64 = ms.parse().map_err(|e| format!("init_sleep_ms: {e}"))?;
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(Self)
    }

    fn handle(&self, origin: &Origin, msg: Message) -> Verdict {
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let (word, arg) = text.split_once(':').unwrap_or((text.as_str(), ""));
        let n = arg.parse::<usize>().unwrap_or(1);
        let out = |suffix: &str| format!("{}.out.{suffix}", origin.tenant);
        match word {
            "sleep" => {
                // `sleep:MS:REST` sleeps, then hands `REST` on.
                let (ms, rest) = match arg.split_once(':') {
                    Some((ms, rest)) => (ms.parse::<u64>().unwrap_or(1), Some(rest)),
                    None => (n as u64, None),
                };
                std::thread::sleep(Duration::from_millis(ms));
                match rest {
                    Some(rest) => Verdict::Next(Message {
                        payload: rest.as_bytes().to_vec(),
                        ..msg
                    }),
                    None => Verdict::Next(msg),
                }
            }
            "fanout" => Verdict::Publish(
                (0..n)
                    .map(|i| Message::new(out(&format!("f{i}")), i.to_string()))
                    .collect(),
            ),
            "big" => Verdict::Publish(vec![Message::new(out("big"), vec![b'x'; n])]),
            "subject" => {
                let long = "a".repeat(n);
                Verdict::Publish(vec![Message::new(out(&long), "long")])
            }
            "crlf" => {
                let mut m = Message::new(out("crlf"), "crlf");
                m.set_header("X-Bad\r\nNats-Rollup", "all");
                Verdict::Publish(vec![m])
            }
            "claim" => {
                let mut m = Message::new(out("claim"), "claim");
                for (k, v) in [
                    ("Nats-Msg-Id", "forged"),
                    ("Nats-Expected-Stream", "NOT_THIS_ONE"),
                    ("Nats-Expected-Last-Sequence", "999999"),
                    ("Nats-TTL", "1s"),
                    ("Nats-Rollup", "all"),
                    ("Sluice-Tenant", "someone-else"),
                    ("Sluice-Plugin", "forged@0"),
                    ("X-Kept", "yes"),
                ] {
                    m.set_header(k, v);
                }
                Verdict::Publish(vec![m])
            }
            "retry-max" => Verdict::Retry(u32::MAX),
            "log" => {
                for i in 0..n {
                    sluice_guest::log::info(&format!("line {i}\nforged: line"));
                }
                Verdict::Next(msg)
            }
            _ => Verdict::Next(msg),
        }
    }
}

sluice_guest::export_handler!(Hostile);
