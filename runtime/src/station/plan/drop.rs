//! The drop folder (`DIR/plans/`) a serving station watches: each plan file
//! dropped there is read (never through a link, regular files only, parked
//! in `rejected/` before it is read) and imported whole by [`super`]'s
//! reader, or refused with a short, escaped error file beside it.

use std::path::Path;

use super::{parse, store, ImportReport};
use crate::text::excerpt;

/// Largest plan file the drop folder reads.
pub const MAX_DROP_BYTES: u64 = 16 * 1024 * 1024;
/// Most characters of an error (which may quote the file) kept in an error file.
const MAX_ERROR_CHARS: usize = 400;

/// Opens a dropped file without following a link and without blocking on
/// a FIFO, and reads it if it is a regular file of a sane size.
fn read_dropped(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            anyhow::anyhow!("cannot open the dropped plan (links are not followed): {e}")
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        anyhow::bail!("the dropped plan is not a regular file");
    }
    if meta.len() > MAX_DROP_BYTES {
        anyhow::bail!(
            "the dropped plan is {} bytes; the drop folder takes plans up to {MAX_DROP_BYTES} bytes",
            meta.len()
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_DROP_BYTES + 1).read_to_end(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the dropped plan is not UTF-8 text"))
}

/// Imports every plan file dropped into `DIR/plans/`: an imported file moves
/// to `plans/imported/`, a refused one to `plans/rejected/` beside a
/// `.error.txt` (0600) that says why, quoting at most a short, escaped
/// excerpt. Files named `*.csv` or `*.json` are looked at; only regular ones
/// are read, never through a link: a link, a FIFO or a device of that name
/// is moved to `rejected/` unread. A file goes to `rejected/` *before* it is read, with an error file
/// that says the import did not finish: if the station dies on it, it is not
/// read again at the next start.
pub fn drop_folder(station: &mut crate::station::Station, dir: &Path) -> anyhow::Result<()> {
    let folder = dir.join(crate::station::dir::PLANS_DIR);
    let config = station.config.clone();
    process_drops(&folder, |name, text| {
        let rows = parse(name, text, &config)?;
        store(
            name,
            rows,
            &config,
            &mut station.stock,
            "station:drop-folder",
        )
    })
}

/// The drop folder's file handling, with `import` doing the import proper.
fn process_drops(
    folder: &Path,
    mut import: impl FnMut(&str, &str) -> anyhow::Result<ImportReport>,
) -> anyhow::Result<()> {
    use crate::pki::pack::write_private_file;
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Ok(());
    };
    let mut files: Vec<(String, bool)> = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".tmp") {
            continue;
        }
        if name.ends_with(".csv") || name.ends_with(".json") {
            files.push((name, kind.is_file()));
        }
    }
    files.sort();
    if files.is_empty() {
        return Ok(());
    }
    let rejected = folder.join("rejected");
    let imported = folder.join("imported");
    for dir in [&rejected, &imported] {
        std::fs::create_dir_all(dir)?;
    }
    for (name, plan_file) in files {
        let shown = excerpt(&name, 100);
        let parked = rejected.join(&name);
        let error_file = rejected.join(format!("{name}.error.txt"));
        // Parked first: whatever happens next, this file is not read again.
        std::fs::rename(folder.join(&name), &parked)?;
        if !plan_file {
            tracing::error!(
                "plan drop folder: {shown} is not a regular file; moved to rejected/ unread"
            );
            write_private_file(
                &error_file,
                format!("{shown}: not a regular file (a link, say); it was not read\n").as_bytes(),
            )?;
            continue;
        }
        write_private_file(
            &error_file,
            format!("{shown}: the station stopped while importing this file; nothing of it was imported. Check it and drop it again\n").as_bytes(),
        )?;
        let result = read_dropped(&parked).and_then(|text| import(&name, &text));
        match result {
            Ok(report) => {
                tracing::warn!(file = %shown, ids = report.ids, "plan imported from the drop folder");
                std::fs::rename(
                    &parked,
                    imported.join(format!("{}-{name}", crate::store::stock::now_unix())),
                )?;
                let _ = std::fs::remove_file(&error_file);
            }
            Err(err) => {
                let why = excerpt(&format!("{err:#}"), MAX_ERROR_CHARS);
                tracing::error!("plan {shown} refused: {why}");
                write_private_file(&error_file, format!("{why}\n").as_bytes())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str) -> ImportReport {
        ImportReport {
            file: name.into(),
            ids: 1,
            days: Default::default(),
            change: Default::default(),
            notes: vec![],
        }
    }

    #[test]
    fn the_drop_folder_follows_no_link_and_keeps_no_content_in_errors() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("shadow");
        std::fs::write(&secret, "root:$6$secret-hash:19000:0:99999:7:::\n").unwrap();
        let folder = tmp.path().join("plans");
        std::fs::create_dir(&folder).unwrap();
        std::os::unix::fs::symlink(&secret, folder.join("link.csv")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(folder.join("pipe.csv"))
            .status()
            .unwrap();
        assert!(status.success());
        // A regular file whose content the import quotes in its error.
        std::fs::write(folder.join("bad.csv"), "\x1b[31m$6$secret-hash".repeat(100)).unwrap();
        let mut seen = Vec::new();
        process_drops(&folder, |name, text| {
            seen.push(name.to_string());
            anyhow::bail!("cannot parse {text}")
        })
        .unwrap();
        assert_eq!(seen, ["bad.csv"], "only the regular file is read");
        let rejected = folder.join("rejected");
        for name in ["link.csv", "pipe.csv", "bad.csv"] {
            let error_file = rejected.join(format!("{name}.error.txt"));
            let why = std::fs::read_to_string(&error_file).unwrap();
            assert!(
                !why.contains("secret-hash") || name == "bad.csv",
                "{name}: {why}"
            );
            assert!(!why.contains('\x1b'), "{name}: raw control bytes: {why:?}");
            assert!(why.len() < 600, "{name}: {} bytes of error", why.len());
            let mode = std::fs::metadata(&error_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
            assert!(
                std::fs::symlink_metadata(rejected.join(name)).is_ok(),
                "{name} not moved to rejected/"
            );
        }
        let link = rejected.join("link.csv.error.txt");
        assert!(std::fs::read_to_string(link)
            .unwrap()
            .contains("not a regular file"));
        // The link target is untouched and no link is left in the folder.
        assert!(secret.exists());
        assert!(!folder.join("link.csv").exists());
    }

    #[test]
    fn a_drop_that_kills_the_import_is_parked_in_rejected_first() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join("plans");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("huge.csv"), "date,model,first_serial,count\n").unwrap();
        let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            process_drops(&folder, |_, _| panic!("out of memory")).unwrap();
        }));
        assert!(died.is_err());
        assert!(
            !folder.join("huge.csv").exists(),
            "read again at the next start"
        );
        let why = std::fs::read_to_string(folder.join("rejected/huge.csv.error.txt")).unwrap();
        assert!(why.contains("stopped while importing"), "{why}");
        // The next pass finds nothing to do; a good file still imports.
        std::fs::write(folder.join("good.csv"), "x").unwrap();
        process_drops(&folder, |name, _| Ok(report(name))).unwrap();
        assert_eq!(
            std::fs::read_dir(folder.join("imported")).unwrap().count(),
            1
        );
        assert!(!folder.join("rejected/good.csv.error.txt").exists());
    }
}
