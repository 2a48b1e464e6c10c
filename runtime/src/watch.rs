//! Watching a folder for changes to some of its files: the one watcher behind
//! hot reload (device plugins, factory scripts).
//!
//! Rules learnt the hard way: watch the parent folder, not the file (an
//! editor that saves by writing a new file and renaming it over the old one
//! would leave a file watch pointing at the old inode); non-recursively;
//! react to create/modify/remove (a rename shows up as those) but never to
//! access events (reading the file we reload makes access events, which would
//! be a reload loop); debounce so that a copy in progress is seen once. The
//! caller compares content hashes, so a touch or an unchanged save costs one
//! read.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

/// A running watch; dropping it stops watching.
pub struct FolderWatch {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

/// Calls `on_change` (on the watcher's thread) once the folder `dir` has been
/// quiet for `debounce` after a create, modify or remove of a file for which
/// `relevant` is true. Watcher errors are logged and also call `on_change`
/// (a missed event must not leave a stale version serving).
pub fn watch_folder(
    dir: &Path,
    what: &str,
    debounce: Duration,
    relevant: impl Fn(&Path) -> bool + Send + 'static,
    on_change: impl Fn() + Send + 'static,
) -> anyhow::Result<FolderWatch> {
    let shown = dir.display().to_string();
    let what_owned = what.to_string();
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        let changed = match result {
            Ok(events) => events.iter().any(|e| {
                // Access events come from our own reads; reacting to them
                // would make a reload loop.
                matches!(
                    e.kind,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
                ) && e.paths.iter().any(|p| relevant(p))
            }),
            Err(errors) => {
                for e in errors {
                    tracing::warn!(folder = %shown, "watching the {what_owned}: {e}");
                }
                true
            }
        };
        if changed {
            on_change();
        }
    })
    .with_context(|| format!("cannot start watching the {what}"))?;
    debouncer
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {what} {}", dir.display()))?;
    Ok(FolderWatch {
        _debouncer: debouncer,
    })
}
