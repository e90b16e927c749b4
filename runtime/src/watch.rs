//! Watching a folder: file-system events (inotify through `notify`) are
//! collapsed into one "something changed" tick after a quiet period, and the
//! owner rescans the folder. Rescanning and comparing content digests, rather
//! than interpreting individual events, copes the same way with every manner
//! of replacing a file — written in place, written then renamed, copied over,
//! editors' temporary files — and a file still being written is simply seen
//! again on the next tick.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Changes are collected until the folder has been quiet this long. Copies
/// and editor saves finish within a few milliseconds; 250 ms absorbs bursts
/// while keeping a new version live well within a second.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// A folder being watched; dropping it stops the watch.
pub struct FolderWatch {
    _watcher: notify::RecommendedWatcher,
    ticks: mpsc::Receiver<()>,
}

impl FolderWatch {
    /// Watch `dir` (and, with `recursive`, its sub-folders).
    pub fn new(dir: &Path, recursive: bool) -> notify::Result<Self> {
        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Access events (reads, including our own) change nothing.
                if let Ok(e) = event
                    && !matches!(e.kind, notify::EventKind::Access(_))
                {
                    let _ = raw_tx.send(());
                }
            })?;
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher.watch(dir, mode)?;
        let (tx, ticks) = mpsc::channel(1);
        tokio::spawn(async move {
            while raw_rx.recv().await.is_some() {
                // Wait for the burst to end.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {}
                // A tick already pending covers this one too.
                let _ = tx.try_send(());
            }
        });
        Ok(FolderWatch {
            _watcher: watcher,
            ticks,
        })
    }

    /// The next debounced change; `None` once the watch has ended.
    pub async fn changed(&mut self) -> Option<()> {
        self.ticks.recv().await
    }
}
