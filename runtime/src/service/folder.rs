//! The tenants folder: one `<id>/tenant.toml` per tenant, followed as it
//! changes.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Inner, TenantSource};
use crate::config::{Config, TenantConfig};

impl Inner {
    /// Compare the tenants folder with the running folder tenants: start
    /// new ones, restart changed ones, stop removed ones. A broken
    /// `tenant.toml` is reported and leaves every other tenant (and that
    /// tenant's running version, if any) alone.
    pub(super) async fn rescan_tenants(self: Arc<Self>) {
        let Some(dir) = self.tenants_dir() else {
            return;
        };
        let _guard = self.changes.lock().await;
        let mut wanted: BTreeMap<String, (TenantConfig, PathBuf)> = BTreeMap::new();
        let mut broken: HashSet<String> = HashSet::new();
        for (id, folder) in tenant_folders(&dir) {
            let file = folder.join("tenant.toml");
            if self.config.tenants.contains_key(&id) {
                tracing::warn!(tenant = id, file = %file.display(), "a tenant of this id is in the main config; the folder is ignored");
                continue;
            }
            match self.config.load_tenant(&id, &file) {
                Ok(mut tc) => {
                    absolutize_credentials(&mut tc, &folder, &self.config);
                    wanted.insert(id, (tc, folder));
                }
                Err(e) => {
                    tracing::warn!(tenant = id, error = %e, "tenant file rejected; other tenants are not affected");
                    broken.insert(id);
                }
            }
        }
        let running: BTreeMap<String, TenantConfig> = self
            .lock_tenants()
            .iter()
            .filter(|(_, r)| r.source == TenantSource::Folder)
            .map(|(id, r)| (id.clone(), r.config.clone()))
            .collect();
        for (id, _) in running
            .iter()
            .filter(|(id, _)| !wanted.contains_key(*id) && !broken.contains(*id))
        {
            self.stop_tenant(id).await;
        }
        for (id, (tc, folder)) in wanted {
            // A rotated credentials file alone is the supervisor's to
            // follow (see `supervise_connections`).
            match running.get(&id) {
                Some(current) if *current == tc => continue,
                Some(_) => self.stop_tenant(&id).await,
                None => {}
            }
            if let Err(e) = self
                .start_tenant(&id, tc, TenantSource::Folder, Some(&folder))
                .await
            {
                tracing::warn!(tenant = id, error = %format!("{e:#}"), "tenant cannot start; other tenants are not affected");
            }
        }
    }
}

/// `<dir>/<id>/` folders holding a `tenant.toml`.
fn tenant_folders(dir: &Path) -> Vec<(String, PathBuf)> {
    super::entries(
        dir,
        |p| p.is_dir() && p.join("tenant.toml").is_file(),
        |p| p.file_name(),
    )
}

/// A folder tenant's credential files are relative to its folder, and a
/// `user.creds` beside `tenant.toml` is its credentials when it names none.
/// Absolute paths also keep two tenants' `user.creds` from sharing a
/// connection.
fn absolutize_credentials(tc: &mut TenantConfig, folder: &Path, config: &Config) {
    let creds = folder.join("user.creds");
    if tc.nats.is_none() && creds.is_file() {
        let mut nats = config.nats.clone();
        nats.token = None;
        nats.user = None;
        nats.password = None;
        nats.nkey_file = None;
        nats.creds_file = Some(creds);
        tc.nats = Some(nats);
    }
    if let Some(nats) = &mut tc.nats {
        for file in [&mut nats.creds_file, &mut nats.nkey_file]
            .into_iter()
            .flatten()
        {
            if file.is_relative() {
                *file = folder.join(&*file);
            }
        }
    }
}
