//! Admin users (Argon2id PHC strings, failure counts, lockout) and login
//! sessions (only a token's SHA-256 is stored), each change audited.

use rusqlite::{params, OptionalExtension};

use super::{now_unix, Stock};
use crate::store::audit;

#[derive(Debug, Clone)]
pub struct UserRow {
    pub name: String,
    pub phc: String,
    pub failures: i64,
    pub locked_until: i64,
}

impl Stock {
    // ---- users and sessions ----

    pub fn user(&self, name: &str) -> anyhow::Result<Option<UserRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, phc, failures, locked_until FROM users WHERE name = ?1",
                [name],
                |r| {
                    Ok(UserRow {
                        name: r.get(0)?,
                        phc: r.get(1)?,
                        failures: r.get(2)?,
                        locked_until: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn user_count(&self) -> anyhow::Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?)
    }

    pub fn add_user(&mut self, name: &str, phc: &str, actor: &str) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO users (name, phc, created_at) VALUES (?1, ?2, ?3)",
            params![name, phc, now_unix()],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                anyhow::anyhow!("admin user {name:?} already exists")
            }
            other => other.into(),
        })?;
        audit::append(&tx, actor, "user_add", &serde_json::json!({"user": name}))?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces a user's password hash (audited; the user's other sessions end).
    pub fn set_password(
        &mut self,
        name: &str,
        phc: &str,
        actor: &str,
        keep_session: &str,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        let changed = tx.execute(
            "UPDATE users SET phc = ?2, failures = 0, locked_until = 0 WHERE name = ?1",
            params![name, phc],
        )?;
        if changed == 0 {
            anyhow::bail!("no admin user {name:?}");
        }
        tx.execute(
            "DELETE FROM sessions WHERE user = ?1 AND token_hash != ?2",
            params![name, keep_session],
        )?;
        audit::append(
            &tx,
            actor,
            "password_change",
            &serde_json::json!({"user": name}),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Records a login attempt's outcome (with its audit entry).
    pub fn record_login(
        &mut self,
        name: &str,
        ok: bool,
        failures: i64,
        locked_until: i64,
        from: &str,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE users SET failures = ?2, locked_until = ?3 WHERE name = ?1",
            params![name, failures, locked_until],
        )?;
        let action = if ok {
            "login"
        } else if locked_until > now_unix() {
            "login_locked"
        } else {
            "login_failed"
        };
        audit::append(
            &tx,
            &format!("admin:{name}"),
            action,
            &serde_json::json!({"from": from, "failures": failures}),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A login attempt for a user that does not exist (audited, nothing else).
    pub fn record_unknown_login(&mut self, name: &str, from: &str) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        audit::append(
            &tx,
            "admin:?",
            "login_failed",
            &serde_json::json!({"user": name, "from": from, "unknown_user": true}),
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn create_session(
        &mut self,
        token_hash: &str,
        user: &str,
        expires_at: i64,
    ) -> anyhow::Result<()> {
        self.conn
            .execute("DELETE FROM sessions WHERE expires_at < ?1", [now_unix()])?;
        self.conn.execute(
            "INSERT INTO sessions (token_hash, user, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash, user, now_unix(), expires_at],
        )?;
        Ok(())
    }

    /// The user and expiry of a session.
    pub fn session(&self, token_hash: &str) -> anyhow::Result<Option<(String, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT user, expires_at FROM sessions WHERE token_hash = ?1",
                [token_hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn end_session(&mut self, token_hash: &str) -> anyhow::Result<()> {
        self.conn
            .execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])?;
        Ok(())
    }
}
