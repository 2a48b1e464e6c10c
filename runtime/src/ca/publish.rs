//! CRL publication off the request path (issue 15).
//!
//! A revocation or a replacement commits its row and the ledger's revocation
//! count (one transaction, O(1)) and returns; it never waits for a CRL
//! signature. One publisher thread per serving CA re-signs the CRLs when the
//! ledger has revocations the stored CRL does not cover, at most once per
//! `crl_max_delay` (ca.toml), and when half a CRL's validity is gone. The
//! bytes it signs are kept in memory: `GET /v1/crl` is served from that copy,
//! never behind the CA's issuance lock. A CRL another process stored in the
//! same ledger (`ca revoke`, `ca crl --now`) is picked up by the next read.
//!
//! A crash between a revocation's commit and the publication loses nothing:
//! the stored CRL records the revocation count it covers, so the next start
//! (`dir::open`) or the publisher's next look sees it is behind and publishes.
//!
//! [`publish`] is the one place where CRLs are signed and stored; `ca init`,
//! the command line and the publisher thread all go through it.

use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::issuance::{Clock, SCOPE_ISSUING, SCOPE_ROOT};
use crate::pki::authority::Authority;
use crate::pki::crl::RevokedEntry;
use crate::store::db::time_text;
use crate::store::ledger::Ledger;

/// How often the publisher looks at the ledger when nothing woke it: a
/// revocation committed by another process, or a CRL it stored, is seen
/// within this.
const POLL: Duration = Duration::from_millis(200);

/// The entries the last CRL listed, kept between publications so that each
/// reads only the revocations committed since (the ledger stamps each
/// revoking transaction's rows with its number).
#[derive(Default)]
pub struct Listed {
    upto: Option<u64>,
    entries: Vec<RevokedEntry>,
}

impl Listed {
    /// Adds what the ledger revoked since the last call; returns the
    /// ledger's revocation count that the entries now cover. The count is
    /// read first: a revocation committed meanwhile is left for the next round.
    fn catch_up(&mut self, ledger: &Ledger) -> anyhow::Result<u64> {
        let upto = ledger.revocations()?;
        if self.upto != Some(upto) {
            let new = ledger.revoked_between(self.upto, upto)?;
            self.entries.extend(new);
            self.upto = Some(upto);
        }
        Ok(upto)
    }
}

/// Signs and stores fresh CRLs for both scopes, each with the next number,
/// covering every revocation the ledger had committed when it started.
pub fn publish(
    pki: &Authority,
    ledger: &mut Ledger,
    now: OffsetDateTime,
    validity: time::Duration,
) -> anyhow::Result<()> {
    publish_listed(pki, ledger, &mut Listed::default(), now, validity)
}

/// As [`publish`], reading only the revocations `listed` does not hold yet.
fn publish_listed(
    pki: &Authority,
    ledger: &mut Ledger,
    listed: &mut Listed,
    now: OffsetDateTime,
    validity: time::Duration,
) -> anyhow::Result<()> {
    let next_update = time_text(now + validity);
    let number = ledger.next_crl_number(SCOPE_ISSUING)?;
    // Read after the number is taken: on a ledger shared by several CA
    // processes, a CRL with a higher number then lists at least as much
    // (and the store keeps only the highest).
    let covers = listed.catch_up(ledger)?;
    let der = pki.issuing_crl(number, &listed.entries, now, validity)?;
    ledger.store_crl(SCOPE_ISSUING, number, &der, &next_update, covers)?;
    // Nothing revokes the issuing CA yet, so the root's list stays empty.
    let number = ledger.next_crl_number(SCOPE_ROOT)?;
    let der = pki.root_crl(number, &[], now, validity)?;
    ledger.store_crl(SCOPE_ROOT, number, &der, &next_update, covers)?;
    Ok(())
}

/// Whether the stored CRLs miss a committed revocation (or do not exist).
pub fn is_behind(ledger: &Ledger) -> anyhow::Result<bool> {
    let revocations = ledger.revocations()?;
    let issuing = ledger.crl_status(SCOPE_ISSUING)?;
    let root = ledger.crl_status(SCOPE_ROOT)?;
    Ok(match (issuing, root) {
        (Some(issuing), Some(_)) => issuing.covers.is_none_or(|c| c < revocations),
        _ => true,
    })
}

/// One published CRL, as served.
#[derive(Clone)]
pub struct Crl {
    pub number: u64,
    pub der: Arc<[u8]>,
    pub next_update: OffsetDateTime,
}

/// The CRLs being served: the issuing CA's and the root's.
#[derive(Clone)]
struct Current {
    issuing: Crl,
    root: Crl,
}

fn load_current(ledger: &Ledger) -> anyhow::Result<Option<Current>> {
    let load = |scope: &str| -> anyhow::Result<Option<Crl>> {
        Ok(match ledger.current_crl(scope)? {
            Some((number, der, next_update)) => Some(Crl {
                number,
                der: der.into(),
                next_update: crate::store::db::parse_time(&next_update)?,
            }),
            None => None,
        })
    };
    Ok(match (load(SCOPE_ISSUING)?, load(SCOPE_ROOT)?) {
        (Some(issuing), Some(root)) => Some(Current { issuing, root }),
        _ => None,
    })
}

/// The stored CRLs, if another process stored newer ones than `current`.
fn stored_if_newer(ledger: &Ledger, current: &Current) -> anyhow::Result<Option<Current>> {
    let stored = ledger.crl_status(SCOPE_ISSUING)?.map(|s| s.number);
    let stored_root = ledger.crl_status(SCOPE_ROOT)?.map(|s| s.number);
    if stored > Some(current.issuing.number) || stored_root > Some(current.root.number) {
        return load_current(ledger);
    }
    Ok(None)
}

struct Shared {
    current: RwLock<Current>,
    /// Set by [`Publisher::notify`] and on drop; the thread sleeps on `wake`.
    flags: Mutex<Flags>,
    wake: Condvar,
}

#[derive(Default)]
struct Flags {
    notified: bool,
    stop: bool,
}

impl Shared {
    fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, current: Current) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = current;
    }

    /// Sleeps up to `pause` or until notified; false once asked to stop.
    fn sleep(&self, pause: Duration) -> bool {
        let flags = self.flags.lock().unwrap_or_else(|p| p.into_inner());
        let (mut flags, _) = self
            .wake
            .wait_timeout_while(flags, pause, |f| !f.notified && !f.stop)
            .unwrap_or_else(|p| p.into_inner());
        flags.notified = false;
        !flags.stop
    }
}

/// What the publisher thread owns: the signer, its own ledger connection
/// (so it never takes the issuance lock), the clock and the policy.
struct Worker {
    pki: Arc<Authority>,
    ledger: Ledger,
    listed: Listed,
    clock: Clock,
    validity: time::Duration,
    max_delay: Duration,
}

impl Worker {
    /// Whether a publication is due: revocations not covered, or half the
    /// validity of the served CRL gone.
    fn due(&self, current: &Current) -> anyhow::Result<bool> {
        let left = current.issuing.next_update.min(current.root.next_update) - self.clock.now();
        Ok(left <= self.validity / 2 || is_behind(&self.ledger)?)
    }

    fn publish(&mut self) -> anyhow::Result<Current> {
        publish_listed(
            &self.pki,
            &mut self.ledger,
            &mut self.listed,
            self.clock.now(),
            self.validity,
        )?;
        load_current(&self.ledger)?
            .ok_or_else(|| anyhow::anyhow!("the CRLs just stored cannot be read back"))
    }

    fn run(mut self, shared: Arc<Shared>) {
        let mut last: Option<Instant> = None;
        loop {
            let mut pause = POLL;
            let current = shared.current();
            match self.due(&current) {
                Ok(true) => match last.map(|t| t.elapsed()) {
                    Some(since) if since < self.max_delay => {
                        pause = pause.min(self.max_delay - since);
                    }
                    _ => {
                        let started = Instant::now();
                        match self.publish() {
                            Ok(fresh) => {
                                tracing::info!(
                                    number = fresh.issuing.number,
                                    bytes = fresh.issuing.der.len(),
                                    ms = started.elapsed().as_millis() as u64,
                                    "published CRLs"
                                );
                                shared.set(fresh);
                            }
                            Err(e) => tracing::error!("CRL publication failed, will retry: {e:#}"),
                        }
                        last = Some(Instant::now());
                        continue;
                    }
                },
                Ok(false) => match stored_if_newer(&self.ledger, &current) {
                    Ok(Some(newer)) => shared.set(newer),
                    Ok(None) => {}
                    Err(e) => tracing::warn!("cannot read the stored CRLs: {e:#}"),
                },
                Err(e) => tracing::warn!("cannot tell whether the CRL is behind: {e:#}"),
            }
            if !shared.sleep(pause) {
                return;
            }
        }
    }
}

/// The serving CA's publisher thread and the CRLs it serves. Stops with its last owner.
pub struct Publisher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    max_delay: Duration,
}

impl Publisher {
    /// Starts the thread with its own connection to `ledger`'s database; the
    /// CRLs stored there (published at start if they were behind) are served
    /// until it signs fresh ones.
    pub fn start(
        pki: Arc<Authority>,
        ledger: &Ledger,
        clock: Clock,
        validity: time::Duration,
        max_delay: Duration,
    ) -> anyhow::Result<Publisher> {
        let mut worker = Worker {
            pki,
            ledger: ledger.reopen_for_crls()?,
            listed: Listed::default(),
            clock,
            validity,
            max_delay,
        };
        let current = match load_current(&worker.ledger)? {
            Some(current) => current,
            None => worker.publish()?,
        };
        let shared = Arc::new(Shared {
            current: RwLock::new(current),
            flags: Mutex::new(Flags::default()),
            wake: Condvar::new(),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("crl-publisher".into())
            .spawn(move || worker.run(for_thread))?;
        Ok(Publisher {
            shared,
            thread: Some(thread),
            max_delay,
        })
    }

    /// A revocation was committed: publish within `crl_max_delay`.
    pub fn notify(&self) {
        let mut flags = self.shared.flags.lock().unwrap_or_else(|p| p.into_inner());
        flags.notified = true;
        self.shared.wake.notify_one();
    }

    /// The CRL of a scope as last published (no lock but a read of the copy).
    pub fn crl(&self, scope: &str) -> Crl {
        let current = self.shared.current();
        if scope == SCOPE_ROOT {
            current.root
        } else {
            current.issuing
        }
    }

    /// Takes CRLs stored by another process if they are newer than the copy served.
    pub fn catch_up(&self, reader: &Ledger) -> anyhow::Result<()> {
        if let Some(newer) = stored_if_newer(reader, &self.shared.current())? {
            let mut slot = self
                .shared
                .current
                .write()
                .unwrap_or_else(|p| p.into_inner());
            // The publisher thread may have set a newer one meanwhile.
            if newer.issuing.number >= slot.issuing.number && newer.root.number >= slot.root.number
            {
                *slot = newer;
            }
        }
        Ok(())
    }

    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shared
            .flags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
