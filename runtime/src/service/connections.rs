//! The connection supervisor: a client that stopped for good, or whose
//! credentials files were rotated, has its tenants restarted on a new
//! connection; a connection no tenant uses any more is closed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Inner, TenantSource};
use crate::config::{NatsConfig, TenantConfig};
use crate::topology;

/// How often connections are checked for a client that stopped for good.
const CONNECTION_CHECK: Duration = Duration::from_secs(1);

impl Inner {
    /// Check every connection each [`CONNECTION_CHECK`]. One whose client
    /// has stopped for good (see [`topology::is_dead`]) has its tenants
    /// restarted on a new one (their unread messages are then swept before
    /// the server redelivers them); so does one whose `.creds` or nkey
    /// file changed, once two checks in a row read the same new content.
    pub(super) async fn supervise_connections(self: Arc<Self>, shutdown: CancellationToken) {
        // A changed credentials digest, by connection, waiting to be seen
        // again: a file caught mid-write must not restart tenants with it.
        let mut changed: HashMap<NatsConfig, String> = HashMap::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(CONNECTION_CHECK) => {}
                () = shutdown.cancelled() => return,
            }
            for c in self.connections.all() {
                if topology::is_dead(&c.client).await {
                    self.connections.count_restart();
                    tracing::error!(
                        connection = c.label,
                        "the NATS client stopped for good (it panicked on a message it could not parse); restarting its tenants on a new connection"
                    );
                    self.restart_connection(&c.nats).await;
                    continue;
                }
                // A file that cannot be read now (being rewritten) is not
                // a change.
                let Some(now) = c.rotated_credentials() else {
                    changed.remove(&c.nats);
                    continue;
                };
                if changed.get(&c.nats) == Some(&now) {
                    changed.remove(&c.nats);
                    tracing::info!(
                        connection = c.label,
                        "credentials file changed; restarting the tenants on this connection with it"
                    );
                    self.restart_connection(&c.nats).await;
                } else {
                    changed.insert(c.nats.clone(), now);
                }
            }
        }
    }

    /// Stop every tenant on the connection for `nats` (which closes it) and
    /// start them again on a new one.
    pub(super) async fn restart_connection(self: &Arc<Self>, nats: &NatsConfig) {
        let _guard = self.changes.lock().await;
        let on_it: Vec<(String, TenantConfig, TenantSource, Option<PathBuf>)> = self
            .lock_tenants()
            .iter()
            .filter(|(_, r)| topology::tenant_nats(&self.config, &r.config) == nats)
            .map(|(id, r)| (id.clone(), r.config.clone(), r.source, r.base_dir.clone()))
            .collect();
        for (id, ..) in &on_it {
            self.stop_tenant(id).await;
        }
        for (id, tc, source, base_dir) in on_it {
            if let Err(e) = self
                .start_tenant(&id, tc, source, base_dir.as_deref())
                .await
            {
                tracing::error!(tenant = id, error = %format!("{e:#}"), "tenant cannot restart on a new connection");
            }
        }
    }

    /// Close the connection for `nats` if no running tenant uses it any
    /// more: a removed tenant's connection would otherwise stay open (and
    /// in `/readyz`) for good, and a restarted one would keep credentials
    /// that were rotated.
    pub(super) async fn release_connection(&self, nats: &NatsConfig) {
        let used = self
            .lock_tenants()
            .values()
            .any(|r| topology::tenant_nats(&self.config, &r.config) == nats);
        if used {
            return;
        }
        let client = self.connections.remove(nats);
        if let Some(client) = client {
            // Drain flushes what the stopped tenant still had to send.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.drain()).await;
        }
    }
}
