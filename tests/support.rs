//! Helpers shared by the integration tests: where the built plugins and the
//! `sluice` binary are, and small constructors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice::wasm::{Limits, Plugin, Runtime};
use sluice::{Message, Origin};

/// The repository root (the root package's folder).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A built plugin: `plugins/dist/<name>.wasm`, or `plugins/dist/testing/`
/// for the test guests.
pub fn plugin_path(name: &str) -> PathBuf {
    let dist = root().join("plugins/dist");
    let path = [
        dist.join(format!("{name}.wasm")),
        dist.join(format!("testing/{name}.wasm")),
    ]
    .into_iter()
    .find(|p| p.is_file());
    path.unwrap_or_else(|| panic!("plugin `{name}` is not built: run scripts/build-plugins"))
}

/// One runtime for the whole test binary: compiling a component is the slow
/// part and the in-memory cache makes the second load free.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(None).unwrap())
}

/// Default plugin limits (100 ms, 64 MiB).
pub fn limits() -> Limits {
    Limits {
        deadline: Duration::from_millis(100),
        memory: 64 << 20,
    }
}

/// Load a built plugin with the given limits.
pub fn load(name: &str, limits: Limits) -> Arc<Plugin> {
    runtime()
        .load_file(name, &plugin_path(name), limits)
        .unwrap()
}

/// An origin for tenant `tenant`.
pub fn origin(tenant: &str) -> Origin {
    Origin {
        tenant: tenant.into(),
        stream: "IN".into(),
        stream_seq: 1,
        delivered: 1,
        published_ms: 0,
    }
}

/// A message with a payload and no headers.
pub fn msg(subject: &str, payload: &str) -> Message {
    Message::new(subject, payload.as_bytes().to_vec())
}

/// The `sluice` binary, built (or rebuilt) on first use so a test never
/// runs a stale one.
pub fn sluice() -> Command {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "sluice", "--bin", "sluice"])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(status.success(), "building the sluice binary failed");
        // The test executable lives in target/<profile>/deps.
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("sluice")
    });
    let mut cmd = Command::new(bin);
    cmd.current_dir(root());
    cmd
}
