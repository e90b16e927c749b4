//! Compiled components, cached by the SHA-256 of the component file: in
//! memory, and on disk across restarts (an 18 MB Python component takes
//! seconds to compile). The disk cache only ever deserializes files this
//! host wrote itself, named by content digest and the engine's
//! compatibility hash, and written atomically.
//!
//! Both are bounded: every hot swap brings a new version, and a host that
//! runs for months must not keep every one it ever saw. The memory cache
//! keeps the [`KEEP_IN_MEMORY`] versions used last (a version in use stays
//! alive through its `Plugin` whether cached or not: the cache only spares
//! a recompile when a recent version comes back); the disk cache keeps the
//! [`KEEP_ON_DISK`] files used last, by modification time, which a read
//! refreshes.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;

use wasmtime::Engine;
use wasmtime::component::Component;

/// Compiled versions kept in memory, most recently used last.
pub const KEEP_IN_MEMORY: usize = 8;
/// Compiled files kept in the disk cache folder.
pub const KEEP_ON_DISK: usize = 16;

/// In-memory and optional on-disk cache of compiled components.
pub struct CompileCache {
    /// (digest, component), most recently used last.
    memory: Mutex<VecDeque<(String, Component)>>,
    dir: Option<PathBuf>,
    engine_key: String,
}

impl CompileCache {
    /// A cache for `engine`, persisting to `dir` when set.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache {
            memory: Mutex::new(VecDeque::new()),
            dir: dir.filter(|d| !d.as_os_str().is_empty()),
            engine_key: format!("{:016x}", h.finish()),
        }
    }

    /// The compiled component for `bytes` (whose digest is `digest`).
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<Component> {
        if let Some(c) = self.memory.lock().ok().and_then(|mut m| {
            let i = m.iter().position(|(d, _)| d == digest)?;
            let hit = m.remove(i)?;
            let c = hit.1.clone();
            m.push_back(hit);
            Some(c)
        }) {
            return Ok(c);
        }
        let component = match self.read_disk(engine, digest) {
            Some(c) => c,
            None => {
                let c = Component::new(engine, bytes)?;
                self.write_disk(digest, &c);
                c
            }
        };
        if let Ok(mut m) = self.memory.lock() {
            m.push_back((digest.to_owned(), component.clone()));
            while m.len() > KEEP_IN_MEMORY {
                m.pop_front();
            }
        }
        Ok(component)
    }

    /// How many compiled versions are held in memory, and how many files
    /// are in the disk cache folder.
    pub fn counts(&self) -> (usize, usize) {
        let memory = self.memory.lock().map(|m| m.len()).unwrap_or(0);
        (memory, self.disk_entries().len())
    }

    /// The disk cache's compiled files with their modification times.
    fn disk_entries(&self) -> Vec<(std::time::SystemTime, PathBuf)> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let Ok(read) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        read.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect()
    }

    /// Remove all but the [`KEEP_ON_DISK`] most recently used files. Files
    /// of other engines (an older wasmtime) age out the same way.
    fn prune_disk(&self) {
        let mut entries = self.disk_entries();
        if entries.len() <= KEEP_ON_DISK {
            return;
        }
        entries.sort();
        let excess = entries.len() - KEEP_ON_DISK;
        for (_, path) in entries.into_iter().take(excess) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::debug!(path = %path.display(), error = %e, "cannot prune the compiled-code cache");
            }
        }
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{}.cwasm", self.engine_key)))
    }

    fn read_disk(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest)?;
        if !path.is_file() {
            return None;
        }
        // SAFETY: `deserialize_file` trusts its input to be code this engine
        // produced. The file's name carries the source digest and the
        // engine's compatibility hash, it lives in the host's own cache
        // folder, and it is only ever created by `write_disk` below via an
        // atomic rename, so it is either absent or complete.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, &path) };
        match loaded {
            Ok(c) => {
                // Used now: the pruning keeps the files used last.
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                Some(c)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled-code cache entry; recompiling");
                None
            }
        }
    }

    fn write_disk(&self, digest: &str, component: &Component) {
        let Some(path) = self.path(digest) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            std::fs::create_dir_all(dir)?;
            let bytes = component.serialize().map_err(std::io::Error::other)?;
            let tmp = dir.join(format!(".{digest}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the compiled-code cache; carrying on without it");
        }
        self.prune_disk();
    }
}
