//! Opening a SQLite file the one way certline does it: WAL, synchronous=FULL
//! (NORMAL can lose the last commits on power loss), secure_delete on,
//! migrations tracked in `user_version`, and the file with its `-wal` and
//! `-shm` readable by the owner only (0600): it holds password hashes,
//! sealed keys, the ledger.

use std::path::Path;

use anyhow::Context;
use rusqlite::Connection;

/// Opens (creating if `create`) the database and brings its schema up to date.
/// `migrations[i]` moves the schema from version i to i+1.
pub fn open(path: &Path, create: bool, migrations: &[&str]) -> anyhow::Result<Connection> {
    if !create && !path.exists() {
        anyhow::bail!("database {} does not exist", path.display());
    }
    owner_only(path, create)?;
    let mut conn = Connection::open(path)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        anyhow::bail!("database {} refused WAL mode (got {mode})", path.display());
    }
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA secure_delete=ON; PRAGMA foreign_keys=ON; PRAGMA cache_size=-32768;",
    )?;
    migrate(&mut conn, migrations).with_context(|| format!("database {}", path.display()))?;
    // SQLite gives the -wal and -shm files the database's mode; older files
    // made before this rule are tightened here.
    owner_only(path, false)?;
    Ok(conn)
}

/// The database file (created empty with mode 0600 if `create` and missing)
/// and its `-wal`/`-shm` companions, if present, set to 0600.
fn owner_only(path: &Path, create: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if create && !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create database {}", path.display()))?;
    }
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        files.push(name.into());
    }
    for file in files {
        if let Ok(meta) = std::fs::metadata(&file) {
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot restrict {} to its owner", file.display()))?;
            }
        }
    }
    Ok(())
}

fn migrate(conn: &mut Connection, migrations: &[&str]) -> anyhow::Result<()> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > migrations.len() {
        anyhow::bail!(
            "schema version {version} is newer than this certline knows ({}); upgrade certline",
            migrations.len()
        );
    }
    for (index, sql) in migrations.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("migration {} failed", index + 1))?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Folds the WAL back into the main file and truncates it: after deleting key
/// material, `secure_delete` has zeroed the pages, but older copies of them
/// can still sit in the WAL until this runs.
pub fn checkpoint_truncate(conn: &Connection) -> anyhow::Result<()> {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        anyhow::bail!("WAL checkpoint could not complete (a reader holds the database)");
    }
    Ok(())
}

/// RFC 3339 UTC timestamp, second precision: how every table stores time.
pub fn now_text() -> String {
    time_text(time::OffsetDateTime::now_utc())
}

pub fn time_text(at: time::OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formatting of a UTC time cannot fail")
}

pub fn parse_time(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("stored time {text:?} is not RFC 3339"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_database_and_its_wal_are_the_owners_only() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.db");
        let conn = super::open(&path, true, &["CREATE TABLE t (x INTEGER);"]).unwrap();
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
        for name in ["t.db", "t.db-wal", "t.db-shm"] {
            let mode = std::fs::metadata(tmp.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        drop(conn);
        // A database made before the rule is tightened when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(super::open(&path, false, &["CREATE TABLE t (x INTEGER);"]).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
