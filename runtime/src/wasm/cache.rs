//! Compiled components, cached by the SHA-256 of the component file: in
//! memory for the life of the process, and on disk across restarts (an 18 MB
//! Python component takes seconds to compile). The disk cache only ever
//! deserializes files this host wrote itself, named by content digest and the
//! engine's compatibility hash, and written atomically.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;

use wasmtime::Engine;
use wasmtime::component::Component;

/// In-memory and optional on-disk cache of compiled components.
pub struct CompileCache {
    memory: Mutex<HashMap<String, Component>>,
    dir: Option<PathBuf>,
    engine_key: String,
}

impl CompileCache {
    /// A cache for `engine`, persisting to `dir` when set.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache {
            memory: Mutex::new(HashMap::new()),
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
        if let Some(c) = self.memory.lock().ok().and_then(|m| m.get(digest).cloned()) {
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
            m.insert(digest.to_owned(), component.clone());
        }
        Ok(component)
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
            Ok(c) => Some(c),
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
    }
}
