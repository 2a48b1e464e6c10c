//! `certline ca migrate-ledger`: moves a CA from its SQLite ledger to a
//! PostgreSQL one. The CA must be stopped. The SQLite ledger's audit chain is
//! verified first, copied row for row (the audit entries with their hashes
//! unchanged) into an empty database in one transaction, verified there to
//! the same head, and only then does `ca.toml` name the database. The old
//! `ledger.db` is left as it was.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::config::{CaConfig, LedgerConfig, LEDGER_FILE};
use super::dir::{self, CONFIG_FILE};
use super::issuance::Clock;
use crate::store::ledger::{Ledger, Location, PgLedger, SqliteLedger};

#[derive(Debug, Serialize)]
pub struct Migrated {
    pub to: String,
    pub certificates: usize,
    pub audit_entries: i64,
    pub head: String,
}

pub fn to_postgres(
    dir: &Path,
    url: &str,
    password_file: Option<PathBuf>,
) -> anyhow::Result<Migrated> {
    let config = dir::read_config(dir, &Clock::system())?;
    if let Some(ledger) = &config.ledger {
        anyhow::bail!(
            "the CA in {} already keeps its ledger in {}; nothing to migrate",
            dir.display(),
            ledger.url
        );
    }
    let root_fingerprint = crate::pki::fingerprint(&dir::root_der(dir)?);

    let source = Ledger::open(&Location::Sqlite(dir.join(LEDGER_FILE)), false)?;
    let before = source
        .verify()
        .context("the SQLite ledger's audit chain does not verify; not migrating it")?;
    let sqlite = SqliteLedger::open(&dir.join(LEDGER_FILE), false)?;
    let export = sqlite.export()?;

    let ledger_config = LedgerConfig::new(url, password_file);
    let Location::Postgres { target, lease } = ledger_config.location(dir)? else {
        unreachable!("a [ledger] url is always PostgreSQL");
    };
    let shown = target.shown.clone();
    let mut pg = PgLedger::open(*target, lease)?;
    use crate::store::ledger::LedgerStore;
    pg.bind_root(&root_fingerprint)?;
    pg.import(&export)?;
    drop(pg);

    let copied = Ledger::open(&ledger_config.location(dir)?, false)?;
    let after = copied
        .verify()
        .context("the copied ledger's audit chain does not verify")?;
    if after.head != before.head || after.entries != before.entries {
        anyhow::bail!(
            "the copied audit chain ends at entry {} ({}), the original at {} ({}): not switching to it",
            after.entries,
            after.head,
            before.entries,
            before.head
        );
    }
    let counts =
        |l: &Ledger| -> anyhow::Result<u64> { Ok(l.counts()?.iter().map(|c| c.count).sum()) };
    anyhow::ensure!(
        counts(&copied)? == export.certs.len() as u64,
        "the copied ledger does not hold every certificate"
    );

    let updated = CaConfig {
        ledger: Some(ledger_config),
        ..config
    };
    let path = dir.join(CONFIG_FILE);
    let temporary = dir.join(format!("{CONFIG_FILE}.new"));
    std::fs::write(&temporary, toml::to_string_pretty(&updated)?)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(Migrated {
        to: shown,
        certificates: export.certs.len(),
        audit_entries: after.entries,
        head: after.head,
    })
}
