//! A `sluice run` child process of this executable, with its ops endpoint
//! on a port of its own and its log in a file: what `--mode hosts` runs
//! several of. Stopped with SIGTERM (and then waited for); one dropped
//! while running, as on an error, is killed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long one `/readyz` request may take; the endpoint answers from
/// memory, so a slow answer means a host that is not up yet.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One host.
pub(super) struct Host {
    child: Child,
    log: PathBuf,
    ops: SocketAddr,
}

impl Host {
    /// Start `sluice run --config CONFIG` with `/readyz` on a free port and
    /// its log in `log`.
    pub(super) fn start(config: &Path, log: PathBuf) -> anyhow::Result<Host> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let ops = SocketAddr::from(([127, 0, 0, 1], sluice::nats_server::free_port()?));
        let stderr =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--metrics-addr")
            .arg(ops.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} run", exe.display()))?;
        Ok(Host { child, log, ops })
    }

    /// Its process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether `/readyz` answers 200 (every consumer bound, NATS
    /// reachable); an error if the process has exited.
    pub(super) async fn ready(&mut self) -> anyhow::Result<bool> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "a host exited ({status}) before it was ready; its log ends with:\n{}",
                self.log_tail()
            );
        }
        let probe = async {
            let mut s = tokio::net::TcpStream::connect(self.ops).await?;
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer.starts_with(b"HTTP/1.1 200"))
        };
        Ok(matches!(
            tokio::time::timeout(PROBE_TIMEOUT, probe).await,
            Ok(Ok(true))
        ))
    }

    /// SIGTERM, then wait up to `limit` for it to drain and exit (killed
    /// after that). Returns whether it exited by itself.
    pub(super) async fn stop(&mut self, limit: Duration) -> anyhow::Result<bool> {
        if self.child.try_wait()?.is_none() {
            // std has no signal but SIGKILL; `kill` is how the tests send
            // one too.
            let status = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .context("running kill -TERM")?;
            if !status.success() {
                bail!("kill -TERM {} failed", self.child.id());
            }
        }
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(false)
    }

    /// The last lines of its log.
    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(10).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
