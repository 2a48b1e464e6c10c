//! Opening a PostgreSQL database the one way certline does it (the
//! counterpart of [`super::db`] for SQLite): a `postgres://` URL that carries
//! no password (the password comes from the environment or a file), a connect
//! timeout, errors that say which of "unreachable", "wrong password", "no such
//! database" it was, and migrations tracked per component in a
//! `certline_schema` table, applied under an advisory lock so that several
//! CA processes starting at once migrate once.
//!
//! The client is the blocking `postgres` crate: the CA runs ledger work on
//! blocking threads under its mutex, one statement after another. Its
//! `Client` drives a small runtime of its own, which must never be dropped on
//! an async thread; [`Db`] drops it on a thread of its own.

use std::time::Duration;

use anyhow::Context;
use postgres::error::SqlState;
use postgres::{Client, NoTls};
use zeroize::Zeroizing;

/// The environment variable that carries the ledger database's password.
pub const PASSWORD_ENV: &str = "CERTLINE_LEDGER_PASSWORD";

/// Whether a ledger location is a PostgreSQL URL.
pub fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// Where a PostgreSQL database is and how to log in (the password never in the URL).
#[derive(Clone)]
pub struct Target {
    config: postgres::Config,
    /// `user@host:port/database`, for messages (no secret in it).
    pub shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    /// Parses a `postgres://user@host:port/database` URL; refuses one with a
    /// password in it (ca.toml is not the place for a secret).
    pub fn parse(url: &str, password: Option<Zeroizing<String>>) -> anyhow::Result<Target> {
        if !is_url(url) {
            anyhow::bail!(
                "ledger URL {url:?} is not a PostgreSQL URL (postgres://user@host:port/database)"
            );
        }
        let mut config: postgres::Config = url.parse().map_err(|e| {
            anyhow::anyhow!("ledger URL {url:?} is not a valid PostgreSQL URL: {e}")
        })?;
        if config.get_password().is_some() {
            anyhow::bail!(
                "ledger URL {url:?} carries a password: take it out of the URL and give it in {PASSWORD_ENV} or as [ledger] password_file"
            );
        }
        if config.get_user().is_none() {
            anyhow::bail!("ledger URL {url:?} names no user (postgres://user@host:port/database)");
        }
        let Some(database) = config.get_dbname().map(str::to_string) else {
            anyhow::bail!(
                "ledger URL {url:?} names no database (postgres://user@host:port/database)"
            );
        };
        if let Some(password) = password {
            config.password(password.as_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("certline");
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => host.clone(),
            Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "{}@{host}:{port}/{database}",
            config.get_user().unwrap_or_default()
        );
        Ok(Target { config, shown })
    }

    /// The same database with `schema` first on the search path (the bench
    /// works in a schema of its own).
    pub fn in_schema(&self, schema: &str) -> Target {
        let mut config = self.config.clone();
        config.options(&format!("-c search_path={schema}"));
        Target {
            config,
            shown: format!("{} (schema {schema})", self.shown),
        }
    }

    /// Connects, turning the usual failures into messages that say what to fix.
    pub fn connect(&self) -> anyhow::Result<Db> {
        match self.config.connect(NoTls) {
            Ok(client) => Ok(Db {
                client: Some(client),
            }),
            Err(err) => Err(self.explain(&err)),
        }
    }

    /// What a failed connection or statement means for the operator.
    pub fn explain(&self, err: &postgres::Error) -> anyhow::Error {
        let shown = &self.shown;
        let user = self.config.get_user().unwrap_or_default();
        match err.code() {
            Some(code) if *code == SqlState::INVALID_PASSWORD => anyhow::anyhow!(
                "the ledger database {shown} refused the password of user {user} (wrong password; it comes from {PASSWORD_ENV} or [ledger] password_file)"
            ),
            Some(code) if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                anyhow::anyhow!("the ledger database {shown} does not let user {user} in: {err}")
            }
            Some(code) if *code == SqlState::INVALID_CATALOG_NAME => anyhow::anyhow!(
                "the ledger database {shown} does not exist on that server: create it first (createdb -O {user} {})",
                self.config.get_dbname().unwrap_or_default()
            ),
            Some(code) if is_connection_lost(err) => anyhow::anyhow!(
                "the ledger database {shown} is not available ({}: {}); the CA reconnects by itself once it is back",
                code.code(),
                err.as_db_error().map(|d| d.message()).unwrap_or("connection lost")
            ),
            Some(code) => anyhow::anyhow!(
                "the ledger database {shown}: {} ({})",
                err.as_db_error().map(|d| d.message()).unwrap_or("database error"),
                code.code()
            ),
            None if err.to_string().contains("password missing") => anyhow::anyhow!(
                "the ledger database {shown} asks for a password and none was given: set {PASSWORD_ENV} or [ledger] password_file"
            ),
            None => {
                let cause = std::error::Error::source(err)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| err.to_string());
                anyhow::anyhow!(
                    "cannot reach the ledger database {shown}: {cause} (is PostgreSQL running there, and is the URL right?)"
                )
            }
        }
    }
}

/// Whether an error means the connection is gone or unusable (the server
/// went away, is shutting down or starting up): such a connection is dropped
/// and made again, and a statement that found it so wrote nothing.
pub fn is_connection_lost(err: &postgres::Error) -> bool {
    match err.code() {
        None => !err.to_string().contains("password missing"),
        // 08: connection exception; 57P: operator intervention (shutdown, starting up).
        Some(code) => code.code().starts_with("08") || code.code().starts_with("57P"),
    }
}

/// An open connection; dropped on a thread of its own (see the module comment).
pub struct Db {
    client: Option<Client>,
}

impl Db {
    pub fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("the client lives until drop")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // The client's own runtime cannot be dropped (nor block) on an async thread.
            let _ = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(client));
        }
    }
}

/// Any PostgreSQL key for `pg_advisory_xact_lock`: certline's migrations.
const MIGRATION_LOCK: i64 = 0x6365_7274_6c69_6e65; // "certline"

/// Brings `component`'s schema up to date: `migrations[i]` moves it from
/// version i to i+1, all in one transaction. A database whose version is
/// newer than this certline knows is refused, and so is one that holds
/// tables of that name without a version (another program's, or a
/// half-made database).
pub fn migrate(
    db: &mut Db,
    target: &Target,
    component: &str,
    migrations: &[&str],
    first_table: &str,
) -> anyhow::Result<()> {
    let explain = |e: postgres::Error| target.explain(&e);
    let mut tx = db.client().transaction().map_err(explain)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(explain)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS certline_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    )
    .map_err(explain)?;
    let version: Option<i32> = tx
        .query_opt(
            "SELECT version FROM certline_schema WHERE component = $1",
            &[&component],
        )
        .map_err(explain)?
        .map(|row| row.get(0));
    let version = match version {
        Some(version) => version as usize,
        None => {
            let taken: bool = tx
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&first_table.to_string()],
                )
                .map_err(explain)?
                .get(0);
            if taken {
                anyhow::bail!(
                    "the database {} already has a table {first_table} but no certline {component} schema version: it is not a certline {component} database",
                    target.shown
                );
            }
            0
        }
    };
    if version > migrations.len() {
        anyhow::bail!(
            "the {component} in database {} has schema version {version}, newer than this certline knows ({}): it was made by a newer certline; upgrade certline",
            target.shown,
            migrations.len()
        );
    }
    for (index, sql) in migrations.iter().enumerate().skip(version) {
        tx.batch_execute(sql)
            .map_err(explain)
            .with_context(|| format!("{component} migration {} failed", index + 1))?;
    }
    if version < migrations.len() {
        tx.execute(
            "INSERT INTO certline_schema (component, version) VALUES ($1, $2)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
            &[&component, &(migrations.len() as i32)],
        )
        .map_err(explain)?;
    }
    tx.commit().map_err(explain)?;
    Ok(())
}
