//! The admin login: users with Argon2id password hashes (PHC strings), a
//! session token (only its SHA-256 is stored), lockout after repeated
//! failures, constant-time comparisons, every attempt in the audit log.

use std::io::{BufRead, Write};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::config::AdminConfig;
use super::desk::StationError;
use crate::store::stock::{now_unix, unix_text, Stock};
use crate::wire::station::codes;

pub const PASSWORD_ENV: &str = "CERTLINE_ADMIN_PASSWORD";
const MIN_PASSWORD: usize = 8;

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

pub fn check_new_user(name: &str, password: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        anyhow::bail!(
            "admin user name {name:?} must be 1-64 characters of letters, digits, '-', '_', '.'"
        );
    }
    if password.chars().count() < MIN_PASSWORD {
        anyhow::bail!("the admin password must be at least {MIN_PASSWORD} characters");
    }
    Ok(())
}

/// The admin password: from CERTLINE_ADMIN_PASSWORD, else asked on the terminal.
pub fn read_password(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(value) = std::env::var(PASSWORD_ENV) {
        if !value.is_empty() {
            return Ok(Zeroizing::new(value));
        }
    }
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| {
            anyhow::anyhow!(
                "no admin password: set {PASSWORD_ENV} (there is no terminal to ask on)"
            )
        })?;
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(tty.try_clone().expect("tty handle"))
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut out = tty.try_clone()?;
    write!(out, "{prompt}")?;
    out.flush()?;
    let hidden = stty("-echo");
    let mut line = Zeroizing::new(String::new());
    let read = std::io::BufReader::new(tty.try_clone()?).read_line(&mut line);
    if hidden {
        stty("echo");
    }
    writeln!(out)?;
    read?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        anyhow::bail!("no admin password given");
    }
    Ok(Zeroizing::new(password))
}

fn refuse(code: &'static str, message: impl Into<String>) -> StationError {
    StationError::refused(axum::http::StatusCode::UNAUTHORIZED, code, message)
}

/// Checks a user's password, with lockout; records the outcome.
pub fn check_login(
    stock: &mut Stock,
    config: &AdminConfig,
    user: &str,
    password: &str,
    from: &str,
) -> Result<(), StationError> {
    let now = now_unix();
    let Some(row) = stock.user(user)? else {
        let _ = verify_password(password, dummy_hash());
        stock.record_unknown_login(user, from)?;
        return Err(refuse(codes::UNAUTHORIZED, "wrong user or password"));
    };
    if row.locked_until > now {
        stock.record_login(&row.name, false, row.failures, row.locked_until, from)?;
        return Err(StationError::refused(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            codes::LOCKED_OUT,
            format!(
                "user {user} is locked out after {} failed logins until {}",
                row.failures,
                unix_text(row.locked_until)
            ),
        ));
    }
    if verify_password(password, &row.phc) {
        stock.record_login(&row.name, true, 0, 0, from)?;
        return Ok(());
    }
    let failures = row.failures + 1;
    if failures >= config.max_failures {
        let until = now + config.lockout_secs;
        stock.record_login(&row.name, false, failures, until, from)?;
        return Err(StationError::refused(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
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

fn token_hash(token: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

/// Logs in and opens a session: returns the token and its expiry.
pub fn login(
    stock: &mut Stock,
    config: &AdminConfig,
    user: &str,
    password: &str,
    from: &str,
) -> Result<(Zeroizing<String>, i64), StationError> {
    check_login(stock, config, user, password, from)?;
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

pub fn logout(stock: &mut Stock, token: &str) -> anyhow::Result<()> {
    stock.end_session(&token_hash(token))
}
