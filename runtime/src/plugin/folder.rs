//! A plugin folder: every `*.wasm` in it loaded, model codes mapped to plugins,
//! and the folder watched so that a new or changed plugin takes effect for the
//! next device operation.
//!
//! Rules: files load in name order; a file that fails to load is refused (the
//! error is kept, see [`PluginFolder::refused`]) and, if an earlier version of
//! that file was loaded, that version keeps serving; a plugin that claims a
//! model code another file already serves is refused, naming both; a removed
//! file stops serving. Reloads compare content hashes, so touching a file or
//! reading it does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;

use super::{Plugin, PluginEngine};

/// How long the folder must be quiet before a reload (a copy in progress
/// produces a burst of events).
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// What the folder serves right now.
#[derive(Default)]
struct Served {
    /// By file.
    files: BTreeMap<PathBuf, Arc<Plugin>>,
    /// Why a file is not served (or not in its newest version).
    refused: BTreeMap<PathBuf, String>,
    /// Hashes already tried and refused, so an unchanged bad file is not
    /// compiled again on every event.
    refused_hash: BTreeMap<PathBuf, String>,
    generation: u64,
}

impl Served {
    fn model_owner(&self, model: &str, except: &Path) -> Option<&Arc<Plugin>> {
        self.files
            .iter()
            .find(|(p, pl)| p.as_path() != except && pl.serves(model))
            .map(|(_, pl)| pl)
    }
}

pub struct PluginFolder {
    dir: PathBuf,
    engine: Arc<PluginEngine>,
    served: RwLock<Served>,
    changed: (Mutex<u64>, Condvar),
    /// Serialises reloads (the watcher thread and `reload`).
    reloading: Mutex<()>,
    watcher: Mutex<Option<crate::watch::FolderWatch>>,
}

/// One plugin as listed by [`PluginFolder::status`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginStatus {
    pub file: PathBuf,
    pub name: String,
    pub version: String,
    pub interface: String,
    pub models: Vec<String>,
    pub sha256: String,
}

impl PluginFolder {
    /// Loads every plugin in `dir` (bad ones are refused, see [`Self::refused`]).
    pub fn open(dir: &Path, engine: Arc<PluginEngine>) -> anyhow::Result<Arc<PluginFolder>> {
        if !dir.is_dir() {
            anyhow::bail!(
                "plugin folder {} does not exist or is not a folder",
                dir.display()
            );
        }
        let folder = Arc::new(PluginFolder {
            dir: dir.to_path_buf(),
            engine,
            served: RwLock::new(Served::default()),
            changed: (Mutex::new(0), Condvar::new()),
            reloading: Mutex::new(()),
            watcher: Mutex::new(None),
        });
        folder.reload()?;
        Ok(folder)
    }

    /// Starts watching the folder (non-recursively) and reloading on changes.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<()> {
        let weak = Arc::downgrade(self);
        let watch = crate::watch::watch_folder(
            &self.dir,
            "plugin folder",
            DEBOUNCE,
            is_plugin_file,
            move || {
                let Some(folder) = weak.upgrade() else { return };
                if let Err(e) = folder.reload() {
                    tracing::error!(folder = %folder.dir.display(), "plugin reload failed: {e:#}");
                }
            },
        )?;
        *self.watcher.lock().unwrap() = Some(watch);
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The plugin that serves `model`, if any.
    pub fn for_model(&self, model: &str) -> Option<Arc<Plugin>> {
        self.served
            .read()
            .unwrap()
            .model_owner(model, Path::new(""))
            .cloned()
    }

    /// Every plugin served, by file name.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.served
            .read()
            .unwrap()
            .files
            .iter()
            .map(|(file, p)| PluginStatus {
                file: file.clone(),
                name: p.info.name.clone(),
                version: p.info.version.clone(),
                interface: p.interface.to_string(),
                models: p.info.models.clone(),
                sha256: p.sha256.clone(),
            })
            .collect()
    }

    /// Files that are not served (or not in their newest version), and why.
    pub fn refused(&self) -> BTreeMap<PathBuf, String> {
        self.served.read().unwrap().refused.clone()
    }

    /// Counts reloads that changed something.
    pub fn generation(&self) -> u64 {
        self.served.read().unwrap().generation
    }

    /// Waits until the generation is past `seen` or `timeout` passes; returns the
    /// generation. For tools and tests that drop a file in and wait for it.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        let (lock, cvar) = &self.changed;
        let guard = lock.lock().unwrap();
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |g| *g <= seen)
            .unwrap();
        *guard
    }

    /// Brings the served set in line with the folder's files. Only changed
    /// files are compiled; plugins keep serving while that happens.
    pub fn reload(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.reloading.lock().unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list plugin folder {}", self.dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_plugin_file(p) && p.is_file())
            .collect();
        files.sort();

        let mut changed = false;
        // Removed files stop serving.
        {
            let mut served = self.served.write().unwrap();
            let gone: Vec<PathBuf> = served
                .files
                .keys()
                .filter(|p| !files.contains(p))
                .cloned()
                .collect();
            for p in gone {
                tracing::info!(file = %p.display(), "plugin removed; its models are no longer served");
                served.files.remove(&p);
                changed = true;
            }
            served.refused.retain(|p, _| files.contains(p));
            served.refused_hash.retain(|p, _| files.contains(p));
        }

        for path in &files {
            let bytes = match super::read_limited(path) {
                Ok(b) => b,
                Err(e) => {
                    self.refuse(path, None, format!("{e:#}"));
                    continue;
                }
            };
            let hash = crate::pki::fingerprint(&bytes);
            {
                let served = self.served.read().unwrap();
                if served.files.get(path).is_some_and(|p| p.sha256 == hash)
                    || served.refused_hash.get(path) == Some(&hash)
                {
                    continue;
                }
            }
            // Compile outside the lock: writes keep using the old version.
            let loaded = self
                .engine
                .load_bytes(path, &bytes)
                .with_context(|| format!("plugin {} refused", path.display()));
            let plugin = match loaded {
                Ok(p) => p,
                Err(e) => {
                    self.refuse(path, Some(hash), format!("{e:#}"));
                    continue;
                }
            };
            let mut served = self.served.write().unwrap();
            let clash = plugin.info.models.iter().find_map(|m| {
                served
                    .model_owner(m, path)
                    .map(|other| (m.clone(), other.info.name.clone(), other.path.clone()))
            });
            if let Some((model, other, other_path)) = clash {
                drop(served);
                self.refuse(
                    path,
                    Some(hash),
                    format!(
                        "plugin {} refused: {} claims model code {model}, which plugin {other} ({}) already serves",
                        path.display(),
                        plugin.info.name,
                        other_path.display()
                    ),
                );
                continue;
            }
            tracing::info!(
                file = %path.display(),
                plugin = %plugin.info.name,
                version = %plugin.info.version,
                models = ?plugin.info.models,
                "plugin loaded"
            );
            served.refused.remove(path);
            served.refused_hash.remove(path);
            served.files.insert(path.clone(), Arc::new(plugin));
            changed = true;
        }

        if changed {
            self.bump();
        }
        Ok(())
    }

    fn refuse(&self, path: &Path, hash: Option<String>, why: String) {
        tracing::error!("{why}");
        let mut served = self.served.write().unwrap();
        served.refused.insert(path.to_path_buf(), why);
        if let Some(h) = hash {
            served.refused_hash.insert(path.to_path_buf(), h);
        }
        drop(served);
        self.bump();
    }

    fn bump(&self) {
        let generation = {
            let mut served = self.served.write().unwrap();
            served.generation += 1;
            served.generation
        };
        let (lock, cvar) = &self.changed;
        *lock.lock().unwrap() = generation;
        cvar.notify_all();
    }
}

fn is_plugin_file(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "wasm")
}
