//! The admin login: users with Argon2id password hashes (PHC strings), a
//! session token (only its SHA-256 is stored), lockout after repeated
//! failures of one user, a limit on failed logins per peer address,
//! constant-time comparisons, every attempt that reaches a password check in
//! the audit log with a bounded, escaped user name.
//!
//! A login is three steps so that the costly hash never runs while the
//! station is held: [`begin`] reads the user (short), [`Attempt::check`]
//! runs Argon2 on its own, [`finish`] records the outcome (short).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::config::AdminConfig;
use super::error::{Kind, StationError};
use crate::store::stock::{now_unix, unix_text, Stock};
use crate::wire::station::codes;

const MIN_PASSWORD: usize = 8;
/// Longest user name a station accepts (and the most of any name it logs).
pub const MAX_USER_NAME: usize = 64;

/// Argon2id with the crate's recommended parameters, as a PHC string.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let salt = SaltString::encode_b64(&bytes)
        .map_err(|e| anyhow::anyhow!("cannot encode the salt: {e}"))?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?
        .to_string())
}

fn verify_password(password: &str, phc: &str) -> bool {
    // The hash comparison inside verify_password is constant-time.
    match PasswordHash::new(phc) {
        Ok(hash) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash that no password opens, verified against for unknown users so that
/// a login takes as long whether or not the user exists.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("certline: no such user").expect("hashing works"))
}

fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// At most [`MAX_USER_NAME`] characters of a name as given, control
/// characters and quotes escaped, and a mark when it was cut: what the
/// audit log and the log keep of a name that is no user.
pub fn bounded_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(MAX_USER_NAME)
        .flat_map(char::escape_default)
        .collect();
    if name.chars().count() > MAX_USER_NAME {
        out.push_str(&format!("...({} bytes)", name.len()));
    }
    out
}

pub fn check_new_user(name: &str, password: &str) -> anyhow::Result<()> {
    if !valid_user_name(name) {
        anyhow::bail!(
            "admin user name \"{}\" must be 1-{MAX_USER_NAME} characters of letters, digits, '-', '_', '.'",
            bounded_name(name)
        );
    }
    if password.chars().count() < MIN_PASSWORD {
        anyhow::bail!("the admin password must be at least {MIN_PASSWORD} characters");
    }
    Ok(())
}

/// A secret read by clap from the environment: never printed by `Debug`.
#[derive(Clone)]
pub struct Secret(pub Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(Zeroizing::new(s.to_string())))
    }
}

/// The admin password given through the environment (clap reads it), else
/// asked on the terminal without echo.
pub fn password_or_prompt(
    given: Option<&Secret>,
    prompt: &str,
) -> anyhow::Result<Zeroizing<String>> {
    if let Some(Secret(password)) = given.filter(|p| !p.0.is_empty()) {
        return Ok(password.clone());
    }
    let password = Zeroizing::new(rpassword::prompt_password(prompt).map_err(|e| {
        anyhow::anyhow!(
            "no admin password: set {} (cannot ask on a terminal: {e})",
            super::admin::PASSWORD_ENV
        )
    })?);
    if password.is_empty() {
        anyhow::bail!("no admin password given");
    }
    Ok(password)
}

fn refuse(code: &'static str, message: impl Into<String>) -> StationError {
    StationError::refused(Kind::Unauthorized, code, message)
}

/// A login attempt between its steps.
pub struct Attempt {
    user: String,
    /// The stored hash, or None for a user that does not exist.
    phc: Option<String>,
    /// Set when the user is locked out: no password is checked.
    locked_until: i64,
    from: String,
}

/// Step 1 (station held, short): what the stock knows of the user.
pub fn begin(stock: &Stock, user: &str, from: &str) -> Result<Attempt, StationError> {
    let row = if valid_user_name(user) {
        stock.user(user)?
    } else {
        None
    };
    Ok(Attempt {
        user: row
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| user.to_string()),
        locked_until: row.as_ref().map_or(0, |r| r.locked_until),
        phc: row.map(|r| r.phc),
        from: from.to_string(),
    })
}

/// What the password check found.
pub struct Checked {
    attempt: Attempt,
    ok: bool,
}

impl Attempt {
    /// Step 2 (station not held): Argon2. A locked-out user's password is
    /// not checked at all; a name that can be no user is not hashed either.
    pub fn check(self, password: &str) -> Checked {
        let now = now_unix();
        let ok = if self.locked_until > now {
            false
        } else {
            match &self.phc {
                Some(phc) => verify_password(password, phc),
                None if valid_user_name(&self.user) => {
                    let _ = verify_password(password, dummy_hash());
                    false
                }
                None => false,
            }
        };
        Checked { attempt: self, ok }
    }
}

/// Step 3 (station held, short): records the outcome (with lockout) and
/// answers whether the user is in.
pub fn finish(
    stock: &mut Stock,
    config: &AdminConfig,
    checked: Checked,
) -> Result<(), StationError> {
    let Checked { attempt, ok } = checked;
    let now = now_unix();
    let user = attempt.user.as_str();
    let from = attempt.from.as_str();
    if attempt.phc.is_none() {
        stock.record_unknown_login(&bounded_name(user), from)?;
        return Err(refuse(codes::UNAUTHORIZED, "wrong user or password"));
    }
    // Another attempt may have changed the counts meanwhile: read them again.
    let row = stock
        .user(user)?
        .ok_or_else(|| refuse(codes::UNAUTHORIZED, "wrong user or password"))?;
    if row.locked_until > now || attempt.locked_until > now {
        let until = row.locked_until.max(attempt.locked_until);
        stock.record_login(&row.name, false, row.failures, until, from)?;
        return Err(StationError::refused(
            Kind::TooMany,
            codes::LOCKED_OUT,
            format!(
                "user {user} is locked out after {} failed logins until {}",
                row.failures,
                unix_text(until)
            ),
        ));
    }
    if ok {
        stock.record_login(&row.name, true, 0, 0, from)?;
        return Ok(());
    }
    let failures = row.failures + 1;
    if failures >= config.max_failures {
        let until = now + config.lockout_secs;
        stock.record_login(&row.name, false, failures, until, from)?;
        return Err(StationError::refused(
            Kind::TooMany,
            codes::LOCKED_OUT,
            format!(
                "wrong user or password; after {failures} failed logins user {user} is locked out until {}",
                unix_text(until)
            ),
        ));
    }
    stock.record_login(&row.name, false, failures, 0, from)?;
    Err(refuse(codes::UNAUTHORIZED, "wrong user or password"))
}

/// All three steps at once, for a caller that owns the stock alone (the
/// local admin command).
pub fn check_login(
    stock: &mut Stock,
    config: &AdminConfig,
    user: &str,
    password: &str,
    from: &str,
) -> Result<(), StationError> {
    let checked = begin(stock, user, from)?.check(password);
    finish(stock, config, checked)
}

fn token_hash(token: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

/// Opens a session for a user who just logged in: returns the token and its expiry.
pub fn open_session(
    stock: &mut Stock,
    config: &AdminConfig,
    user: &str,
) -> Result<(Zeroizing<String>, i64), StationError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let token = Zeroizing::new(hex::encode(bytes));
    let expires = now_unix() + config.session_secs;
    stock.create_session(&token_hash(&token), user, expires)?;
    Ok((token, expires))
}

/// The user of a valid session token.
pub fn authenticate(stock: &Stock, token: &str) -> Result<String, StationError> {
    let hash = token_hash(token);
    let Some((user, expires)) = stock.session(&hash)? else {
        return Err(refuse(
            codes::UNAUTHORIZED,
            "no valid admin session: log in first (POST /v1/admin/login)",
        ));
    };
    if expires <= now_unix() {
        return Err(refuse(
            codes::UNAUTHORIZED,
            "the admin session has expired: log in again",
        ));
    }
    Ok(user)
}

/// Replaces a user's password (already checked and hashed); the user's
/// other sessions end, the one of `keep_token` stays.
pub fn change_password(
    stock: &mut Stock,
    user: &str,
    phc: &str,
    keep_token: &str,
) -> anyhow::Result<()> {
    stock.set_password(user, phc, &format!("admin:{user}"), &token_hash(keep_token))
}

pub fn logout(stock: &mut Stock, token: &str) -> anyhow::Result<()> {
    stock.end_session(&token_hash(token))
}

/// Failed logins per peer address within a window: past the limit, the
/// address is refused before any password is checked or anything written.
pub struct PeerLimit {
    max: u32,
    window_secs: i64,
    seen: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl PeerLimit {
    pub fn new(config: &AdminConfig) -> PeerLimit {
        PeerLimit {
            max: config.max_failures_per_peer,
            window_secs: config.peer_window_secs,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses the address if it failed too often in the current window.
    pub fn check(&self, peer: IpAddr) -> Result<(), StationError> {
        let now = now_unix();
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(&peer) {
            Some((start, n)) if now - start < self.window_secs && *n >= self.max => {
                Err(StationError::refused(
                    Kind::TooMany,
                    codes::RATE_LIMITED,
                    format!(
                        "too many failed logins from {peer}; try again after {}",
                        unix_text(start + self.window_secs)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed login of the address.
    pub fn failed(&self, peer: IpAddr) {
        let now = now_unix();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.retain(|_, (start, _)| now - *start < self.window_secs);
        }
        let entry = seen.entry(peer).or_insert((now, 0));
        if now - entry.0 >= self.window_secs {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_escaped_in_what_is_kept() {
        let long = "a".repeat(60_000);
        let kept = bounded_name(&long);
        assert!(kept.len() < 100, "{}", kept.len());
        assert!(kept.ends_with("...(60000 bytes)"));
        assert_eq!(bounded_name("ad\x1b[31mmin"), "ad\\u{1b}[31mmin");
    }

    #[test]
    fn the_peer_limit_refuses_after_the_set_number_of_failures() {
        let config = AdminConfig {
            max_failures_per_peer: 3,
            ..AdminConfig::default()
        };
        let limit = PeerLimit::new(&config);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            limit.check(peer).unwrap();
            limit.failed(peer);
        }
        let refused = limit.check(peer).unwrap_err();
        assert_eq!(refused.code(), Some(codes::RATE_LIMITED));
        limit.check(other).unwrap();
    }
}
