//! CRL publication off the request path (issue 15).
//!
//! A revocation or a replacement commits its row and the ledger's revocation
//! count (one transaction, O(1)) and returns; it never waits for a CRL
//! signature. One publisher thread per serving CA re-signs the CRLs that
//! miss a committed revocation, at most once per `crl_max_delay` (ca.toml),
//! and each CRL when half its validity is gone. The bytes it signs are kept
//! in memory: `GET /v1/crl…` is served from that copy, never behind the CA's
//! issuance lock. A CRL another process stored in the same ledger
//! (`ca revoke`, `ca crl --now`) is picked up by the next read.
//!
//! **Partitions.** With a `crl_url` in ca.toml the issuing CA's CRL is split
//! ([`Partitioning`], `pki::crl`): device certificates by issuance month,
//! each partition a CRL of its own whose issuingDistributionPoint names the
//! URL the certificates' CDP carries; the base CRL (at `crl_url` itself)
//! keeps service credentials and certificates from before partitions. A
//! revocation re-signs only its certificate's partition, whose size is
//! bounded by one month's issuance, never the whole history. Without a
//! `crl_url` there is nothing a certificate could name a partition by: one
//! CRL lists everything.
//!
//! A crash between a revocation's commit and the publication loses nothing:
//! each stored CRL records the revocation count it covers, and every
//! revocation row its count, so the next start (`dir::open`) or the
//! publisher's next look finds the partitions that are behind and signs them.
//!
//! [`publish_all`] and [`publish_behind`] are the one place where CRLs are
//! signed and stored; `ca init`, the command line and the publisher thread
//! all go through them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::issuance::{Clock, SCOPE_ROOT};
use crate::pki::authority::Authority;
use crate::pki::urls;
use crate::store::db::time_text;
use crate::store::ledger::{crl_partition_of_scope, crl_scope, Ledger};

/// How often the publisher looks at the ledger when nothing woke it: a
/// revocation committed by another process, or a CRL it stored, is seen
/// within this.
const POLL: Duration = Duration::from_millis(200);

/// How the issuing CA's CRL is split, from ca.toml's `crl_url`.
#[derive(Debug, Clone, Default)]
pub struct Partitioning {
    pub crl_url: Option<String>,
}

impl Partitioning {
    /// The URL a CRL of `partition` (None: the base) is published at and
    /// names in its issuingDistributionPoint; None without a `crl_url`.
    pub fn url(&self, partition: Option<&str>) -> Option<String> {
        let base = self.crl_url.as_ref()?;
        Some(match partition {
            Some(p) => urls::partition_url(base, p),
            None => base.clone(),
        })
    }
}

/// The issuing CA's CRLs that a publication must sign.
#[derive(Debug, Default)]
struct Behind {
    /// The ledger's revocation count when it was looked at: what they will cover.
    upto: u64,
    /// The partitions (None: the base) missing a revocation, or never published.
    partitions: BTreeSet<Option<String>>,
    /// The scopes whose stored CRL is up to date through `upto`.
    current: Vec<String>,
    /// The root's CRL was never published.
    root: bool,
}

impl Behind {
    fn is_empty(&self) -> bool {
        self.partitions.is_empty() && !self.root
    }
}

/// Which CRLs miss a committed revocation or were never published. Reads
/// the CRL scopes (one row each) and the partitions of the revocations after
/// the lowest coverage among them (nothing, when the CRLs are up to date).
fn behind(ledger: &Ledger) -> anyhow::Result<Behind> {
    let upto = ledger.revocations()?;
    let mut found = Behind {
        upto,
        root: ledger.crl_status(SCOPE_ROOT)?.is_none(),
        ..Behind::default()
    };
    // The lowest coverage among the stored CRLs (Some(None): one from before
    // coverage was recorded; None: none stored, so every revocation counts).
    let mut lowest: Option<Option<u64>> = None;
    let mut base = false;
    for (scope, status) in ledger.issuing_crl_scopes()? {
        let Some(partition) = crl_partition_of_scope(&scope) else {
            continue;
        };
        base |= partition.is_none() && status.is_some();
        match status {
            None => {
                found.partitions.insert(partition.map(str::to_string));
            }
            Some(status) => {
                lowest = Some(match (lowest, status.covers) {
                    (None, covers) => covers,
                    (Some(Some(a)), Some(b)) => Some(a.min(b)),
                    _ => None,
                });
                found.current.push(scope);
            }
        }
    }
    if !base {
        found.partitions.insert(None);
    }
    let after = lowest.flatten();
    if after != Some(upto) {
        for partition in ledger.revoked_partitions_between(after, upto)? {
            found.partitions.insert(partition);
        }
    }
    found
        .current
        .retain(|scope| match crl_partition_of_scope(scope) {
            Some(p) => !found.partitions.contains(&p.map(str::to_string)),
            None => false,
        });
    Ok(found)
}

/// Whether a stored CRL misses a committed revocation (or one was never published).
pub fn is_behind(ledger: &Ledger) -> anyhow::Result<bool> {
    Ok(!behind(ledger)?.is_empty())
}

/// What a publication signed.
#[derive(Debug, Default)]
pub struct Signed {
    /// The issuing CA's CRLs signed (base and partitions).
    pub crls: usize,
    /// Revocation entries they list, all together.
    pub entries: usize,
    /// The scopes signed (the root's included when it was).
    pub scopes: Vec<String>,
}

/// Signs one CRL of the issuing CA (a partition, or the base with None)
/// with the next number of its scope, listing every revocation of that
/// partition and nothing else; returns how many entries it lists.
fn sign_issuing(
    pki: &Authority,
    ledger: &mut Ledger,
    parts: &Partitioning,
    partition: Option<&str>,
    now: OffsetDateTime,
    validity: time::Duration,
    covers: u64,
) -> anyhow::Result<usize> {
    let scope = crl_scope(partition);
    let number = ledger.next_crl_number(&scope)?;
    // Read after the number is taken: on a ledger shared by several CA
    // processes, a CRL with a higher number then lists at least as much
    // (and the store keeps only the highest).
    let entries = ledger.revoked_in_partition(partition)?;
    let der = pki.issuing_crl(
        number,
        &entries,
        now,
        validity,
        parts.url(partition).as_deref(),
    )?;
    ledger.store_crl(&scope, number, &der, &time_text(now + validity), covers)?;
    Ok(entries.len())
}

fn sign_root(
    pki: &Authority,
    ledger: &mut Ledger,
    now: OffsetDateTime,
    validity: time::Duration,
    covers: u64,
) -> anyhow::Result<()> {
    // Nothing revokes the issuing CA yet, so the root's list stays empty.
    let number = ledger.next_crl_number(SCOPE_ROOT)?;
    let der = pki.root_crl(number, &[], now, validity)?;
    ledger.store_crl(SCOPE_ROOT, number, &der, &time_text(now + validity), covers)
}

/// Signs the CRLs that are behind, plus `also` (scopes whose CRL is ageing),
/// and records that the others are current through the same count.
fn publish_round(
    pki: &Authority,
    ledger: &mut Ledger,
    parts: &Partitioning,
    now: OffsetDateTime,
    validity: time::Duration,
    also: &[String],
) -> anyhow::Result<Signed> {
    let mut todo = behind(ledger)?;
    let mut root = todo.root;
    for scope in also {
        match crl_partition_of_scope(scope) {
            Some(partition) => {
                todo.partitions.insert(partition.map(str::to_string));
            }
            None => root |= scope == SCOPE_ROOT,
        }
    }
    let mut signed = Signed::default();
    for partition in &todo.partitions {
        signed.entries += sign_issuing(
            pki,
            ledger,
            parts,
            partition.as_deref(),
            now,
            validity,
            todo.upto,
        )?;
        signed.crls += 1;
        signed.scopes.push(crl_scope(partition.as_deref()));
    }
    if root {
        sign_root(pki, ledger, now, validity, todo.upto)?;
        signed.scopes.push(SCOPE_ROOT.to_string());
    }
    let current: Vec<String> = todo
        .current
        .into_iter()
        .filter(|scope| !also.contains(scope))
        .collect();
    ledger.set_crl_covers(&current, todo.upto)?;
    Ok(signed)
}

/// Signs and stores every CRL afresh (each partition, the base and the
/// root, each with the next number of its scope): `ca init`, `ca crl --now`.
pub fn publish_all(
    pki: &Authority,
    ledger: &mut Ledger,
    parts: &Partitioning,
    now: OffsetDateTime,
    validity: time::Duration,
) -> anyhow::Result<Signed> {
    let mut every: Vec<String> = ledger
        .issuing_crl_scopes()?
        .into_iter()
        .map(|(scope, _)| scope)
        .collect();
    every.push(crl_scope(None));
    every.push(SCOPE_ROOT.to_string());
    publish_round(pki, ledger, parts, now, validity, &every)
}

/// Signs and stores the CRLs that miss a committed revocation (or were
/// never published); nothing when none does.
pub fn publish_behind(
    pki: &Authority,
    ledger: &mut Ledger,
    parts: &Partitioning,
    now: OffsetDateTime,
    validity: time::Duration,
) -> anyhow::Result<Signed> {
    publish_round(pki, ledger, parts, now, validity, &[])
}

/// One published CRL, as served.
#[derive(Clone)]
pub struct Crl {
    /// The CRL number its DER carries.
    pub number: u64,
    pub der: Arc<[u8]>,
    pub next_update: OffsetDateTime,
    /// The scope's number in the ledger when it was read: a publisher takes
    /// the next number in one transaction and stores the CRL in another, so
    /// in between the ledger's number runs ahead of the DER it holds.
    seen: u64,
}

/// The CRLs being served, by scope (`issuing`, `issuing:<partition>`, `root`).
type Current = HashMap<String, Crl>;

/// The CRL stored for a scope, numbered by what its DER says (see [`Crl::seen`]).
fn load_crl(ledger: &Ledger, scope: &str) -> anyhow::Result<Option<Crl>> {
    Ok(match ledger.current_crl(scope)? {
        Some((seen, der, next_update)) => Some(Crl {
            number: crate::pki::crl::crl_header(&der)?.number,
            der: der.into(),
            next_update: crate::store::db::parse_time(&next_update)?,
            seen,
        }),
        None => None,
    })
}

/// The number of every stored CRL, by scope.
fn stored_numbers(ledger: &Ledger) -> anyhow::Result<Vec<(String, u64)>> {
    let mut numbers: Vec<(String, u64)> = ledger
        .issuing_crl_scopes()?
        .into_iter()
        .filter_map(|(scope, status)| status.map(|s| (scope, s.number)))
        .collect();
    if let Some(root) = ledger.crl_status(SCOPE_ROOT)? {
        numbers.push((SCOPE_ROOT.to_string(), root.number));
    }
    Ok(numbers)
}

/// Every stored CRL newer than (or missing from) `current`.
fn stored_if_newer(ledger: &Ledger, current: &Current) -> anyhow::Result<Vec<(String, Crl)>> {
    let mut newer = Vec::new();
    for (scope, number) in stored_numbers(ledger)? {
        if current.get(&scope).is_none_or(|c| c.seen < number) {
            if let Some(crl) = load_crl(ledger, &scope)? {
                newer.push((scope, crl));
            }
        }
    }
    Ok(newer)
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
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes CRLs newer than the ones served (the publisher thread or a
    /// reader may have set newer ones meanwhile: never goes back).
    fn take(&self, fresh: Vec<(String, Crl)>) {
        if fresh.is_empty() {
            return;
        }
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        for (scope, crl) in fresh {
            match current.get_mut(&scope) {
                Some(held) if held.number >= crl.number => held.seen = held.seen.max(crl.seen),
                _ => {
                    current.insert(scope, crl);
                }
            }
        }
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
    parts: Partitioning,
    clock: Clock,
    validity: time::Duration,
    max_delay: Duration,
}

impl Worker {
    /// The served scopes with half their validity gone.
    fn ageing(&self, current: &Current) -> Vec<String> {
        let now = self.clock.now();
        current
            .iter()
            .filter(|(_, crl)| crl.next_update - now <= self.validity / 2)
            .map(|(scope, _)| scope.clone())
            .collect()
    }

    fn publish(&mut self, also: &[String]) -> anyhow::Result<(Signed, Vec<(String, Crl)>)> {
        let signed = publish_round(
            &self.pki,
            &mut self.ledger,
            &self.parts,
            self.clock.now(),
            self.validity,
            also,
        )?;
        // Only what was signed is read back: the other CRLs did not change.
        let mut fresh = Vec::with_capacity(signed.scopes.len());
        for scope in &signed.scopes {
            if let Some(crl) = load_crl(&self.ledger, scope)? {
                fresh.push((scope.clone(), crl));
            }
        }
        Ok((signed, fresh))
    }

    fn run(mut self, shared: Arc<Shared>) {
        let mut last: Option<Instant> = None;
        loop {
            // Within `crl_max_delay` of the last publication nothing can be
            // signed: wait out the rest without looking at the ledger. (Each
            // revocation wakes the thread; looking costs a read per stored
            // CRL, which made every revoke of a storm pay for every partition.)
            if let Some(since) = last.map(|t| t.elapsed()) {
                if since < self.max_delay {
                    if !shared.sleep(self.max_delay - since) {
                        return;
                    }
                    continue;
                }
            }
            let mut pause = POLL;
            let ageing = self.ageing(&shared.read());
            match is_behind(&self.ledger).map(|behind| behind || !ageing.is_empty()) {
                Ok(true) => match last.map(|t| t.elapsed()) {
                    Some(since) if since < self.max_delay => {
                        pause = pause.min(self.max_delay - since);
                    }
                    _ => {
                        let started = Instant::now();
                        match self.publish(&ageing) {
                            Ok((signed, fresh)) => {
                                tracing::info!(
                                    crls = signed.crls,
                                    entries = signed.entries,
                                    ms = started.elapsed().as_millis() as u64,
                                    "published CRLs"
                                );
                                shared.take(fresh);
                            }
                            Err(e) => tracing::error!("CRL publication failed, will retry: {e:#}"),
                        }
                        last = Some(Instant::now());
                        continue;
                    }
                },
                Ok(false) => {
                    let newer = stored_if_newer(&self.ledger, &shared.read());
                    match newer {
                        Ok(newer) => shared.take(newer),
                        Err(e) => tracing::warn!("cannot read the stored CRLs: {e:#}"),
                    }
                }
                Err(e) => tracing::warn!("cannot tell whether the CRLs are behind: {e:#}"),
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
    parts: Partitioning,
}

impl Publisher {
    /// Starts the thread with its own connection to `ledger`'s database; the
    /// CRLs stored there (the missing ones signed first) are served until it
    /// signs fresh ones.
    pub fn start(
        pki: Arc<Authority>,
        ledger: &Ledger,
        parts: Partitioning,
        clock: Clock,
        validity: time::Duration,
        max_delay: Duration,
    ) -> anyhow::Result<Publisher> {
        let mut worker = Worker {
            pki,
            ledger: ledger.reopen_for_crls()?,
            parts: parts.clone(),
            clock,
            validity,
            max_delay,
        };
        let mut current = Current::new();
        if stored_numbers(&worker.ledger)?.is_empty() {
            worker.publish(&[])?;
        }
        for (scope, crl) in stored_if_newer(&worker.ledger, &current)? {
            current.insert(scope, crl);
        }
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
            parts,
        })
    }

    /// A revocation was committed: publish within `crl_max_delay`.
    pub fn notify(&self) {
        let mut flags = self.shared.flags.lock().unwrap_or_else(|p| p.into_inner());
        flags.notified = true;
        self.shared.wake.notify_one();
    }

    /// The CRL of a scope as last published (no lock but a read of the copy).
    pub fn crl(&self, scope: &str) -> Option<Crl> {
        self.shared.read().get(scope).cloned()
    }

    /// Every CRL served, by scope, with its number (scopes sorted).
    pub fn numbers(&self) -> Vec<(String, u64)> {
        let mut numbers: Vec<(String, u64)> = self
            .shared
            .read()
            .iter()
            .map(|(scope, crl)| (scope.clone(), crl.number))
            .collect();
        numbers.sort();
        numbers
    }

    /// Takes the CRL of `scope` stored by another process if it is newer
    /// than the copy served (one single-row read when it is not).
    pub fn catch_up(&self, reader: &Ledger, scope: &str) -> anyhow::Result<()> {
        let stored = reader.crl_status(scope)?.map(|s| s.number);
        let held = self.shared.read().get(scope).map(|c| c.seen);
        if stored > held {
            if let Some(crl) = load_crl(reader, scope)? {
                self.shared.take(vec![(scope.to_string(), crl)]);
            }
        }
        Ok(())
    }

    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    pub fn partitioning(&self) -> &Partitioning {
        &self.parts
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
