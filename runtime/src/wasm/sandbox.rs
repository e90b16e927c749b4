//! The store state of one guest instance and the sandbox around it: a WASI p2
//! context that grants nothing (no preopened files, no environment, no
//! arguments, no stdin, no sockets), a memory limiter that remembers when it
//! refused, and guest stdout/stderr and `host.log` turned into tracing events
//! tagged with the tenant and plugin.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
// The async traits, implemented by wasmtime-wasi-io for `ResourceTable`.
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::sluice::pipeline::host::{self, Level};

/// Longest guest log line kept; the rest is cut so a guest cannot flood the
/// host's log with one call.
const MAX_LOG_LINE: usize = 4096;

/// Everything a guest instance's store holds.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// The memory limiter; `hit` tells a memory-limit trap from others.
    pub limiter: MemoryLimiter,
    tenant: Arc<str>,
    plugin: Arc<str>,
    /// Lines this instance may still log this second.
    log: LogBudget,
    /// When the current call's deadline passes: a guest blocked in a WASI
    /// poll or sleep is woken then and trapped (see [`BoundedPoll`]).
    call_ends: Instant,
}

impl HostState {
    /// A locked-down state for one instance of `plugin` serving `tenant`.
    pub fn new(tenant: Arc<str>, plugin: Arc<str>, limits: &super::PluginLimits) -> Self {
        let memory_limit = limits.memory;
        let log = LogBudget::new(limits.log_lines_per_second, tenant.clone(), plugin.clone());
        let mut wasi = WasiCtxBuilder::new();
        // WasiCtxBuilder starts with no preopens, no env and no args; stdin
        // is empty. Sockets are denied explicitly rather than by default.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .stdout(GuestOutput {
                tenant: tenant.clone(),
                plugin: plugin.clone(),
                stderr: false,
                log: log.clone(),
            })
            .stderr(GuestOutput {
                tenant: tenant.clone(),
                plugin: plugin.clone(),
                stderr: true,
                log: log.clone(),
            });
        HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
                hit: false,
                size: 0,
            },
            tenant,
            plugin,
            log,
            call_ends: Instant::now(),
        }
    }

    /// A call with this budget starts now: the deadline a blocking WASI
    /// call is held to.
    pub fn start_call(&mut self, budget: Duration) {
        let now = Instant::now();
        self.call_ends = now.checked_add(budget).unwrap_or(now);
    }
}

/// The trap a guest gets for blocking in `wasi:io/poll` (a sleep, a wait
/// on a clock) until its call's deadline: epoch interruption stops wasm
/// code, not a host call it is waiting in, so the wait itself is bounded.
#[derive(Debug)]
pub struct BlockedPastDeadline;

impl std::fmt::Display for BlockedPastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("blocked in a WASI poll or sleep past its deadline")
    }
}

impl std::error::Error for BlockedPastDeadline {}

/// `wasi:io/poll` held to the call's deadline. Without it a guest's
/// `std::thread::sleep` (or any poll on a clock) pins a worker thread that
/// every tenant shares, for as long as the guest likes: it holds up
/// messages, `init`, hot swaps and shutdown. A wait that ends before the
/// deadline behaves as WASI says; one that would not is cut at the
/// deadline with [`BlockedPastDeadline`], a [`super::FailureKind::Deadline`].
pub struct BoundedPoll<'a> {
    table: &'a mut ResourceTable,
    until: Instant,
}

impl BoundedPoll<'_> {
    /// Run `wait` (the stock WASI implementation) until the deadline.
    fn bounded<T>(
        until: Instant,
        wait: impl std::future::Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        let budget = until.saturating_duration_since(Instant::now());
        wasmtime_wasi::runtime::in_tokio(async move {
            match tokio::time::timeout(budget, wait).await {
                Ok(done) => done,
                Err(_) => Err(wasmtime::Error::new(BlockedPastDeadline)),
            }
        })
    }
}

impl sync_poll::Host for BoundedPoll<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        Self::bounded(self.until, async_poll::Host::poll(self.table, pollables))
    }
}

impl sync_poll::HostPollable for BoundedPoll<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        // Never waits: the stock implementation polls once.
        sync_poll::HostPollable::ready(self.table, pollable)
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        Self::bounded(
            self.until,
            async_poll::HostPollable::block(self.table, pollable),
        )
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        sync_poll::HostPollable::drop(self.table, pollable)
    }
}

/// The [`HasData`] that hands `wasi:io/poll` a [`BoundedPoll`].
pub struct HasBoundedPoll;

impl HasData for HasBoundedPoll {
    type Data<'a> = BoundedPoll<'a>;
}

/// Replace the stock `wasi:io/poll` in `linker` with [`BoundedPoll`].
pub fn bound_poll(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = sync_poll::add_to_linker::<HostState, HasBoundedPoll>(linker, |s| BoundedPoll {
        table: &mut s.table,
        until: s.call_ends,
    });
    linker.allow_shadowing(false);
    added
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

// The `types` interface has no functions; its trait is empty.
impl super::bindings::sluice::pipeline::types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if !self.log.take() {
            return;
        }
        let message = escape(clip(&message));
        let (tenant, plugin) = (&*self.tenant, &*self.plugin);
        match level {
            Level::Trace => tracing::trace!(tenant, plugin, "{message}"),
            Level::Debug => tracing::debug!(tenant, plugin, "{message}"),
            Level::Info => tracing::info!(tenant, plugin, "{message}"),
            Level::Warn => tracing::warn!(tenant, plugin, "{message}"),
            Level::Error => tracing::error!(tenant, plugin, "{message}"),
        }
    }
}

/// Guest text with line breaks and other control characters escaped, so
/// one call cannot forge extra log lines (or terminal escapes).
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Guest log lines dropped by [`LogBudget`]s since the process started.
static LOG_LINES_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Guest log lines (`host.log`, stdout, stderr) dropped for going over
/// their instance's `log_lines_per_second`, since the process started.
pub fn log_lines_dropped() -> u64 {
    LOG_LINES_DROPPED.load(std::sync::atomic::Ordering::Relaxed)
}

/// One instance's log rate: `per_second` lines a second across `host.log`,
/// stdout and stderr; past that, lines are dropped, counted, and reported
/// in one warning when the next second starts.
#[derive(Clone)]
struct LogBudget(Arc<std::sync::Mutex<Budget>>);

struct Budget {
    per_second: u32,
    window: Instant,
    used: u32,
    dropped: u64,
    tenant: Arc<str>,
    plugin: Arc<str>,
}

impl LogBudget {
    fn new(per_second: u32, tenant: Arc<str>, plugin: Arc<str>) -> Self {
        LogBudget(Arc::new(std::sync::Mutex::new(Budget {
            per_second,
            window: Instant::now(),
            used: 0,
            dropped: 0,
            tenant,
            plugin,
        })))
    }

    /// Whether one more line may be written now.
    fn take(&self) -> bool {
        let Ok(mut b) = self.0.lock() else {
            return false;
        };
        if b.window.elapsed() >= Duration::from_secs(1) {
            if b.dropped > 0 {
                let (tenant, plugin, dropped) = (&*b.tenant, &*b.plugin, b.dropped);
                tracing::warn!(
                    tenant,
                    plugin,
                    dropped,
                    "guest log lines dropped: over log_lines_per_second"
                );
            }
            b.window = Instant::now();
            b.used = 0;
            b.dropped = 0;
        }
        if b.used < b.per_second {
            b.used += 1;
            return true;
        }
        b.dropped += 1;
        LOG_LINES_DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        false
    }
}

fn clip(s: &str) -> &str {
    if s.len() <= MAX_LOG_LINE {
        return s;
    }
    let mut end = MAX_LOG_LINE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Refuses linear-memory growth past the plugin's limit and remembers that it
/// did, so the resulting trap is reported as a memory-limit failure. It also
/// remembers the largest linear memory it granted, which is how big the
/// instance is (wasm memories never shrink).
pub struct MemoryLimiter {
    limit: usize,
    /// Set once a growth was refused.
    pub hit: bool,
    /// The largest linear memory granted so far, in bytes.
    pub size: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            // An error (rather than `Ok(false)`) traps at once: a guest
            // allocator that gets -1 from memory.grow may otherwise spin or
            // abort in ways that are harder to attribute.
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes exceeded (wanted {desired})",
                self.limit
            ));
        }
        self.size = self.size.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; 100k entries is far beyond any
        // real guest and keeps a runaway table from eating host memory.
        Ok(desired <= 100_000)
    }
}

/// Guest stdout or stderr, forwarded to tracing line by line.
struct GuestOutput {
    tenant: Arc<str>,
    plugin: Arc<str>,
    stderr: bool,
    log: LogBudget,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }
}

impl GuestOutput {
    fn writer(&self) -> LineWriter {
        LineWriter {
            tenant: self.tenant.clone(),
            plugin: self.plugin.clone(),
            stderr: self.stderr,
            pending: Vec::new(),
            log: self.log.clone(),
        }
    }
}

struct LineWriter {
    tenant: Arc<str>,
    plugin: Arc<str>,
    stderr: bool,
    pending: Vec<u8>,
    log: LogBudget,
}

impl LineWriter {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if self.pending.len() > MAX_LOG_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        if !self.log.take() {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = escape(clip(text.trim_end_matches('\r')));
        let (tenant, plugin) = (&*self.tenant, &*self.plugin);
        if self.stderr {
            tracing::warn!(tenant, plugin, stream = "stderr", "{text}");
        } else {
            tracing::info!(tenant, plugin, stream = "stdout", "{text}");
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready; lines are forwarded as they complete.
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_log_text_cannot_forge_lines() {
        assert_eq!(escape("plain text"), "plain text");
        assert_eq!(escape("one\ntwo\r\u{1b}[31m"), "one\\ntwo\\r\\u{1b}[31m");
    }

    #[test]
    fn the_log_budget_refills_each_second() {
        let budget = LogBudget::new(2, "t".into(), "p".into());
        assert!(budget.take() && budget.take());
        assert!(!budget.take());
        if let Ok(mut b) = budget.0.lock() {
            b.window -= Duration::from_secs(2);
        }
        assert!(budget.take());
    }
}
