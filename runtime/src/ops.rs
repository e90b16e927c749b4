//! The operator's view: Prometheus metrics at `/metrics`, liveness at
//! `/healthz` and readiness at `/readyz`, on `--metrics-addr`.
//!
//! Metrics are read from the host's own counters at scrape time (a
//! `prometheus-client` collector), so the per-message path only bumps
//! atomics. Labels come from bounded sets — tenant, plugin name, outcome,
//! failure cause — never a subject or a digest (the digest is in one info
//! metric per plugin).
//!
//! The HTTP side is hyper's HTTP/1 server: three GET paths, a read timeout
//! on each request head, a cap on open connections, and a pause after an
//! `accept` error (out of file descriptors) instead of a spin. The endpoint
//! faces whatever can reach the port, so it holds nothing for a client that
//! sends nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::tenant::Tenant;

/// What the ops endpoints need to know about the running host.
pub trait Status: Send + Sync + 'static {
    /// Running tenants.
    fn tenants(&self) -> Vec<Arc<Tenant>>;
    /// Loaded plugins: (name, digest).
    fn plugins(&self) -> Vec<(String, String)>;
    /// Plugin reloads: (ok, failed).
    fn reloads(&self) -> (u64, u64);
    /// NATS connections: (servers, connected).
    fn connections(&self) -> Vec<(String, bool)>;
}

/// How much of the host the ops endpoint may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpsLimits {
    /// Connections open at once; past it new ones are closed at once.
    pub max_connections: usize,
    /// Longest wait for a request's head, and for one connection overall
    /// (a multiple of it).
    pub read_timeout: Duration,
}

/// Connections refused for going over [`OpsLimits::max_connections`] and
/// requests cut for going over [`OpsLimits::read_timeout`], since start.
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static TIMED_OUT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A connection lives at most this many read timeouts: metrics are one
/// response, and keep-alive is off.
const CONNECTION_READ_TIMEOUTS: u32 = 4;
/// The pause after an `accept` error: EMFILE and the like do not clear by
/// retrying at once.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serve the ops endpoints on `addr` until the task is dropped. Returns the
/// bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    status: Arc<dyn Status>,
    limits: OpsLimits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let open = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let handle = tokio::spawn(async move {
        loop {
            let socket = match listener.accept().await {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::debug!(error = %e, "ops endpoint: accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                // Dropping the socket closes it: the client may retry.
                REFUSED.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let status = status.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let status = status.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &*status)) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.read_timeout)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(socket), service);
                let whole = limits.read_timeout.saturating_mul(CONNECTION_READ_TIMEOUTS);
                match tokio::time::timeout(whole, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        if e.is_timeout() {
                            TIMED_OUT.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(error = %e, "ops endpoint: connection ended");
                    }
                    Err(_) => {
                        TIMED_OUT.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    Ok((local, handle))
}

/// The response to one request: GET (or HEAD) of a known path.
fn answer(req: &Request<hyper::body::Incoming>, status: &dyn Status) -> Response<Full<Bytes>> {
    let (code, content_type, body) =
        if req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD {
            respond(req.uri().path(), status)
        } else {
            (405, "text/plain", "only GET\n".to_owned())
        };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn respond(path: &str, status: &dyn Status) -> (u16, &'static str, String) {
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/metrics" => {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(HostCollector(StatusRef(snapshot(status)))));
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                Ok(()) => (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => (503, "text/plain", "cannot encode metrics\n".into()),
            }
        }
        "/healthz" => {
            let mut body = String::from("ok\n");
            for (servers, up) in status.connections() {
                body.push_str(&format!(
                    "nats {servers}: {}\n",
                    if up { "connected" } else { "disconnected" }
                ));
            }
            (200, "text/plain", body)
        }
        "/readyz" => {
            let mut problems = Vec::new();
            for (servers, up) in status.connections() {
                if !up {
                    problems.push(format!("nats {servers} is unreachable"));
                }
            }
            for t in status.tenants() {
                if !t.stats.bound.load(Ordering::Relaxed) {
                    problems.push(format!("tenant {} has no bound consumer yet", t.id));
                }
            }
            if problems.is_empty() {
                (200, "text/plain", "ready\n".into())
            } else {
                (
                    503,
                    "text/plain",
                    format!("not ready:\n{}\n", problems.join("\n")),
                )
            }
        }
        _ => (
            404,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Everything a scrape reads, taken at once.
struct Snapshot {
    tenants: Vec<Arc<Tenant>>,
    plugins: Vec<(String, String)>,
    reloads: (u64, u64),
    connections: Vec<(String, bool)>,
}

fn snapshot(status: &dyn Status) -> Snapshot {
    Snapshot {
        tenants: status.tenants(),
        plugins: status.plugins(),
        reloads: status.reloads(),
        connections: status.connections(),
    }
}

struct StatusRef(Snapshot);

impl std::fmt::Debug for StatusRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusRef")
    }
}

#[derive(Debug)]
struct HostCollector(StatusRef);

fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'a str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        let family = metric.encode_family(&labels)?;
        ConstCounter::new(value).encode(family)?;
    }
    Ok(())
}

/// One row per (tenant, `rows_of` row), the tenant's label first.
fn per_tenant_rows(
    tenants: &[Arc<Tenant>],
    rows_of: impl Fn(&Tenant) -> Vec<(Vec<(&'static str, String)>, u64)>,
) -> Vec<(Vec<(&'static str, String)>, u64)> {
    tenants
        .iter()
        .flat_map(|t| {
            rows_of(t).into_iter().map(|(labels, n)| {
                let mut all = vec![("tenant", t.id.to_string())];
                all.extend(labels);
                (all, n)
            })
        })
        .collect()
}

fn gauge_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'a str, String)>, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        let family = metric.encode_family(&labels)?;
        ConstGauge::new(value).encode(family)?;
    }
    Ok(())
}

impl Collector for HostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0.0;
        let per_tenant = |f: &dyn Fn(&Tenant) -> u64| -> Vec<(Vec<(&str, String)>, u64)> {
            s.tenants
                .iter()
                .map(|t| (vec![("tenant", t.id.to_string())], f(t)))
                .collect()
        };
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        counter_family(
            &mut encoder,
            "sluice_messages_received",
            "Messages pulled from the tenant's consumer (redeliveries included).",
            per_tenant(&|t| load(&t.stats.received)),
        )?;
        let outcomes: Vec<(Vec<(&str, String)>, u64)> = s
            .tenants
            .iter()
            .flat_map(|t| {
                let map = t
                    .stats
                    .outcomes
                    .lock()
                    .map(|m| m.clone())
                    .unwrap_or_default();
                map.into_iter().flat_map(move |(plugin, by_kind)| {
                    by_kind.into_iter().map(move |(kind, n)| {
                        (
                            vec![
                                ("tenant", t.id.to_string()),
                                ("plugin", plugin.clone()),
                                ("outcome", kind.to_owned()),
                            ],
                            n,
                        )
                    })
                })
            })
            .collect();
        counter_family(
            &mut encoder,
            "sluice_outcomes",
            "Pipeline outcomes (publish, ack, retry, dead-letter) by the plugin whose verdict decided.",
            outcomes,
        )?;
        counter_family(
            &mut encoder,
            "sluice_outputs_published",
            "Output messages newly stored by JetStream.",
            per_tenant(&|t| load(&t.stats.outputs)),
        )?;
        counter_family(
            &mut encoder,
            "sluice_duplicates",
            "Outputs and dead letters JetStream dropped as duplicates (redeliveries inside the duplicate window).",
            per_tenant(&|t| load(&t.stats.duplicates)),
        )?;
        counter_family(
            &mut encoder,
            "sluice_dead_letters",
            "Messages dead-lettered and terminated.",
            per_tenant(&|t| load(&t.stats.dead_lettered)),
        )?;
        counter_family(
            &mut encoder,
            "sluice_unreadable_messages",
            "Stored messages the NATS client could not read (a subject that is not UTF-8, a bad header block), found by a sweep and dead-lettered.",
            per_tenant(&|t| load(&t.stats.unreadable)),
        )?;
        counter_family(
            &mut encoder,
            "sluice_nats_client_restarts",
            "NATS connections replaced because their client stopped for good (it panicked on a message it could not parse).",
            [(Vec::new(), crate::topology::client_restarts())],
        )?;
        counter_family(
            &mut encoder,
            "sluice_retries",
            "Messages nak'ed for redelivery.",
            per_tenant(&|t| load(&t.stats.retried)),
        )?;
        counter_family(
            &mut encoder,
            "sluice_publish_errors",
            "Publishes of outputs or dead letters that failed or timed out (the source is nak'ed).",
            per_tenant(&|t| load(&t.stats.publish_errors)),
        )?;
        let failures = per_tenant_rows(&s.tenants, |t| {
            let map = t.stats.failure_causes.lock().map(|m| m.clone());
            map.unwrap_or_default()
                .into_iter()
                .map(|((plugin, cause), n)| {
                    (vec![("plugin", plugin), ("cause", cause.to_owned())], n)
                })
                .collect()
        });
        counter_family(
            &mut encoder,
            "sluice_guest_failures",
            "Guest calls that failed, by cause: deadline, memory, trap, init.",
            failures,
        )?;
        let hits = per_tenant_rows(&s.tenants, |t| {
            let map = t.stats.limit_hits.lock().map(|m| m.clone());
            map.unwrap_or_default()
                .into_iter()
                .map(|(limit, n)| (vec![("limit", limit.to_owned())], n))
                .collect()
        });
        counter_family(
            &mut encoder,
            "sluice_limit_hits",
            "Messages dead-lettered because their outputs broke a host limit (max_outputs, max_output_bytes, max_subject_bytes, max_payload).",
            hits,
        )?;
        counter_family(
            &mut encoder,
            "sluice_guest_log_lines_dropped",
            "Guest log lines dropped for going over their instance's log_lines_per_second.",
            [(Vec::new(), crate::wasm::log_lines_dropped())],
        )?;
        counter_family(
            &mut encoder,
            "sluice_batch_reruns",
            "Messages run again one at a time because a batch call they were in failed.",
            per_tenant(&|t| load(&t.stats.batch_reruns)),
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "sluice_handler_duration_seconds",
                "Time the pipeline ran on a worker, per message (queueing not included).",
                None,
                MetricType::Histogram,
            )?;
            for t in &s.tenants {
                let labels = vec![("tenant", t.id.to_string())];
                let family = metric.encode_family(&labels)?;
                t.stats.handler_seconds.encode(family)?;
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "sluice_queue_wait_seconds",
                "Time each job of a tenant's messages waited for a worker (tenants are served in weighted fair order).",
                None,
                MetricType::Histogram,
            )?;
            for t in &s.tenants {
                let labels = vec![("tenant", t.id.to_string())];
                let family = metric.encode_family(&labels)?;
                t.stats.queue_wait_seconds.encode(family)?;
            }
        }
        let gauge = |f: &dyn Fn(&Tenant) -> i64| -> Vec<(Vec<(&str, String)>, i64)> {
            s.tenants
                .iter()
                .map(|t| (vec![("tenant", t.id.to_string())], f(t)))
                .collect()
        };
        gauge_family(
            &mut encoder,
            "sluice_in_flight",
            "Messages between pull and settle.",
            gauge(&|t| i64::try_from(t.in_flight()).unwrap_or(i64::MAX)),
        )?;
        gauge_family(
            &mut encoder,
            "sluice_consumer_lag",
            "Messages pending in the tenant's consumer (num_pending, as each delivery reports it, and from consumer info every 30 s).",
            gauge(&|t| i64::try_from(load(&t.stats.lag)).unwrap_or(i64::MAX)),
        )?;
        gauge_family(
            &mut encoder,
            "sluice_consumer_bound",
            "1 when the tenant's consumer is bound and its pull loop runs.",
            gauge(&|t| i64::from(t.stats.bound.load(Ordering::Relaxed))),
        )?;
        gauge_family(
            &mut encoder,
            "sluice_consumer_pinned",
            "For exclusive tenants: 1 while this host holds the consumer (active), 0 on standby.",
            s.tenants
                .iter()
                .filter_map(|t| {
                    let pinned = t.pinned()?;
                    Some((vec![("tenant", t.id.to_string())], i64::from(pinned)))
                })
                .collect::<Vec<_>>(),
        )?;
        counter_family(
            &mut encoder,
            "sluice_plugin_reloads",
            "Plugin versions from the plugin folder swapped in (ok) or rejected (failed).",
            [
                (vec![("result", "ok".to_owned())], s.reloads.0),
                (vec![("result", "failed".to_owned())], s.reloads.1),
            ],
        )?;
        counter_family(
            &mut encoder,
            "sluice_ops_connections_refused",
            "Connections to this endpoint closed at once for going over host.ops_max_connections.",
            [(Vec::new(), REFUSED.load(Ordering::Relaxed))],
        )?;
        counter_family(
            &mut encoder,
            "sluice_ops_timeouts",
            "Connections to this endpoint cut for going over host.ops_read_timeout.",
            [(Vec::new(), TIMED_OUT.load(Ordering::Relaxed))],
        )?;
        gauge_family(
            &mut encoder,
            "sluice_plugin_info",
            "The active version of each plugin (always 1; the digest is a label).",
            s.plugins.iter().map(|(name, digest)| {
                (
                    vec![("plugin", name.clone()), ("digest", digest.clone())],
                    1,
                )
            }),
        )?;
        gauge_family(
            &mut encoder,
            "sluice_nats_connected",
            "1 while the NATS connection is up.",
            s.connections
                .iter()
                .map(|(servers, up)| (vec![("servers", servers.clone())], i64::from(*up))),
        )?;
        Ok(())
    }
}
