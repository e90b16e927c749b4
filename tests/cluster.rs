//! Faults in a 3-node nats-server cluster on loopback (each node its own
//! store and ports) with R3 input, output and dead-letter streams, and the
//! host given all three URLs: the stream and consumer leader's node
//! SIGKILLed mid-stream and restarted, and a consumer leader stepdown
//! mid-stream. Two tenants, 20,000 inputs each, through the reference
//! `verdict` pipeline; every test ends with [`crate::checker`]'s proof.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use sluice::config::Config;
use sluice::nats_server::free_port;
use sluice::service::Service;

use crate::checker::{Flow, assert_nothing_lost, publish, wait_settled};
use crate::support::{config_file, nats_server_binary, tenant_block, wait_for};

/// Inputs per tenant.
const N: u64 = 20_000;
/// Longest wait for a condition that normally holds within seconds.
const LIMIT: Duration = Duration::from_secs(120);

/// One node of a [`Cluster`].
struct Node {
    name: String,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A 3-node nats-server cluster with JetStream, killed when dropped.
/// Writes are synced (`sync_interval: always`) so the servers' own losses
/// on SIGKILL stay out of a test about the host's (docs/guarantees.md).
pub struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Start three nodes and wait until JetStream answers.
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| (free_port().unwrap(), free_port().unwrap()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                     jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                     cluster {{ name: sluice, listen: 127.0.0.1:{cport}, routes: [{}] }}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )
            .unwrap();
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                port: *port,
                conf,
                child: None,
            });
        }
        let mut cluster = Cluster { nodes, _dir: dir };
        for i in 0..3 {
            cluster.spawn(i);
        }
        let js = cluster.js().await;
        wait_for("the cluster's JetStream", LIMIT, || async {
            js.query_account().await.is_ok()
        })
        .await;
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(&node.conf)
            .arg("-l")
            .arg(&node.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        node.child = Some(child);
    }

    /// A JetStream context on any node, connecting (and reconnecting) in
    /// the background.
    pub async fn js(&self) -> jetstream::Context {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(self.urls())
            .await
            .unwrap();
        jetstream::new(client)
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The node named `name`.
    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start node `i` again on its store.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Two tenants, `acme` and `globex`, on all three URLs; provisioning makes
/// their streams R3 (and the consumers, which follow their stream).
fn config(urls: &[String]) -> String {
    let servers: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"
[nats]
servers = [{}]

[host]
provision = true
stream_replicas = 3
shutdown_grace = "5s"

[plugin.verdict]
path = "{{dist}}/testing/verdict.wasm"

[defaults]
ack_wait = "5s"
max_deliver = 10
backoff = ["100ms"]
max_in_flight = 512
{}{}"#,
        servers.join(", "),
        tenant_block("acme", "ACME", "verdict"),
        tenant_block("globex", "GLOBEX", "verdict"),
    )
}

/// The flows of [`config`].
fn flows() -> Vec<Flow> {
    vec![Flow::of("acme"), Flow::of("globex")]
}

/// Every flow's streams exist with three replicas.
async fn r3_streams(js: &jetstream::Context) {
    for f in flows() {
        for name in [&f.input, &f.output, &f.dead] {
            let info = js.get_stream(name).await.unwrap().cached_info().clone();
            assert_eq!(info.config.num_replicas, 3, "stream {name}");
        }
    }
}

/// Wait until the host has settled part of acme's backlog but not all of
/// it: the middle of the stream, where a fault finds messages in flight.
async fn wait_mid_stream(js: &jetstream::Context) {
    wait_for("acme's first outputs", LIMIT, || async {
        crate::support::stream_len(js, "ACME_OUT").await >= N / 10
    })
    .await;
}

/// Start the cluster, streams, host and inputs; run `fault` mid-stream;
/// wait for full recovery and prove nothing was lost or duplicated.
async fn run_fault<F>(what: &str, fault: F)
where
    F: AsyncFnOnce(&mut Cluster, &jetstream::Context),
{
    let mut cluster = Cluster::start().await;
    let urls = cluster.urls();
    let js = cluster.js().await;
    let (_dir, path) = config_file(&config(&urls), &urls[0]);
    let service = Service::start(Config::load(&path).unwrap()).await.unwrap();
    wait_for("both tenants' streams", LIMIT, || async {
        js.get_stream("ACME_DLQ").await.is_ok() && js.get_stream("GLOBEX_DLQ").await.is_ok()
    })
    .await;
    r3_streams(&js).await;
    for f in flows() {
        publish(&js, &f, 0..N / 2).await;
    }
    wait_mid_stream(&js).await;
    let at = Instant::now();
    fault(&mut cluster, &js).await;
    for f in flows() {
        publish(&js, &f, N / 2..N).await;
    }
    wait_settled(&js, &flows(), N, LIMIT).await;
    let recovered = at.elapsed();
    let tallies = assert_nothing_lost(&js, &flows(), N).await;
    eprintln!(
        "{what}: {} inputs per tenant, settled {:.1} s after the fault; {:?}",
        N,
        recovered.as_secs_f64(),
        crate::checker::figures(&tallies)
    );
    service.shutdown().await;
}

/// The node leading acme's input stream (and, as it is usually the same,
/// its consumer) is SIGKILLed mid-stream and restarted a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_node_killed_mid_stream_loses_and_duplicates_nothing() {
    run_fault("leader SIGKILL", async |cluster, js| {
        let mut s = js.get_stream("ACME").await.unwrap();
        let info = s.info().await.unwrap();
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("a stream leader");
        let i = cluster.index(&leader);
        tokio::task::block_in_place(|| cluster.kill(i));
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.restart(i);
    })
    .await;
}

/// Both tenants' consumer leaders step down mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_leader_stepdown_mid_stream_loses_and_duplicates_nothing() {
    run_fault("consumer leader stepdown", async |_cluster, js| {
        for stream in ["ACME", "GLOBEX"] {
            let reply: serde_json::Value = js
                .request(format!("CONSUMER.LEADER.STEPDOWN.{stream}.sluice"), &())
                .await
                .unwrap();
            assert_eq!(reply["success"], true, "{reply}");
        }
    })
    .await;
}
