//! The station's stock: production plans, packs (keys sealed by the caller),
//! the durable queue of work for the CA, admin users and sessions, and the
//! audit log, in one SQLite file opened the one safe way
//! ([`crate::store::db::open`]). One file per concern:
//!
//! - [`schema`]: the tables and their migrations;
//! - [`lifecycle`]: the pack state machine (the only code that changes a
//!   pack's state) and the pack queries;
//! - [`plan`]: production plans and their discard/rework marks;
//! - [`queue`]: the durable queue of revocations and replacements;
//! - [`progress`]: read-only counts of one day (per hour, per line);
//! - [`users`]: admin users and login sessions.

use std::path::Path;

use rusqlite::{Connection, Transaction};

use super::{audit, db};

pub mod lifecycle;
pub mod plan;
pub mod progress;
pub mod queue;
pub mod schema;
pub mod users;

pub use crate::wire::station::{PackState, PlanChange, PlanRow, QueueKind};
pub use lifecycle::{apply, Event, EventContext, NewPack, PackRow, StockError};
pub use queue::QueueRow;
pub use users::UserRow;

/// Seconds since the Unix epoch: how the stock stores every time.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 UTC text of a stored time.
pub fn unix_text(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .map(db::time_text)
        .unwrap_or_else(|_| at.to_string())
}

pub struct Stock {
    conn: Connection,
}

impl Stock {
    pub fn open(path: &Path, create: bool) -> anyhow::Result<Stock> {
        let conn = db::open(path, create, &schema::migrations())?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Stock { conn })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn transaction(&mut self) -> anyhow::Result<Transaction<'_>> {
        Ok(self.conn.transaction()?)
    }

    /// Folds the WAL into the database file and truncates it, so deleted key
    /// bytes (zeroed in place by `secure_delete`) leave no older copy behind.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        db::checkpoint_truncate(&self.conn)
    }

    /// Appends an audit entry on its own (for actions that change nothing else).
    pub fn audit(
        &mut self,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        audit::append(&tx, actor, action, detail)?;
        tx.commit()?;
        Ok(())
    }
}
