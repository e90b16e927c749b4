//! Guest call overhead and the in-process pipeline, for a 256-byte JSON
//! payload: one call on a reused instance per reference plugin (and per
//! language for those with Python and JavaScript versions), a fresh
//! instance per call (what reuse saves), and the three-stage pipeline the
//! example tenants run, one message at a time and in batches. Needs the
//! plugins built (`scripts/build-plugins`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The allocator the `sluice` binary uses, so these figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_main};
use sluice::subject::Template;
use sluice::wasm::{PluginLimits, Runtime};
use sluice::worker::pool::StageRunner;
use sluice::worker::{Pipeline, Stage};
use sluice::{Message, Origin};

/// The builds of a reference plugin that has one in every language: Rust,
/// then Python (plugins/python) and JavaScript (plugins/js), all built by
/// scripts/build-plugins and benched side by side. The shared limits fit
/// them all: Python's interpreter starts with a 12.3 MiB heap, and its
/// slowest call is far below the deadline.
const LANGUAGES: &[&str] = &["", "-py", "-js"];
const IN_EVERY_LANGUAGE: &[&str] = &["transform", "route"];

/// Where the components are: `plugins/dist`, or `SLUICE_BENCH_PLUGINS` to
/// compare another build of them (other flags, another SDK) against it.
fn plugin_path(name: &str) -> PathBuf {
    let dist = std::env::var_os("SLUICE_BENCH_PLUGINS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/dist"),
        PathBuf::from,
    );
    let path = dist.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-plugins",
        path.display()
    );
    path
}

/// A 256-byte JSON object shaped like a typical event.
fn payload() -> Vec<u8> {
    let mut p = String::from(
        r#"{"type":"order","id":"o-1042","user":"ann","debug":true,"total":129.5,"pad":""#,
    );
    while p.len() < 256 - 2 {
        p.push('x');
    }
    p.push_str("\"}");
    assert_eq!(p.len(), 256);
    p.into_bytes()
}

fn origin() -> Origin {
    Origin {
        tenant: "acme".into(),
        stream: "ACME".into(),
        stream_seq: 1,
        delivered: 1,
        published_us: 0,
    }
}

fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn stages() -> Vec<(&'static str, Vec<(String, String)>)> {
    vec![
        (
            "transform",
            config(&[
                ("rename.user", "customer"),
                ("remove", "debug"),
                ("set.schema", "2"),
            ]),
        ),
        ("tenant-stamp", config(&[])),
        (
            "route",
            config(&[
                ("rule.1.field", "type"),
                ("rule.1.equals", "order"),
                ("rule.1.to", "{tenant}.out.orders"),
            ]),
        ),
    ]
}

fn benches(c: &mut Criterion) {
    // The on-disk cache spares recompiling the 18 MB Python guests each run.
    let runtime = Runtime::new(sluice::config::default_cache_dir()).unwrap();
    let limits = PluginLimits {
        // Generous: this measures speed, and a JavaScript instance's start
        // (`init` included) can pass 100 ms on a busy machine.
        deadline: Duration::from_secs(2),
        memory: 64 << 20,
        ..PluginLimits::default()
    };
    let msg = Message::new("acme.in.orders", payload());
    let origin = origin();

    let mut group = c.benchmark_group("call");
    group.throughput(Throughput::Elements(1));
    let echo = ("echo", Vec::new());
    for (name, settings) in std::iter::once(echo).chain(stages()) {
        let suffixes = if IN_EVERY_LANGUAGE.contains(&name) {
            LANGUAGES
        } else {
            &[""]
        };
        for suffix in suffixes {
            let build = format!("{name}{suffix}");
            let path = if name == "echo" {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/dist/testing/echo.wasm")
            } else {
                plugin_path(&build)
            };
            let plugin = runtime.load_file(&build, &path, limits).unwrap();
            let mut instance = plugin.instantiate("acme", &settings).unwrap();
            group.bench_function(format!("reused/{build}"), |b| {
                b.iter(|| {
                    let verdict = instance.handle(&origin, msg.clone()).unwrap();
                    // As the worker pool does: a guest that leaks (Python's
                    // does) is replaced before it reaches its memory limit.
                    if instance.worn_out() {
                        instance = plugin.instantiate("acme", &settings).unwrap();
                    }
                    verdict
                })
            });
            if name == "transform" {
                group.bench_function(format!("fresh/{build}"), |b| {
                    b.iter(|| {
                        let mut i = plugin.instantiate("acme", &settings).unwrap();
                        i.handle(&origin, msg.clone()).unwrap()
                    })
                });
            }
        }
    }
    group.finish();

    let stages = stages()
        .into_iter()
        .map(|(name, settings)| {
            Stage::new(
                runtime.load_file(name, &plugin_path(name), limits).unwrap(),
                settings,
            )
        })
        .collect();
    let pipeline = Pipeline::new(
        "acme",
        Template::parse("{tenant}.out.{subject[2..]}").unwrap(),
        vec!["acme.out.>".into()],
        stages,
    );
    let mut runner = StageRunner::default();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("three-stages", |b| {
        b.iter(|| runner.run(&pipeline, &origin, &msg))
    });
    group.finish();

    // What the worker pool does with messages pulled together: one call per
    // stage for the whole batch. Reported per message.
    let mut group = c.benchmark_group("pipeline-batch");
    for n in [8, 32] {
        let items: Vec<(Origin, Arc<Message>)> = (0..n)
            .map(|k| {
                let mut o = origin.clone();
                o.stream_seq = k + 1;
                (o, Arc::new(msg.clone()))
            })
            .collect();
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("three-stages/{n}"), |b| {
            b.iter(|| runner.run_batch(&pipeline, &items))
        });
    }
    group.finish();
}

// The macro generates an undocumented function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(guest, super::benches);
}
criterion_main!(group::guest);
