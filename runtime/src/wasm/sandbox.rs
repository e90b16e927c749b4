//! The store state of one guest instance and the sandbox around it: a WASI p2
//! context that grants nothing (no preopened files, no environment, no
//! arguments, no stdin, no sockets), a memory limiter that remembers when it
//! refused, and guest stdout/stderr and `host.log` turned into tracing events
//! tagged with the tenant and plugin.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
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
}

impl HostState {
    /// A locked-down state for one instance of `plugin` serving `tenant`.
    pub fn new(tenant: Arc<str>, plugin: Arc<str>, memory_limit: u64) -> Self {
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
            })
            .stderr(GuestOutput {
                tenant: tenant.clone(),
                plugin: plugin.clone(),
                stderr: true,
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
        }
    }
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
        let message = clip(&message);
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
        }
    }
}

struct LineWriter {
    tenant: Arc<str>,
    plugin: Arc<str>,
    stderr: bool,
    pending: Vec<u8>,
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
        let text = String::from_utf8_lossy(line);
        let text = clip(text.trim_end_matches('\r'));
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
