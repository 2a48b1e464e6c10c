//! The CA's CRL as the station knows it: the line credentials it must refuse.
//!
//! A CRL is taken only when its signature verifies against the issuing CA of
//! the station's own credential and it is not older than the one already
//! known; it is kept in `DIR/ca-crl.der` (0600), so a station restarted while
//! the CA is down still knows every revocation it knew before. Lines are
//! refused while no fresh CRL (one whose nextUpdate has not passed) is known:
//! a station that cannot tell a revoked line from a good one hands out no key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use time::OffsetDateTime;

use super::error::{Kind, StationError};
use crate::pki::credential::Credential;
use crate::store::db::time_text;
use crate::wire::station::{codes, CrlHealth};

pub const CRL_FILE: &str = "ca-crl.der";

#[derive(Default)]
struct Known {
    revoked: HashSet<String>,
    this_update: Option<OffsetDateTime>,
    next_update: Option<OffsetDateTime>,
    error: Option<String>,
}

/// A CRL that verified.
struct Checked {
    revoked: HashSet<String>,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
}

pub struct CrlCache {
    path: PathBuf,
    /// The issuing CA certificate (DER) that signs the CRL.
    issuer: Vec<u8>,
    known: RwLock<Known>,
}

impl CrlCache {
    /// The cache of a station directory: the kept CRL if there is one and it
    /// still verifies (a damaged or foreign file is ignored, and said so).
    pub fn open(dir: &Path, credential: &Credential) -> anyhow::Result<CrlCache> {
        let issuer = credential
            .chain
            .get(1)
            .ok_or_else(|| anyhow::anyhow!("the station credential holds no issuing CA"))?
            .to_vec();
        let cache = CrlCache {
            path: dir.join(CRL_FILE),
            issuer,
            known: RwLock::new(Known::default()),
        };
        match std::fs::read(&cache.path) {
            Ok(der) => match cache.check(&der) {
                Ok(checked) => cache.set(checked),
                Err(e) => {
                    tracing::warn!("{} is not used: {e:#}", cache.path.display());
                    cache.write().error = Some(format!("the kept CRL is not used: {e:#}"));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot read {}: {e}", cache.path.display()),
        }
        Ok(cache)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.known.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, der: &[u8]) -> anyhow::Result<Checked> {
        let (_, issuer) = x509_parser::parse_x509_certificate(&self.issuer)
            .map_err(|e| anyhow::anyhow!("the issuing CA certificate does not parse: {e}"))?;
        let (rest, crl) =
            x509_parser::parse_x509_crl(der).map_err(|e| anyhow::anyhow!("not a CRL: {e}"))?;
        anyhow::ensure!(rest.is_empty(), "trailing bytes after the CRL");
        anyhow::ensure!(
            crl.issuer() == issuer.subject(),
            "the CRL is issued by {}, not by this station's CA {}",
            crl.issuer(),
            issuer.subject()
        );
        crl.verify_signature(issuer.public_key())
            .map_err(|e| anyhow::anyhow!("the CRL's signature does not verify: {e}"))?;
        let next_update = crl
            .next_update()
            .ok_or_else(|| anyhow::anyhow!("a CRL without nextUpdate"))?
            .to_datetime();
        Ok(Checked {
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| hex::encode(r.raw_serial()))
                .collect(),
            this_update: crl.last_update().to_datetime(),
            next_update,
        })
    }

    fn set(&self, checked: Checked) {
        let mut known = self.write();
        known.revoked = checked.revoked;
        known.this_update = Some(checked.this_update);
        known.next_update = Some(checked.next_update);
        known.error = None;
    }

    /// Takes a CRL fetched from the CA: verified, not older than the known
    /// one, kept on disk before it is used. Returns the serials it newly lists.
    pub fn offer(&self, der: &[u8]) -> anyhow::Result<Vec<String>> {
        let checked = self.check(der)?;
        let newly: Vec<String> = {
            let known = self.read();
            if known
                .this_update
                .is_some_and(|known| checked.this_update < known)
            {
                anyhow::bail!(
                    "the CA's CRL of {} is older than the one this station knows ({}); kept the newer one",
                    time_text(checked.this_update),
                    known.this_update.map(time_text).unwrap_or_default()
                );
            }
            checked
                .revoked
                .iter()
                .filter(|s| !known.revoked.contains(*s))
                .cloned()
                .collect()
        };
        crate::pki::pack::write_private_file(&self.path, der)?;
        self.set(checked);
        Ok(newly)
    }

    /// Notes why the last refresh failed (the known CRL stays in use).
    pub fn failed(&self, error: String) {
        self.write().error = Some(error);
    }

    fn fresh(known: &Known, now: OffsetDateTime) -> bool {
        known.next_update.is_some_and(|next| now <= next)
    }

    /// Whether a line presenting the credential with this serial may be served.
    pub fn check_line(&self, name: &str, serial: Option<&str>) -> Result<(), StationError> {
        let known = self.read();
        if serial.is_some_and(|s| known.revoked.contains(s)) {
            return Err(StationError::refused(
                Kind::Forbidden,
                codes::FORBIDDEN,
                format!("the credential of line {name} has been revoked by the CA"),
            ));
        }
        if !Self::fresh(&known, OffsetDateTime::now_utc()) {
            return Err(StationError::refused(
                Kind::Unavailable,
                codes::NO_FRESH_CRL,
                match known.next_update {
                    Some(next) => format!(
                        "the station's copy of the CA's CRL expired at {} and the CA cannot be reached for a new one; lines are refused until it can",
                        time_text(next)
                    ),
                    None => "the station has no CRL of the CA yet (the CA cannot be reached); lines are refused until it has one".to_string(),
                },
            ));
        }
        Ok(())
    }

    pub fn health(&self) -> CrlHealth {
        let known = self.read();
        CrlHealth {
            fresh: Self::fresh(&known, OffsetDateTime::now_utc()),
            this_update: known.this_update.map(time_text),
            next_update: known.next_update.map(time_text),
            revoked: known.revoked.len(),
            error: known.error.clone(),
        }
    }
}
