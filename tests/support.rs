//! Helpers shared by the integration tests: where the built plugins and the
//! `sluice` binary are, and small constructors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice::wasm::{Plugin, PluginLimits, Runtime};
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
pub fn limits() -> PluginLimits {
    PluginLimits {
        deadline: Duration::from_millis(100),
        memory: 64 << 20,
        ..PluginLimits::default()
    }
}

/// Load a built plugin with the given limits.
pub fn load(name: &str, limits: PluginLimits) -> Arc<Plugin> {
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
        published_us: 0,
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
        // The test executable lives in target/<profile>/deps: build the
        // binary in the same profile, which is where it is then run from.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "sluice", "--bin", "sluice"])
            .current_dir(root());
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some(profile) => {
                build.args(["--profile", profile]);
            }
        }
        // Cargo sets these for the test process, and ring's build script
        // tracks some of them: passed on, they would rebuild ring and all
        // that depends on it here, and again on the next `cargo test`.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&&*key)
            {
                build.env_remove(&*key);
            }
        }
        let status = build.status().unwrap();
        assert!(status.success(), "building the sluice binary failed");
        profile_dir.join("sluice")
    });
    let mut cmd = Command::new(bin);
    cmd.current_dir(root());
    cmd
}

// --- NATS -----------------------------------------------------------------

use async_nats::jetstream::{self, stream};
use sluice::nats_server::NatsServer;

/// A nats-server with JetStream on a free port and a temporary store,
/// killed when dropped. `nats-server` must be on PATH (`scripts/setup`
/// installs it into `.tools/venv/bin`; this also looks there).
pub fn nats() -> NatsServer {
    nats_with(None)
}

/// As [`nats`], with extra server config (accounts, users).
pub fn nats_with(config: Option<&str>) -> NatsServer {
    let local = root().join(".tools/venv/bin/nats-server");
    let binary = if local.is_file() {
        local
    } else {
        PathBuf::from("nats-server")
    };
    NatsServer::start_with(&binary, config).unwrap_or_else(|e| panic!("{e}"))
}

/// A JetStream context on `url`.
pub async fn js(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

/// A JetStream context for a user of an account.
pub async fn js_as(url: &str, user: &str, password: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(url)
        .await
        .unwrap();
    jetstream::new(client)
}

/// Create a stream capturing `subjects`.
pub async fn create_stream(js: &jetstream::Context, name: &str, subjects: &[&str]) {
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Publish and await every PubAck.
pub async fn publish(js: &jetstream::Context, subject: &str, payload: &str) {
    js.publish(subject.to_owned(), payload.to_owned().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Every message stored in `stream`, in order.
pub async fn read_stream(
    js: &jetstream::Context,
    name: &str,
) -> Vec<jetstream::message::StreamMessage> {
    let mut s = js.get_stream(name).await.unwrap();
    let info = s.info().await.unwrap().clone();
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// The number of messages in `stream`.
pub async fn stream_len(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// A header's value on a stored message.
pub fn header<'a>(m: &'a jetstream::message::StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

/// Wait until `cond` holds, polling; panics with `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !cond().await {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 30 s) until `stream`'s consumer `name` has nothing
/// pending or unacked: every message it was given is settled.
pub async fn settled(js: &jetstream::Context, stream: &str, name: &str) {
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .get_consumer(name)
        .await
        .unwrap();
    wait_for(
        &format!("{stream}/{name} with nothing pending or unacked"),
        Duration::from_secs(30),
        || {
            let mut c = consumer.clone();
            async move {
                let i = c.info().await.unwrap();
                i.num_ack_pending == 0 && i.num_pending == 0
            }
        },
    )
    .await;
}

/// Write `text` as `sluice.toml` in a new temp dir; `{dist}` in it becomes
/// the plugins' dist folder and `{url}` the server URL.
pub fn config_file(text: &str, url: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let dist = root().join("plugins/dist");
    let text = text
        .replace("{dist}", dist.to_str().unwrap())
        .replace("{url}", url);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// The nats-server binary [`nats_with`] uses: `.tools/venv/bin` if
/// installed there, else PATH.
pub fn nats_server_binary() -> PathBuf {
    let local = root().join(".tools/venv/bin/nats-server");
    if local.is_file() {
        local
    } else {
        PathBuf::from("nats-server")
    }
}

/// A nats-server with JetStream on a port the caller chose, for a test that
/// hands the address to the host before any server exists. [`NatsServer`]
/// picks its own port, so this spawns the binary directly. Killed on drop.
pub struct PortServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for PortServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a [`PortServer`] on `port` and wait until it accepts connections.
pub fn nats_on_port(port: u16) -> PortServer {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let child = Command::new(nats_server_binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-sd")
        .arg(dir.path().join("jetstream"))
        .arg("-l")
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut server = PortServer { child, _dir: dir };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Server is ready")
            && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        {
            return server;
        }
        let exited = server.child.try_wait().unwrap().is_some();
        assert!(
            !exited && started.elapsed() < Duration::from_secs(10),
            "nats-server on port {port} did not become ready; its log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config whose tenant `acme` runs the `verdict` test guest alone, with its
/// outputs and dead letters stored (`ACME_OUT`, `ACME_DLQ`) and a short
/// `ack_wait`; `{url}` and `{dist}` are left for [`config_file`].
pub fn verdict_config(shutdown_grace: &str, max_deliver: u32, backoff: &str) -> String {
    format!(
        r#"
[nats]
servers = ["{{url}}"]

[host]
provision = true
shutdown_grace = "{shutdown_grace}"

[plugin.verdict]
path = "{{dist}}/testing/verdict.wasm"

[defaults]
ack_wait = "2s"
max_deliver = {max_deliver}
backoff = ["{backoff}"]

[tenants.acme]
stream = "ACME"
filter = "acme.in.>"
output = "{{tenant}}.out.{{subject[2..]}}"
dead_letter = "acme.dlq"
output_stream = "ACME_OUT"
dead_letter_stream = "ACME_DLQ"
pipeline = [{{ plugin = "verdict" }}]
"#
    )
}

/// The host's durable consumer (`sluice`) on `stream`.
pub async fn consumer(
    js: &jetstream::Context,
    stream: &str,
) -> async_nats::jetstream::consumer::PullConsumer {
    js.get_stream(stream)
        .await
        .unwrap()
        .get_consumer("sluice")
        .await
        .unwrap()
}

/// A `[tenants.ID]` block: stream `UPPER` (`ID.in.>`), outputs to
/// `ID.out.…` in `UPPER_OUT`, dead letters to `ID.dlq` in `UPPER_DLQ`,
/// one stage running `plugin`.
pub fn tenant_block(id: &str, upper: &str, plugin: &str) -> String {
    format!(
        r#"
[tenants.{id}]
stream = "{upper}"
filter = "{id}.in.>"
output = "{{tenant}}.out.{{subject[2..]}}"
dead_letter = "{id}.dlq"
output_stream = "{upper}_OUT"
dead_letter_stream = "{upper}_DLQ"
pipeline = [{{ plugin = "{plugin}" }}]
"#
    )
}

/// Two tenants on one host and server: `acme` (one stage running
/// `acme_plugin`) and `globex` (the `verdict` guest), laid out as
/// [`tenant_block`] has it, provisioned. `plugins` adds `[plugin.NAME]`
/// sections beside verdict's; `defaults` is the `[defaults]` body.
pub fn pair_config(plugins: &str, defaults: &str, acme_plugin: &str) -> String {
    format!(
        r#"
[nats]
servers = ["{{url}}"]

[host]
provision = true
shutdown_grace = "5s"

[plugin.verdict]
path = "{{dist}}/testing/verdict.wasm"
{plugins}
[defaults]
{defaults}
{}{}"#,
        tenant_block("acme", "ACME", acme_plugin),
        tenant_block("globex", "GLOBEX", "verdict"),
    )
}
