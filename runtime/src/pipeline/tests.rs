//! The verdict rules, case by case.

use super::*;
use crate::message::FailureKind;

fn chain(stages: usize) -> Chain {
    Chain {
        tenant: "acme".into(),
        output: Template::parse("{tenant}.out.{subject[2..]}").unwrap(),
        permits: vec!["acme.out.>".into()],
        labels: (0..stages).map(|i| format!("p{i}@abc")).collect(),
        caps: vec![OutputCaps::default(); stages],
    }
}

#[test]
fn outputs_over_a_cap_dead_letter_naming_it() {
    let mut c = chain(1);
    c.caps[0] = OutputCaps {
        max_outputs: 2,
        max_bytes: 100,
        max_subject: 20,
    };
    let run = |c: &Chain, outputs: Vec<Message>| {
        c.run(&origin(), &source(), |_, _, _| {
            Ok(Verdict::Publish(outputs.clone()))
        })
    };
    let reason = |o: Outcome| match o {
        Outcome::DeadLetter { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    let three = vec![Message::new("acme.out.a", "x"); 3];
    assert!(reason(run(&c, three)).starts_with("limit max_outputs: 3 outputs"));
    let long = vec![Message::new(format!("acme.out.{}", "a".repeat(20)), "x")];
    assert!(reason(run(&c, long)).starts_with("limit max_subject_bytes: output 0"));
    let big = vec![Message::new("acme.out.a", vec![b'x'; 60]); 2];
    assert!(reason(run(&c, big)).starts_with("limit max_output_bytes"));
    let fits = vec![Message::new("acme.out.a", vec![b'x'; 20]); 2];
    assert!(matches!(run(&c, fits), Outcome::Publish { .. }));
    // `next` after the last stage is held to the last stage's caps.
    let next = c.run(
        &origin(),
        &Message::new("acme.in.x", vec![b'x'; 200]),
        |_, _, m| Ok(Verdict::Next(m)),
    );
    assert!(reason(next).starts_with("limit max_output_bytes"));
}

fn origin() -> Origin {
    Origin {
        tenant: "acme".into(),
        stream: "IN".into(),
        stream_seq: 7,
        delivered: 1,
        published_us: 0,
    }
}

fn source() -> Message {
    let mut m = Message::new("acme.in.orders", "{}");
    m.headers.push(("Traceparent".into(), "00-abc".into()));
    m.headers.push(("Nats-Msg-Id".into(), "producer-id".into()));
    m
}

#[test]
fn next_through_every_stage_publishes_to_the_default_output() {
    let mut seen = Vec::new();
    let out = chain(3).run(&origin(), &source(), |i, _, mut m| {
        seen.push(i);
        m.payload = [&m.payload[..], &[b'0' + i as u8]].concat().into();
        Ok(Verdict::Next(m))
    });
    assert_eq!(seen, vec![0, 1, 2]);
    let Outcome::Publish { outputs, plugin } = out else {
        panic!("{out:?}")
    };
    assert_eq!(plugin, "p2@abc");
    assert_eq!(outputs.len(), 1);
    let o = &outputs[0];
    assert_eq!(o.subject, "acme.out.orders");
    assert_eq!(o.payload, &b"{}012"[..]);
    assert_eq!(o.header("Traceparent"), Some("00-abc"));
    assert_eq!(o.header(TENANT_HEADER), Some("acme"));
    assert_eq!(o.header(PLUGIN_HEADER), Some("p2@abc"));
    assert_eq!(o.header(MSG_ID_HEADER), Some("acme:IN:7:0"));
    assert_eq!(
        o.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(MSG_ID_HEADER))
            .count(),
        1
    );
}

#[test]
fn publish_ends_the_chain_and_numbers_outputs() {
    let out = chain(2).run(&origin(), &source(), |i, _, m| {
        assert_eq!(i, 0, "the second stage must not run");
        let mut a = m.clone();
        a.subject = "acme.out.a".into();
        a.set_header(TENANT_HEADER, "evil");
        let mut b = m;
        b.subject = "acme.out.b".into();
        Ok(Verdict::Publish(vec![a, b]))
    });
    let Outcome::Publish { outputs, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(outputs[0].header(TENANT_HEADER), Some("acme"));
    assert_eq!(outputs[1].header(MSG_ID_HEADER), Some("acme:IN:7:1"));
}

#[test]
fn an_output_outside_the_permits_dead_letters_everything() {
    let out = chain(1).run(&origin(), &source(), |_, _, mut m| {
        m.subject = "globex.out.orders".into();
        let ok = Message::new("acme.out.ok", "x");
        Ok(Verdict::Publish(vec![ok, m]))
    });
    let Outcome::DeadLetter { reason, .. } = out else {
        panic!("{out:?}")
    };
    assert!(reason.contains("globex.out.orders"), "{reason}");
    assert!(reason.contains("permitted"), "{reason}");
}

#[test]
fn header_injection_dead_letters() {
    for (k, v) in [
        ("X-A", "1\r\nSluice-Tenant: evil"),
        ("Bad Name", "1"),
        ("a:b", "1"),
        ("", "1"),
    ] {
        let out = chain(1).run(&origin(), &source(), |_, _, mut m| {
            m.headers.push((k.into(), v.into()));
            Ok(Verdict::Next(m))
        });
        assert!(matches!(out, Outcome::DeadLetter { .. }), "{k:?}: {out:?}");
    }
}

#[test]
fn invalid_output_subject_dead_letters() {
    let out = chain(1).run(&origin(), &source(), |_, _, mut m| {
        m.subject = "acme.out.*".into();
        Ok(Verdict::Publish(vec![m]))
    });
    assert!(matches!(out, Outcome::DeadLetter { .. }), "{out:?}");
}

#[test]
fn verdicts_map_to_outcomes() {
    let c = chain(2);
    let ack = c.run(&origin(), &source(), |_, _, _| Ok(Verdict::Ack));
    assert_eq!(
        ack,
        Outcome::Ack {
            plugin: "p0@abc".into()
        }
    );
    let empty = c.run(&origin(), &source(), |_, _, _| Ok(Verdict::Publish(vec![])));
    assert_eq!(empty.kind(), "ack");
    let dl = c.run(&origin(), &source(), |i, _, m| {
        if i == 0 {
            Ok(Verdict::Next(m))
        } else {
            Ok(Verdict::DeadLetter("bad".into()))
        }
    });
    assert_eq!(
        dl,
        Outcome::DeadLetter {
            reason: "bad".into(),
            plugin: "p1@abc".into(),
            limit: None,
        }
    );
    let retry = c.run(&origin(), &source(), |_, _, _| Ok(Verdict::Retry(250)));
    assert_eq!(
        retry,
        Outcome::Retry {
            delay: Some(Duration::from_millis(250)),
            failure: None,
            plugin: "p0@abc".into()
        }
    );
}

#[test]
fn a_guest_failure_is_a_retry_with_its_cause() {
    let failure = GuestFailure {
        kind: FailureKind::Deadline,
        message: "too slow".into(),
    };
    let f = failure.clone();
    let out = chain(2).run(&origin(), &source(), move |_, _, _| Err(f.clone()));
    assert_eq!(
        out,
        Outcome::Retry {
            delay: None,
            failure: Some(failure),
            plugin: "p0@abc".into()
        }
    );
}

/// Five sources whose payload says what each stage does with them:
/// byte `i` is stage `i`'s verdict (`n`ext, `a`ck, `p`ublish, `d`ead
/// letter, `r`etry).
fn scripted() -> Vec<(Origin, Message)> {
    ["nnn", "a", "np", "nd", "nnr"]
        .iter()
        .enumerate()
        .map(|(k, script)| {
            let mut o = origin();
            o.stream_seq = k as u64;
            (o, Message::new("acme.in.x", *script))
        })
        .collect()
}

fn refs(items: &[(Origin, Message)]) -> Vec<(&Origin, &Message)> {
    items.iter().map(|(o, m)| (o, m)).collect()
}

/// The guest failure behind a retry outcome.
fn failure_of(out: &Option<Outcome>) -> &GuestFailure {
    match out {
        Some(Outcome::Retry {
            failure: Some(f), ..
        }) => f,
        other => panic!("not a guest failure: {other:?}"),
    }
}

fn act(i: usize, m: Message) -> Result<Verdict, GuestFailure> {
    Ok(match m.payload[i] {
        b'n' => Verdict::Next(m),
        b'a' => Verdict::Ack,
        b'p' => Verdict::Publish(vec![Message::new("acme.out.p", "x")]),
        b'd' => Verdict::DeadLetter("bad".into()),
        _ => Verdict::Retry(5),
    })
}

#[test]
fn host_owned_headers_are_matched_in_any_case() {
    for name in [
        "Sluice-Tenant",
        "SLUICE-X",
        "nats-msg-id",
        "Nats-Expected-Stream",
    ] {
        assert!(host_owned(name), "{name}");
    }
    for name in ["Sluice", "nats", "X-Sluice-Tenant", "Natsé-x", "é", ""] {
        assert!(!host_owned(name), "{name}");
    }
}

#[test]
fn a_batch_decides_each_message_as_a_run_of_its_own_would() {
    let c = chain(3);
    let items = scripted();
    let sources = refs(&items);
    let mut calls = Vec::new();
    let batched = c.run_batch(&sources, |i, who, msgs| {
        calls.push((i, who.to_vec()));
        Ok(msgs.into_iter().map(|m| act(i, m.into_owned())).collect())
    });
    // Each stage saw only the messages still in the chain.
    assert_eq!(
        calls,
        vec![
            (0, vec![0, 1, 2, 3, 4]),
            (1, vec![0, 2, 3, 4]),
            (2, vec![0, 4])
        ]
    );
    for ((o, m), got) in items.iter().zip(batched) {
        let alone = c.run(o, m, |i, _, m| act(i, m));
        assert_eq!(got, Some(alone));
    }
}

#[test]
fn a_failed_batch_leaves_its_messages_undecided() {
    let c = chain(2);
    let items = scripted();
    let sources = refs(&items);
    let out = c.run_batch(&sources, |i, _, msgs| match i {
        0 => Ok(msgs.into_iter().map(|m| act(0, m.into_owned())).collect()),
        _ => Err(GuestFailure {
            kind: FailureKind::Trap,
            message: "boom".into(),
        }),
    });
    // `a` was decided at stage 0; the rest were in the failed call.
    assert!(matches!(out[1], Some(Outcome::Ack { .. })), "{:?}", out[1]);
    for k in [0, 2, 3, 4] {
        assert_eq!(out[k], None, "source {k}");
    }
}

#[test]
fn a_failure_of_one_message_in_a_call_is_that_message_s_alone() {
    let c = chain(2);
    let items = scripted();
    let sources = refs(&items);
    let out = c.run_batch(&sources, |i, who, msgs| {
        Ok(who
            .iter()
            .zip(msgs)
            .map(|(&k, m)| match (i, k) {
                (0, 2) => Err(GuestFailure {
                    kind: FailureKind::Memory,
                    message: "hog".into(),
                }),
                _ => act(i, m.into_owned()),
            })
            .collect())
    });
    assert_eq!(failure_of(&out[2]).kind, FailureKind::Memory);
    assert!(matches!(out[1], Some(Outcome::Ack { .. })), "{out:?}");
    assert!(
        matches!(out[3], Some(Outcome::DeadLetter { .. })),
        "{out:?}"
    );
}

#[test]
fn a_failed_call_of_one_message_is_its_retry() {
    let c = chain(2);
    let (o, m) = (origin(), source());
    let out = c.run_batch(&[(&o, &m)], |_, _, _| {
        Err(GuestFailure {
            kind: FailureKind::Deadline,
            message: "slow".into(),
        })
    });
    assert_eq!(failure_of(&out[0]).kind, FailureKind::Deadline);
}
