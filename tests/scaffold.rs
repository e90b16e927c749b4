//! `sluice new` and `sluice build` in every language: a new handler,
//! outside this repository, builds with its language's toolchain, passes
//! its scaffolded golden case through the host, and `sluice handle` runs it.
//!
//! The toolchains come from `.tools/` (`scripts/setup`). The Rust build
//! compiles wit-bindgen once into `target/scaffold`, shared by every run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice::cases::Cases;
use sluice::wasm::{PluginLimits, Runtime};

use crate::support::{root, sluice};

/// `sluice` run in `dir`, with the repository's guest toolchains first on
/// PATH, a shared Rust target folder and its own compiled-code cache.
fn sluice_in(dir: &Path) -> Command {
    let tools = [".tools/venv/bin", ".tools/node/node_modules/.bin"]
        .iter()
        .map(|p| root().join(p));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(tools.chain(std::env::split_paths(&path))).unwrap();
    let mut cmd = sluice();
    cmd.current_dir(dir)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", root().join("target/scaffold"))
        .env("XDG_CACHE_HOME", cache_home())
        // scripts/test builds the host with clippy as the workspace wrapper;
        // the project `sluice build` makes is the user's own, built plainly.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS");
    // Outside the repository no rust-toolchain.toml applies; build with the
    // toolchain it pins, which scripts/setup gave the wasm32-wasip2 target.
    if let Some(channel) = pinned_toolchain() {
        cmd.env("RUSTUP_TOOLCHAIN", channel);
    }
    cmd
}

fn pinned_toolchain() -> Option<String> {
    let text = std::fs::read_to_string(root().join("rust-toolchain.toml")).ok()?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("channel"))?;
    Some(line.split('"').nth(1)?.to_owned())
}

/// Where `sluice handle` keeps compiled code (`<this>/sluice`), so this
/// test's own loads find it there instead of compiling again.
fn cache_home() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-cache")
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `sluice new demo --lang LANG`, `sluice build demo`, then the checks.
fn scaffold_builds_and_runs(lang: &str) {
    let work = tempfile::tempdir().unwrap();
    ok(
        sluice_in(work.path())
            .args(["new", "demo", "--lang", lang])
            .output()
            .unwrap(),
        "sluice new",
    );
    let demo = work.path().join("demo");
    assert!(demo.join("wit/pipeline.wit").is_file());
    if lang == "rust" {
        // Without it, a default toolchain that lacks the target fails
        // with "can't find crate for core".
        let toolchain = std::fs::read_to_string(demo.join("rust-toolchain.toml")).unwrap();
        assert!(
            toolchain.contains("targets = [\"wasm32-wasip2\"]"),
            "{toolchain}"
        );
    }
    ok(
        sluice_in(work.path())
            .args(["build", "demo"])
            .output()
            .unwrap(),
        "sluice build",
    );
    let wasm = demo.join("demo.wasm");
    assert!(wasm.is_file(), "no {}", wasm.display());

    // One message through `sluice handle`: passed on unchanged.
    let mut child = sluice_in(work.path())
        .args(["handle", "--plugin", "demo/demo.wasm", "--memory", "64MiB"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"hello":"world"}"#)
        .unwrap();
    let out = ok(child.wait_with_output().unwrap(), "sluice handle");
    let verdict: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["verdict"], "next", "{verdict}");
    assert_eq!(verdict["message"]["payload"], r#"{"hello":"world"}"#);
    assert_eq!(verdict["message"]["subject"], "demo.in.test");

    // The scaffolded golden case, as the host runs it before a hot swap.
    let runtime = Runtime::new(Some(cache_home().join("sluice"))).unwrap();
    let limits = PluginLimits {
        deadline: Duration::from_secs(5),
        memory: 64 << 20,
        ..PluginLimits::default()
    };
    let plugin = runtime.load_file("demo", &wasm, limits).unwrap();
    let cases = Cases::load(&demo.join("demo.cases.json")).unwrap();
    assert_eq!(cases.len(), 1);
    let failures = cases.run(&plugin);
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn a_new_rust_handler_builds_and_runs() {
    scaffold_builds_and_runs("rust");
}

#[test]
fn a_new_python_handler_builds_and_runs() {
    scaffold_builds_and_runs("python");
}

#[test]
fn a_new_js_handler_builds_and_runs() {
    scaffold_builds_and_runs("js");
}

#[test]
fn build_names_a_missing_tool_and_how_to_install_it() {
    let work = tempfile::tempdir().unwrap();
    ok(
        sluice_in(work.path())
            .args(["new", "demo", "--lang", "python"])
            .output()
            .unwrap(),
        "sluice new",
    );
    // A PATH without componentize-py.
    let empty = tempfile::tempdir().unwrap();
    let out = sluice_in(work.path())
        .env("PATH", empty.path())
        .args(["build", "demo"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let pin = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/python/componentize-py.version"),
    )
    .unwrap();
    let install = format!("pip install componentize-py=={}", pin.trim());
    assert!(
        err.contains("`componentize-py` is not on PATH") && err.contains(&install),
        "{err}"
    );
}

#[test]
fn new_refuses_a_bad_name_and_an_existing_folder() {
    let work = tempfile::tempdir().unwrap();
    let out = sluice_in(work.path())
        .args(["new", "Bad.Name"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lowercase letters"));
    std::fs::create_dir(work.path().join("taken")).unwrap();
    let out = sluice_in(work.path())
        .args(["new", "taken"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
