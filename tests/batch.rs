//! Batches through real components: a stage that exports the `batch`
//! interface gets one call for the messages a worker runs together, and the
//! outcome of every message is what a call of its own would have given; a
//! bad message in a batch fails alone.

use std::sync::Arc;

use sluice::message::{FailureKind, GuestFailure};
use sluice::pipeline::Outcome;
use sluice::subject::Template;
use sluice::wasm::PluginLimits;
use sluice::worker::pool::StageRunner;
use sluice::worker::{Pipeline, Stage};
use sluice::{Message, Origin};

use crate::support::{limits, load, msg, origin};

fn pipeline(stages: &[(&str, &[(&str, &str)])]) -> Pipeline {
    pipeline_with(limits(), stages)
}

fn pipeline_with(limits: PluginLimits, stages: &[(&str, &[(&str, &str)])]) -> Pipeline {
    let stages = stages
        .iter()
        .map(|(name, config)| {
            let config = config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Stage::new(load(name, limits), config)
        })
        .collect();
    Pipeline::new(
        "acme",
        Template::parse("{tenant}.out.{subject[2..]}").unwrap(),
        vec!["acme.out.>".into()],
        stages,
    )
}

/// One message per payload, each with its own sequence number and delivery
/// count, so the outputs show whose origin each one saw.
fn items(payloads: &[&str]) -> Vec<(Origin, Arc<Message>)> {
    payloads
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let mut o = origin("acme");
            o.stream_seq = 100 + k as u64;
            o.delivered = 1 + k as u32 % 3;
            o.published_us = (1_700_000_000_000 + k as u64) * 1000;
            (o, Arc::new(msg("acme.in.orders", p)))
        })
        .collect()
}

/// The outputs of a publish outcome.
fn outputs(outcome: &Outcome) -> &[Message] {
    match outcome {
        Outcome::Publish { outputs, .. } => outputs,
        other => panic!("not a publish: {other:?}"),
    }
}

/// The guest failure behind a retry outcome.
fn failure(outcome: &Outcome) -> &GuestFailure {
    match outcome {
        Outcome::Retry {
            failure: Some(f), ..
        } => f,
        other => panic!("not a guest failure: {other:?}"),
    }
}

/// The items run as a batch on `runner`: each one's outcome, and whether it
/// ran again alone because its batch call failed.
fn together(
    runner: &mut StageRunner,
    pipeline: &Pipeline,
    items: &[(Origin, Arc<Message>)],
) -> (Vec<Outcome>, Vec<bool>) {
    runner
        .run_batch_noting_reruns(pipeline, items)
        .into_iter()
        .unzip()
}

/// Each message run on its own, on a runner of its own.
fn one_at_a_time(pipeline: &Pipeline, items: &[(Origin, Arc<Message>)]) -> Vec<Outcome> {
    let mut runner = StageRunner::default();
    items
        .iter()
        .map(|(o, m)| runner.run(pipeline, o, m))
        .collect()
}

#[test]
fn a_batch_decides_every_message_as_a_call_of_its_own_would() {
    let pipeline = pipeline(&[("verdict", &[]), ("echo", &[])]);
    assert!(pipeline.stages.iter().all(|s| s.plugin.batches()));
    let items = items(&[
        "next",
        "ack",
        "retry:250",
        "dead:no schema",
        "publish:2",
        "outside",
        "origin",
        r#"{"id":1}"#,
        "origin",
    ]);
    let (batched, reruns) = together(&mut StageRunner::default(), &pipeline, &items);
    assert_eq!(batched, one_at_a_time(&pipeline, &items));
    assert!(reruns.iter().all(|r| !r), "no batch call failed");
    // The verdict guest publishes under the tenant it was given, and the
    // host numbers outputs by each message's own sequence.
    let published = outputs(&batched[4]);
    assert_eq!(published[1].subject, "acme.out.p1");
    assert_eq!(published[1].header("Nats-Msg-Id"), Some("acme:IN:104:1"));
    assert_eq!(batched[1].kind(), "ack");
    // Each message's guest saw its own origin.
    for (k, seen) in [
        (6, "acme/IN/106/1/1700000000006"),
        (8, "acme/IN/108/3/1700000000008"),
    ] {
        assert_eq!(outputs(&batched[k])[0].header("X-Origin"), Some(seen));
    }
    assert_eq!(batched[5].kind(), "dead-letter");
}

#[test]
fn a_batch_hands_each_stage_the_reference_plugins_results() {
    let pipeline = pipeline(&[
        ("transform", &[("rename.user", "customer"), ("set.v", "2")]),
        ("tenant-stamp", &[]),
        (
            "route",
            &[
                ("rule.1.field", "type"),
                ("rule.1.equals", "order"),
                ("rule.1.to", "{tenant}.out.orders"),
            ],
        ),
    ]);
    let payloads: Vec<String> = (0..20)
        .map(|i| {
            let kind = if i % 3 == 0 { "refund" } else { "order" };
            format!(r#"{{"type":"{kind}","user":"u{i}","n":{i}}}"#)
        })
        .collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    let items = items(&refs);
    let batched = StageRunner::default().run_batch(&pipeline, &items);
    assert_eq!(batched, one_at_a_time(&pipeline, &items));
    let body: serde_json::Value = serde_json::from_slice(&outputs(&batched[1])[0].payload).unwrap();
    assert_eq!(body["customer"], "u1", "{body}");
}

#[test]
fn a_trap_in_a_batch_fails_only_its_own_message() {
    let pipeline = pipeline(&[("counter", &[])]);
    let items = items(&["a", "b", "boom", "c"]);
    let mut runner = StageRunner::default();
    let (outcomes, reruns) = together(&mut runner, &pipeline, &items);
    // The batch call trapped, so all four ran again, one at a time.
    assert_eq!(reruns, [true; 4]);
    for k in [0, 1, 3] {
        assert_eq!(outputs(&outcomes[k])[0].payload, items[k].1.payload);
    }
    let trap = failure(&outcomes[2]);
    assert_eq!(trap.kind, FailureKind::Trap, "{trap}");
    // The runner still serves the stage after the trap.
    let again = runner.run_batch(&pipeline, &items[..2]);
    assert!(again.iter().all(|o| o.kind() == "publish"), "{again:?}");
}

#[test]
fn a_batch_answer_that_does_not_decode_fails_the_batch_and_each_message_runs_alone() {
    for mode in ["short", "tag", "trailing", "utf8"] {
        let pipeline = pipeline(&[("garble", &[("mode", mode)])]);
        assert!(pipeline.stages[0].plugin.batches());
        let items = items(&["a", "b", "c"]);
        let (outcomes, reruns) = together(&mut StageRunner::default(), &pipeline, &items);
        // The garbled acks are never taken for verdicts: each message ran
        // again through `handle`, which passes it on to the output.
        assert_eq!(reruns, [true; 3], "mode {mode}");
        for (outcome, (_, msg)) in outcomes.iter().zip(&items) {
            assert_eq!(outputs(outcome)[0].payload, msg.payload, "mode {mode}");
        }
    }
}

#[test]
fn a_plugin_whose_batch_export_has_another_shape_gets_one_call_per_message() {
    // Built against an older WIT whose `handle-batch` took typed
    // deliveries: it loads, and its `handle` serves every message.
    let pipeline = pipeline(&[("oldbatch", &[]), ("echo", &[])]);
    assert!(!pipeline.stages[0].plugin.batches());
    assert!(pipeline.stages[1].plugin.batches());
    let items = items(&["a", "b", "c"]);
    let (outcomes, reruns) = together(&mut StageRunner::default(), &pipeline, &items);
    assert_eq!(reruns, [false; 3]);
    for (outcome, (_, msg)) in outcomes.iter().zip(&items) {
        assert_eq!(outputs(outcome)[0].payload, msg.payload);
    }
}

#[test]
fn a_batch_past_its_deadline_ends_in_each_message_s_own_deadline() {
    let pipeline = pipeline(&[("spin", &[])]);
    let outcomes = StageRunner::default().run_batch(&pipeline, &items(&["a", "b"]));
    for outcome in &outcomes {
        let deadline = failure(outcome);
        assert_eq!(deadline.kind, FailureKind::Deadline, "{deadline}");
    }
}

#[test]
fn a_plugin_without_the_batch_call_gets_one_call_per_message() {
    // The JavaScript build targets the `handler` world: no batch call.
    let pipeline = pipeline(&[
        ("transform-js", &[("rename.user", "customer")]),
        ("counter", &[]),
    ]);
    assert!(!pipeline.stages[0].plugin.batches());
    assert!(pipeline.stages[1].plugin.batches());
    let items = items(&[r#"{"user":"ann"}"#, r#"{"user":"bob"}"#, "not json"]);
    let outcomes = StageRunner::default().run_batch(&pipeline, &items);
    let calls: Vec<Option<&str>> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Publish { outputs, .. } => outputs[0].header("X-Calls"),
            _ => None,
        })
        .collect();
    // The counter stage ran the two JSON messages in one batch, on one
    // instance; the third was dead-lettered by the transform.
    assert_eq!(calls, [Some("1"), Some("2"), None], "{outcomes:?}");
    assert_eq!(outcomes[2].kind(), "dead-letter");
}

#[test]
fn messages_too_big_to_batch_within_the_memory_limit_still_go_through() {
    // Sixteen 300 KiB messages need more than the 4 MiB limit at once; one
    // at a time they fit.
    let limits = PluginLimits {
        memory: 4 << 20,
        ..limits()
    };
    let pipeline = pipeline_with(limits, &[("counter", &[])]);
    let big = "x".repeat(300 << 10);
    let payloads: Vec<&str> = (0..16).map(|_| big.as_str()).collect();
    let outcomes = StageRunner::default().run_batch(&pipeline, &items(&payloads));
    for outcome in &outcomes {
        assert_eq!(outputs(outcome)[0].payload.len(), big.len());
    }
}

#[test]
fn a_stage_too_slow_for_a_whole_batch_in_one_deadline_gets_smaller_batches() {
    // 20 ms a message under a 100 ms deadline: twelve at once cannot make
    // it, one at a time can.
    let pipeline = pipeline(&[("verdict", &[])]);
    let items = items(&["work:20"; 12]);
    let mut runner = StageRunner::default();
    let first: Vec<(Outcome, bool)> = runner.run_batch_noting_reruns(&pipeline, &items);
    // The first batch ran past its deadline; its messages ran again alone,
    // which taught the runner the stage's pace.
    for (outcome, rerun) in &first {
        assert_eq!(outcome.kind(), "publish", "{outcome:?}");
        assert!(rerun);
    }
    // From then on the stage's batches fit its deadline: nothing reruns.
    let second = runner.run_batch_noting_reruns(&pipeline, &items);
    for (k, (outcome, rerun)) in second.iter().enumerate() {
        assert_eq!(outcome.kind(), "publish", "{outcome:?}");
        assert!(!rerun, "message {k} ran again");
    }
}
