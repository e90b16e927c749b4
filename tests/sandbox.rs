//! The sandbox holds: deadlines stop loops, the memory limit stops hogs, a
//! trap costs only that instance, and a guest sees no files, environment,
//! arguments, stdin or network.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice::Verdict;
use sluice::message::FailureKind;
use sluice::pipeline::Outcome;
use sluice::subject::Template;
use sluice::wasm::PluginLimits;
use sluice::worker::pool::{StageRunner, WorkerPool};
use sluice::worker::{Pipeline, Stage};

use crate::support::{limits, load, msg, origin};

#[test]
fn a_guest_that_loops_forever_is_stopped_by_the_deadline() {
    let plugin = load(
        "spin",
        PluginLimits {
            deadline: Duration::from_millis(50),
            ..limits()
        },
    );
    let mut instance = plugin.instantiate("acme", &[]).unwrap();
    let failure = instance
        .handle(&origin("acme"), msg("acme.in.x", "{}"))
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
    // The host lives on: the same plugin serves again on a fresh instance.
    let mut again = plugin.instantiate("acme", &[]).unwrap();
    assert_eq!(
        again
            .handle(&origin("acme"), msg("a", ""))
            .unwrap_err()
            .kind,
        FailureKind::Deadline
    );
}

#[test]
fn a_guest_that_allocates_without_bound_is_stopped_by_the_memory_limit() {
    let plugin = load(
        "hog",
        PluginLimits {
            memory: 16 << 20,
            deadline: Duration::from_secs(5),
            ..PluginLimits::default()
        },
    );
    let mut instance = plugin.instantiate("acme", &[]).unwrap();
    let failure = instance
        .handle(&origin("acme"), msg("acme.in.x", "{}"))
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Memory, "{failure}");
    assert!(failure.message.contains("memory limit"), "{failure}");
}

#[test]
fn after_a_trap_the_next_call_gets_a_fresh_instance() {
    let stage = Stage::new(load("counter", limits()), vec![]);
    let mut runner = StageRunner::default();
    let calls = |r: &mut StageRunner, payload: &str| match r.call(
        &stage,
        &origin("acme"),
        msg("acme.in.x", payload),
    ) {
        Ok(Verdict::Next(m)) => m.header("X-Calls").map(str::to_owned),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(calls(&mut runner, "a").as_deref(), Some("1"));
    assert_eq!(calls(&mut runner, "b").as_deref(), Some("2"));
    let trap = runner
        .call(&stage, &origin("acme"), msg("acme.in.x", "boom"))
        .unwrap_err();
    assert_eq!(trap.kind, FailureKind::Trap, "{trap}");
    assert!(runner.is_empty(), "the trapped instance must be dropped");
    assert_eq!(
        calls(&mut runner, "c").as_deref(),
        Some("1"),
        "a fresh instance counts from 1"
    );
}

#[test]
fn instances_are_never_shared_between_tenants() {
    let plugin = load("counter", limits());
    let acme = Stage::new(plugin.clone(), vec![]);
    let globex = Stage::new(plugin, vec![]);
    let mut runner = StageRunner::default();
    for _ in 0..3 {
        runner
            .call(&acme, &origin("acme"), msg("acme.in.x", "a"))
            .unwrap();
    }
    let Verdict::Next(m) = runner
        .call(&globex, &origin("globex"), msg("globex.in.x", "a"))
        .unwrap()
    else {
        panic!("expected next")
    };
    assert_eq!(m.header("X-Calls"), Some("1"));
    assert_eq!(runner.len(), 2);
}

#[test]
fn a_guest_cannot_read_files_environment_arguments_stdin_or_network() {
    // Variables the guest would see if the host leaked its environment.
    let plugin = load("snoop", limits());
    let mut instance = plugin.instantiate("acme", &[]).unwrap();
    let Verdict::Next(out) = instance
        .handle(&origin("acme"), msg("acme.in.x", "{}"))
        .unwrap()
    else {
        panic!("snoop returns next")
    };
    let report: Value = serde_json::from_slice(&out.payload).unwrap();
    for key in ["file", "dir"] {
        let v = report[key].as_str().unwrap();
        assert!(v.starts_with("error"), "{key}: {v}");
    }
    assert_eq!(report["env_count"], 0, "{report}");
    assert!(report["home"].is_null(), "{report}");
    assert!(report["path"].is_null(), "{report}");
    assert!(
        report["args"].as_array().is_none_or(Vec::is_empty),
        "{report}"
    );
    assert_eq!(report["stdin"].as_str().unwrap_or(""), "", "{report}");
    if let Some(tcp) = report["tcp"].as_str() {
        assert!(tcp.starts_with("error"), "tcp: {tcp}");
    }
}

#[test]
fn a_guest_publishing_to_another_tenants_subject_is_dead_lettered() {
    let plugin = load("trespass", limits());
    let stage = Stage::new(plugin, vec![("target".into(), "globex.out.orders".into())]);
    let pipeline = Pipeline::new(
        "acme",
        Template::parse("{tenant}.out.{subject[2..]}").unwrap(),
        vec!["acme.out.>".into()],
        vec![stage],
    );
    let outcome =
        StageRunner::default().run(&pipeline, &origin("acme"), &msg("acme.in.orders", "{}"));
    let Outcome::DeadLetter { reason, plugin, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains("globex.out.orders") && reason.contains("acme"),
        "{reason}"
    );
    assert!(plugin.starts_with("trespass@"), "{plugin}");
}

#[test]
fn the_worker_pool_runs_pipelines_off_the_async_reactor() {
    let pool = WorkerPool::new(2).unwrap();
    let stage = Stage::new(load("echo", limits()), vec![]);
    let pipeline = Arc::new(Pipeline::new(
        "acme",
        Template::parse("{tenant}.out.{subject[2..]}").unwrap(),
        vec!["acme.out.>".into()],
        vec![stage],
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcomes = rt.block_on(async {
        let jobs = (0..100).map(|i| {
            let mut o = origin("acme");
            o.stream_seq = i;
            pool.run(pipeline.clone(), o, Arc::new(msg("acme.in.orders", "{}")))
        });
        futures::future::join_all(jobs).await
    });
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let Outcome::Publish { outputs, .. } = outcome.unwrap() else {
            panic!()
        };
        assert_eq!(outputs[0].subject, "acme.out.orders");
        assert_eq!(
            outputs[0].header("Nats-Msg-Id"),
            Some(format!("acme:IN:{i}:0").as_str())
        );
    }
}
