//! A script file that reloads itself: loaded once at start, then watched (its
//! folder, see [`crate::watch`]); an edit that loads and passes its
//! self-check replaces the running version for the next call, an edit that
//! does not is refused with its error kept (and logged) while the previous
//! version keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use super::sandbox::ScriptError;

/// How long the folder must be quiet before a script reload. Shorter than the
/// plugin folder's: a script compiles in well under a millisecond.
pub const SCRIPT_DEBOUNCE: Duration = Duration::from_millis(150);

type Loader<T> = dyn Fn(&Path, &[u8]) -> Result<T, ScriptError> + Send + Sync;

/// Told of every reload that changed something, on the thread that reloaded.
pub type Listener = Box<dyn Fn(&ScriptStatus, &Reload) + Send + Sync>;

/// Why the newest content of the file is not the one serving.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    pub sha256: String,
    pub message: String,
    /// Unix seconds.
    pub at: i64,
}

struct Slot<T> {
    current: Arc<T>,
    sha256: String,
    /// Versions loaded so far (1 after the first load).
    version: u64,
    refused: Option<Refusal>,
    /// Counts every reload that changed something (a new version or a refusal).
    generation: u64,
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Same content as what serves (or as what was last refused).
    Unchanged,
    /// A new version serves.
    Loaded { version: u64 },
    /// Refused; the previous version keeps serving.
    Refused(String),
}

/// What [`ScriptFile::status`] reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScriptStatus {
    pub file: PathBuf,
    pub version: u64,
    pub sha256: String,
    pub refused: Option<Refusal>,
}

pub struct ScriptFile<T> {
    path: PathBuf,
    loader: Box<Loader<T>>,
    slot: RwLock<Slot<T>>,
    changed: (Mutex<u64>, Condvar),
    reloading: Mutex<()>,
    watcher: Mutex<Option<crate::watch::FolderWatch>>,
    listeners: Mutex<Vec<Listener>>,
}

fn read(path: &Path) -> Result<Vec<u8>, ScriptError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ScriptError::new(path, format!("{}: cannot read: {e}", path.display())))?;
    if meta.len() > super::sandbox::MAX_SOURCE_BYTES as u64 {
        return Err(ScriptError::new(
            path,
            format!(
                "{}: {} bytes is more than the {} a script may have",
                path.display(),
                meta.len(),
                super::sandbox::MAX_SOURCE_BYTES
            ),
        ));
    }
    std::fs::read(path)
        .map_err(|e| ScriptError::new(path, format!("{}: cannot read: {e}", path.display())))
}

impl<T: Send + Sync + 'static> ScriptFile<T> {
    /// Loads the file; a file that does not load is an error here (there is
    /// no previous version to keep).
    pub fn open(
        path: &Path,
        loader: impl Fn(&Path, &[u8]) -> Result<T, ScriptError> + Send + Sync + 'static,
    ) -> Result<Arc<ScriptFile<T>>, ScriptError> {
        let bytes = read(path)?;
        let first = loader(path, &bytes)?;
        tracing::info!(script = %path.display(), "script loaded");
        Ok(Arc::new(ScriptFile {
            path: path.to_path_buf(),
            loader: Box::new(loader),
            slot: RwLock::new(Slot {
                current: Arc::new(first),
                sha256: crate::pki::fingerprint(&bytes),
                version: 1,
                refused: None,
                generation: 0,
            }),
            changed: (Mutex::new(0), Condvar::new()),
            reloading: Mutex::new(()),
            watcher: Mutex::new(None),
            listeners: Mutex::new(Vec::new()),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version serving now; a call keeps it even if a reload happens meanwhile.
    pub fn current(&self) -> Arc<T> {
        self.slot.read().unwrap().current.clone()
    }

    pub fn version(&self) -> u64 {
        self.slot.read().unwrap().version
    }

    /// Why the newest content was refused, if it was.
    pub fn refused(&self) -> Option<Refusal> {
        self.slot.read().unwrap().refused.clone()
    }

    pub fn status(&self) -> ScriptStatus {
        let slot = self.slot.read().unwrap();
        ScriptStatus {
            file: self.path.clone(),
            version: slot.version,
            sha256: slot.sha256.clone(),
            refused: slot.refused.clone(),
        }
    }

    /// Calls `listener` after every reload that changed something (a new
    /// version serves, an edit was refused): how a role announces an edit at
    /// once instead of with its next call.
    pub fn on_reload(&self, listener: Listener) {
        self.listeners.lock().unwrap().push(listener);
    }

    fn tell(&self, what: &Reload) {
        let status = self.status();
        for l in self.listeners.lock().unwrap().iter() {
            l(&status, what);
        }
    }

    /// Counts reloads that changed something.
    pub fn generation(&self) -> u64 {
        self.slot.read().unwrap().generation
    }

    /// Waits until the generation is past `seen` or `timeout` passes.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        let (lock, cvar) = &self.changed;
        let guard = lock.lock().unwrap();
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |g| *g <= seen)
            .unwrap();
        *guard
    }

    /// Reads the file again and, if its content changed, loads it.
    pub fn reload(&self) -> Reload {
        let _one_at_a_time = self.reloading.lock().unwrap();
        let bytes = match read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                // Mid-rename or removed: keep serving, say so once.
                let already = self
                    .slot
                    .read()
                    .unwrap()
                    .refused
                    .as_ref()
                    .is_some_and(|r| r.message == e.message);
                if already {
                    return Reload::Unchanged;
                }
                return self.refuse(String::new(), e);
            }
        };
        let hash = crate::pki::fingerprint(&bytes);
        {
            let slot = self.slot.read().unwrap();
            if slot.refused.as_ref().map(|r| &r.sha256) == Some(&hash) {
                return Reload::Unchanged;
            }
            if slot.sha256 == hash {
                if slot.refused.is_none() {
                    return Reload::Unchanged;
                }
                // Back to the content that serves: nothing to load, but the
                // refusal no longer applies.
                drop(slot);
                let mut slot = self.slot.write().unwrap();
                slot.refused = None;
                slot.generation += 1;
                let generation = slot.generation;
                drop(slot);
                self.bump(generation);
                // Listeners see "unchanged" with no refusal: the version
                // that serves is the file's content again.
                self.tell(&Reload::Unchanged);
                return Reload::Unchanged;
            }
        }
        // Load outside the lock: calls keep using the old version meanwhile.
        match (self.loader)(&self.path, &bytes) {
            Ok(loaded) => {
                let mut slot = self.slot.write().unwrap();
                slot.current = Arc::new(loaded);
                slot.sha256 = hash;
                slot.version += 1;
                slot.refused = None;
                slot.generation += 1;
                let (version, generation) = (slot.version, slot.generation);
                drop(slot);
                tracing::info!(script = %self.path.display(), version, "script reloaded");
                self.bump(generation);
                let what = Reload::Loaded { version };
                self.tell(&what);
                what
            }
            Err(e) => self.refuse(hash, e),
        }
    }

    fn refuse(&self, sha256: String, e: ScriptError) -> Reload {
        tracing::error!(
            script = %self.path.display(),
            "script refused, the previous version keeps running: {}",
            e.message
        );
        let mut slot = self.slot.write().unwrap();
        slot.refused = Some(Refusal {
            sha256,
            message: e.message.clone(),
            at: time::OffsetDateTime::now_utc().unix_timestamp(),
        });
        slot.generation += 1;
        let generation = slot.generation;
        drop(slot);
        self.bump(generation);
        let what = Reload::Refused(e.message);
        self.tell(&what);
        what
    }

    fn bump(&self, generation: u64) {
        let (lock, cvar) = &self.changed;
        *lock.lock().unwrap() = generation;
        cvar.notify_all();
    }

    /// Starts watching the file's folder and reloading on changes to the file.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<()> {
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self.path.file_name().map(|n| n.to_os_string());
        let weak = Arc::downgrade(self);
        let watch = crate::watch::watch_folder(
            &dir,
            "script folder",
            SCRIPT_DEBOUNCE,
            move |p| p.file_name().map(|n| n.to_os_string()) == name,
            move || {
                if let Some(file) = weak.upgrade() {
                    file.reload();
                }
            },
        )?;
        *self.watcher.lock().unwrap() = Some(watch);
        Ok(())
    }
}
