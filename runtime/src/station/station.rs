//! The station itself: its directory opened (configuration, keys, stock,
//! retention policy), the pack keys sealed and opened, the stock verified at
//! start. What the station does with packs lives beside it: the line API and
//! the sweeps in [`super::handout`], discard and rework in [`super::admin`],
//! the admin reports in [`super::reports`]. Every state change goes through
//! [`crate::store::stock::apply`], which holds the lifecycle itself.

use std::path::Path;
use std::sync::Arc;

use time::Date;
use zeroize::Zeroizing;

use super::config::StationConfig;
use super::retention::{BuiltinPolicy, RetentionPolicy};
use crate::pki::credential::Credential;
use crate::pki::seal::Kek;
use crate::store::stock::{apply, now_unix, Event, EventContext, PackRow, PackState, Stock};

/// The associated data a pack's sealed key is bound to.
pub(crate) fn pack_aad(id: &str, serial: &str) -> Vec<u8> {
    format!("certline station pack\0{id}\0{serial}").into_bytes()
}

pub struct Station {
    pub config: StationConfig,
    pub stock: Stock,
    kek: Option<Arc<Kek>>,
    /// Shared, so that a sweep can ask it without holding the station.
    pub(crate) policy: Arc<dyn RetentionPolicy>,
    today_override: Option<Date>,
    /// Seconds the retention clock runs ahead of the real one (tests only,
    /// see `station serve --clock-ahead`).
    clock_ahead: i64,
}

/// What an opened station directory gives.
pub struct Opened {
    pub station: Station,
    pub credential: Option<Credential>,
}

impl Station {
    /// Opens a station directory. With a passphrase the keys are unlocked
    /// first (a wrong one stops before the stock is touched); without one the
    /// station can do everything that needs no key (reports, discard, rework).
    pub fn open(dir: &Path, passphrase: Option<&str>) -> anyhow::Result<Opened> {
        let config = super::dir::read_config(dir)?;
        let (kek, credential) = match passphrase {
            Some(p) => {
                let (kek, cred) = super::dir::unlock(dir, p)?;
                (Some(Arc::new(kek)), Some(cred))
            }
            None => (None, None),
        };
        let stock = super::dir::open_stock(dir)?;
        let policy: Arc<dyn RetentionPolicy> = match &config.retention.script {
            Some(script) => Arc::new(super::retention::ScriptedPolicy::open(
                &dir.join(script),
                &config,
            )?),
            None => Arc::new(BuiltinPolicy::new(config.retention.clone())),
        };
        Ok(Opened {
            station: Station {
                config,
                stock,
                kek,
                policy,
                today_override: None,
                clock_ahead: 0,
            },
            credential,
        })
    }

    pub fn retention_policy_name(&self) -> String {
        self.policy.name()
    }

    /// Pretend today is `day` (demos and tests).
    pub fn set_today(&mut self, day: Option<Date>) {
        self.today_override = day;
    }

    /// Runs the retention clock `secs` ahead of the real one, so that a
    /// retention test sees a pack's age in days without waiting them. Only
    /// `station serve --clock-ahead ... --testing` sets it.
    pub fn set_clock_ahead(&mut self, secs: i64) {
        self.clock_ahead = secs;
    }

    /// Now for retention ages (Unix seconds): the real clock plus
    /// [`Self::set_clock_ahead`].
    pub fn retention_now(&self) -> i64 {
        crate::store::stock::now_unix() + self.clock_ahead
    }

    pub fn today(&self) -> Date {
        self.today_override.unwrap_or_else(|| self.config.today())
    }

    /// The key-encryption key (shared, so sealing can run outside the lock).
    pub fn kek(&self) -> anyhow::Result<Arc<Kek>> {
        self.kek
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the station was opened without its passphrase"))
    }

    pub(crate) fn open_key(&self, pack: &PackRow) -> anyhow::Result<Zeroizing<String>> {
        let kek = self.kek()?;
        let sealed = pack
            .sealed_key
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("pack {} holds no key", pack.serial))?;
        let plain = kek.open(
            sealed,
            &pack_aad(&pack.id, &pack.serial),
            &format!("the key of {} (serial {})", pack.id, pack.serial),
        )?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| anyhow::anyhow!("the key of {} is not PEM text", pack.id))?;
        Ok(Zeroizing::new(text))
    }

    pub(crate) fn quarantine(&mut self, pack: &PackRow, why: &str) -> anyhow::Result<()> {
        tracing::error!(id = %pack.id, serial = %pack.serial, "quarantined: {why}");
        let tx = self.stock.transaction()?;
        apply(
            &tx,
            pack,
            Event::Quarantine,
            &EventContext {
                actor: "station",
                at: now_unix(),
                reason: Some(why),
                ..Default::default()
            },
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Opens every stocked key once; rows that do not open are quarantined.
    pub fn verify_stock(&mut self) -> anyhow::Result<usize> {
        let mut quarantined = 0;
        for pack in self.stock.packs_in_state(PackState::Stocked)? {
            if let Err(err) = self.open_key(&pack) {
                self.quarantine(&pack, &format!("{err:#}"))?;
                quarantined += 1;
            }
        }
        Ok(quarantined)
    }

    pub fn checkpoint(&self) -> anyhow::Result<()> {
        self.stock.checkpoint()
    }
}
