//! Connections: one per distinct server set and credentials, so tenants in
//! the same account share one and tenants in different accounts get their
//! own; the one registry of them, with what the health checks and the
//! connection supervisor need to know of each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, ConnectOptions};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::NatsConfig;

/// How long a JetStream API request (stream info, publish ack) may take
/// before it counts as failed. The server answers in milliseconds; 5 s rides
/// out a leader election without stalling a pull loop for long.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Connecting failed before any server was tried (bad credentials file…).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The nkey seed or creds file could not be read.
    #[error("cannot read credentials file {}", path.display())]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A server URL does not parse.
    #[error("`{url}` is not a NATS server URL")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The client refused the options.
    #[error("cannot connect to {servers}")]
    Connect {
        /// The URLs tried.
        servers: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
}

/// Connect with the given settings. Returns at once even when no server is
/// up: the client keeps retrying in the background, so a host started
/// before NATS comes up on its own.
///
/// Server URLs may carry a password (`nats://user:secret@host`): every
/// log line and error here names them through [`redacted_servers`].
pub async fn connect(
    nats: &NatsConfig,
    base_dir: &Path,
    name: &str,
) -> Result<Client, ConnectError> {
    connect_watched(nats, base_dir, name)
        .await
        .map(|(client, _)| client)
}

/// [`connect`], with a count of the connection's (re)connects that moves
/// on every one: tenants sweep for unreadable messages after each (see
/// [`crate::unreadable`]).
pub async fn connect_watched(
    nats: &NatsConfig,
    base_dir: &Path,
    name: &str,
) -> Result<(Client, watch::Receiver<u64>), ConnectError> {
    let (connects, watched) = watch::channel(0u64);
    let servers = redacted_servers(&nats.servers);
    let mut options = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(API_TIMEOUT));
    let servers_field = servers.clone();
    options = options.event_callback(move |event| {
        let servers = servers_field.clone();
        let connects = connects.clone();
        async move {
            match event {
                async_nats::Event::Connected => {
                    connects.send_modify(|n| *n += 1);
                    tracing::info!(%servers, "connected to NATS");
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!(%servers, "disconnected from NATS; reconnecting in the background")
                }
                other => tracing::debug!(%servers, event = %other, "NATS connection event"),
            }
        }
    });
    if let Some(token) = &nats.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(path) = &nats.nkey_file {
        let path = base_dir.join(path);
        let seed = std::fs::read_to_string(&path)
            .map_err(|source| ConnectError::Credentials { path, source })?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &nats.creds_file {
        let path = base_dir.join(path);
        options = options
            .credentials_file(&path)
            .await
            .map_err(|source| ConnectError::Credentials { path, source })?;
    }
    let addrs: Vec<async_nats::ServerAddr> = nats
        .servers
        .iter()
        .map(|s| {
            s.parse().map_err(|source| ConnectError::Url {
                url: redact_url(s),
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    // async-nats does not send the credentials of a `nats://user:pass@host`
    // URL by itself: without other credentials in the config, the first
    // URL's are used (a user alone is a token, as NATS has it).
    let configured = nats.token.is_some()
        || nats.user.is_some()
        || nats.nkey_file.is_some()
        || nats.creds_file.is_some();
    if !configured && let Some(addr) = addrs.iter().find(|a| a.username().is_some()) {
        let user = addr.username().unwrap_or_default().to_owned();
        options = match addr.password() {
            Some(password) => options.user_and_password(user, password.to_owned()),
            None => options.token(user),
        };
    }
    let client = options
        .connect(addrs)
        .await
        .map_err(|source| ConnectError::Connect { servers, source })?;
    Ok((client, watched))
}

/// Whether `client` has stopped for good: its connection task is gone (it
/// panicked on a message it could not parse), so nothing sent through it
/// goes anywhere and it never reconnects. A client that is merely
/// disconnected queues the flush and is not dead.
pub async fn is_dead(client: &Client) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(200), client.flush()).await,
        Ok(Err(e)) if e.kind() == async_nats::client::FlushErrorKind::SendError
    )
}

/// Connections restarted because their client stopped for good, since
/// start (`sluice_nats_client_restarts_total`).
static CLIENT_RESTARTS: AtomicU64 = AtomicU64::new(0);

/// [`CLIENT_RESTARTS`].
pub fn client_restarts() -> u64 {
    CLIENT_RESTARTS.load(Ordering::Relaxed)
}

/// One connection made, as the registry keeps it.
#[derive(Clone)]
pub struct Connection {
    /// The settings it was made with (its key).
    pub nats: NatsConfig,
    /// Its servers (passwords redacted) and whose it is, for `/healthz`.
    pub label: String,
    /// The client.
    pub client: Client,
    /// Moves on every (re)connect.
    pub connects: watch::Receiver<u64>,
    /// What its credentials paths are relative to.
    pub base: PathBuf,
    /// The digest of its credentials files when it connected: a rotated
    /// `.creds` or nkey file restarts its tenants on a new connection.
    pub credentials: Option<String>,
}

impl Connection {
    /// Whether it is connected now.
    pub fn is_up(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Whether its `.creds` or nkey file now reads differently from when it
    /// connected: the new digest, or `None` if unchanged or unreadable (a
    /// file being rewritten is not a change).
    pub fn rotated_credentials(&self) -> Option<String> {
        credentials_digest(&self.nats, &self.base)
            .filter(|now| Some(now) != self.credentials.as_ref())
    }
}

/// Connections shared by tenants with identical NATS settings: the one
/// registry of them. Connecting is serialised, so two tenants starting
/// together never make two connections for the same settings; reading it
/// never waits on a connect.
#[derive(Default)]
pub struct Connections {
    made: Mutex<HashMap<NatsConfig, Connection>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Connections {
    /// The connection for `nats`, made on first use, and its count of
    /// (re)connects.
    pub async fn get(
        &self,
        nats: &NatsConfig,
        base_dir: &Path,
    ) -> Result<(Client, watch::Receiver<u64>), ConnectError> {
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.lock().get(nats) {
            let mut connects = c.connects.clone();
            connects.mark_unchanged();
            return Ok((c.client.clone(), connects));
        }
        let (client, mut connects) = connect_watched(nats, base_dir, "sluice").await?;
        let mut made = self.lock();
        let label = label(nats, made.len() + 1);
        made.insert(
            nats.clone(),
            Connection {
                nats: nats.clone(),
                label,
                client: client.clone(),
                connects: connects.clone(),
                base: base_dir.to_owned(),
                credentials: credentials_digest(nats, base_dir),
            },
        );
        connects.mark_unchanged();
        Ok((client, connects))
    }

    /// Forget the connection for `nats` (its last tenant stopped) and hand
    /// it back to be closed.
    pub fn remove(&self, nats: &NatsConfig) -> Option<Client> {
        self.lock().remove(nats).map(|c| c.client)
    }

    /// Every connection made, as it is now.
    pub fn all(&self) -> Vec<Connection> {
        self.lock().values().cloned().collect()
    }

    /// Count a client found stopped for good and replaced.
    pub fn count_restart(&self) {
        CLIENT_RESTARTS.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NatsConfig, Connection>> {
        self.made.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What `/healthz` calls a connection: its servers, and whose it is
/// (the `n`-th with credentials that have no name to show).
fn label(nats: &NatsConfig, n: usize) -> String {
    let mut label = nats
        .servers
        .iter()
        .map(|s| redact_url(s))
        .collect::<Vec<_>>()
        .join(",");
    if let Some(user) = &nats.user {
        label.push_str(&format!(" (user {user})"));
    } else if nats.creds_file.is_some() || nats.nkey_file.is_some() || nats.token.is_some() {
        label.push_str(&format!(" (credentials {n})"));
    }
    label
}

/// The SHA-256 of `nats`'s `.creds` and nkey files (relative to `base`),
/// `None` if it names none or none can be read: what tells a rotated
/// credential from an unchanged one.
fn credentials_digest(nats: &NatsConfig, base: &Path) -> Option<String> {
    let mut hasher = Sha256::new();
    let mut any = false;
    for path in [&nats.creds_file, &nats.nkey_file].into_iter().flatten() {
        if let Ok(bytes) = std::fs::read(base.join(path)) {
            hasher.update(&bytes);
            any = true;
        }
    }
    any.then(|| format!("{:x}", hasher.finalize()))
}

/// A JetStream context with the host's API timeout.
pub fn jetstream(client: Client) -> jetstream::Context {
    let mut js = jetstream::new(client);
    js.set_timeout(API_TIMEOUT);
    js
}

/// `url` with any password or token in it replaced by `***`
/// (`nats://ann:secret@h:4222` → `nats://ann:***@h:4222`,
/// `nats://token@h` → `nats://***@h`), for logs, errors, `/healthz` and
/// metric labels, which must never show a credential.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    let host = &rest[at..];
    match scheme {
        Some(scheme) => format!("{scheme}://{userinfo}{host}"),
        None => format!("{userinfo}{host}"),
    }
}

/// A server list for people to read, credentials redacted.
pub fn redacted_servers(servers: &[String]) -> String {
    servers
        .iter()
        .map(|s| redact_url(s))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_server_urls_are_never_shown() {
        for (url, shown) in [
            ("nats://ann:secret@h:4222", "nats://ann:***@h:4222"),
            ("nats://tok3n@h:4222", "nats://***@h:4222"),
            ("tls://ann:p@ss@h", "tls://ann:***@h"),
            ("ann:secret@h:4222", "ann:***@h:4222"),
            ("nats://h:4222", "nats://h:4222"),
            ("nats://h:4222/a@b", "nats://h:4222/a@b"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let servers = ["nats://a:x@h1".to_owned(), "nats://h2".to_owned()];
        assert_eq!(redacted_servers(&servers), "nats://a:***@h1, nats://h2");
    }
}
