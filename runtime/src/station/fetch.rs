//! Everything the station asks of the CA: the day's fetch (one batch request
//! per chunk, resumable) and the durable queue of revocations and
//! replacements. The station lock is never held across a network call.
//!
//! Resuming safely: before each chunk the station looks up which of its ids
//! already have a valid certificate at the CA (a response lost to a crash or
//! a cut connection); those are asked for with `replaces`, so the unknown
//! certificate is revoked in the same CA transaction that issues the new one
//! and no id ever has two valid certificates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::Date;

use super::config::day_text;
use super::failpoint::point;
use super::station::pack_aad;
use super::Station;
use crate::pki::credential::Credential;
use crate::pki::crl::Reason;
use crate::pki::profile::Keygen;
use crate::pki::seal::Kek;
use crate::pki::{fingerprint, pem_blocks};
use crate::service::client::{ClientError, ServiceClient};
use crate::store::stock::{now_unix, NewPack, QueueKind, QueueRow, Stock};
use crate::wire::ca::{
    self as api, codes, BatchItem, BatchRequest, LookupRequest, LookupResponse, PackBatch,
    ReplaceRequest, RevokeRequest, Revoked,
};
pub use crate::wire::station::{FetchReport, QueueRun};

pub type Shared = Arc<Mutex<Station>>;

/// Runs `work` on the station off the async executor.
pub async fn blocking<T: Send + 'static>(
    shared: &Shared,
    work: impl FnOnce(&mut Station) -> T + Send + 'static,
) -> anyhow::Result<T> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut station = shared.lock().unwrap_or_else(|p| p.into_inner());
        work(&mut station)
    })
    .await
    .map_err(|e| anyhow::anyhow!("station worker failed: {e}"))
}

/// The station's connection to its CA.
#[derive(Clone)]
pub struct CaLink {
    client: ServiceClient,
    root_der: Vec<u8>,
}

impl CaLink {
    pub fn new(url: &str, credential: &Credential) -> anyhow::Result<CaLink> {
        Ok(CaLink {
            client: ServiceClient::new(
                url,
                credential,
                crate::pki::role::Role::Ca,
                Duration::from_secs(600),
            )?,
            root_der: credential.root.to_vec(),
        })
    }

    /// The CA's current CRL (DER), unverified: [`super::crl::CrlCache`] checks it.
    pub async fn crl(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.client.get_bytes(crate::wire::ca::CRL).await?)
    }

    pub fn url(&self) -> &str {
        self.client.base()
    }

    pub fn client(&self) -> &ServiceClient {
        &self.client
    }
}

/// A chunk checked and sealed, ready to store.
struct Ready {
    root_pem: String,
    issuing_pem: String,
    packs: Vec<NewPack>,
}

/// Checks that a batch is exactly what was asked for, from our CA, and seals
/// each key under the KEK bound to its id and serial.
fn check_and_seal(
    asked: &[BatchItem],
    batch: PackBatch,
    root_der: &[u8],
    kek: &Kek,
) -> anyhow::Result<Ready> {
    let bad = |what: String| anyhow::anyhow!("the CA's answer does not check out: {what}");
    if batch.packs.len() != asked.len() {
        return Err(bad(format!(
            "{} packs for {} ids",
            batch.packs.len(),
            asked.len()
        )));
    }
    let root = pem_blocks(&batch.root_pem, "CERTIFICATE").map_err(|e| bad(format!("root: {e}")))?;
    if root.first().map(Vec::as_slice) != Some(root_der) {
        return Err(bad(
            "it names another root CA than this station trusts".into()
        ));
    }
    let wanted: HashMap<&str, Option<&str>> = asked
        .iter()
        .map(|i| (i.id.as_str(), i.replaces.as_deref()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut packs = Vec::with_capacity(batch.packs.len());
    for issued in &batch.packs {
        let Some(replaces) = wanted.get(issued.id.as_str()) else {
            return Err(bad(format!(
                "a pack for {}, which was not asked for",
                issued.id
            )));
        };
        if !seen.insert(issued.id.as_str()) {
            return Err(bad(format!("two packs for {}", issued.id)));
        }
        let der = pem_blocks(&issued.cert_pem, "CERTIFICATE")
            .ok()
            .and_then(|mut c| {
                if c.is_empty() {
                    None
                } else {
                    Some(c.remove(0))
                }
            })
            .ok_or_else(|| bad(format!("the pack for {} has no certificate", issued.id)))?;
        let identity = crate::pki::identity::device_identity(&der)
            .map_err(|e| bad(format!("the certificate for {}: {e:#}", issued.id)))?;
        if identity.id.to_string() != issued.id {
            return Err(bad(format!(
                "the certificate for {} names {}",
                issued.id, identity.id
            )));
        }
        if identity.serial_hex != issued.serial.to_ascii_lowercase() {
            return Err(bad(format!(
                "the serial of {}'s certificate is not {}",
                issued.id, issued.serial
            )));
        }
        if fingerprint(&der) != issued.fingerprint {
            return Err(bad(format!(
                "the fingerprint of {}'s certificate is wrong",
                issued.id
            )));
        }
        if pem_blocks(&issued.key_pem, "PRIVATE KEY")
            .map(|k| k.len())
            .unwrap_or(0)
            != 1
        {
            return Err(bad(format!(
                "the pack for {} holds no private key",
                issued.id
            )));
        }
        let serial = identity.serial_hex;
        let sealed_key = kek.seal(issued.key_pem.as_bytes(), &pack_aad(&issued.id, &serial));
        packs.push(NewPack {
            model: identity.id.model().to_string(),
            id: issued.id.clone(),
            serial,
            fingerprint: issued.fingerprint.clone(),
            cert_pem: issued.cert_pem.clone(),
            sealed_key: Some(sealed_key),
            replaces: replaces.map(str::to_string),
            device_key: false,
        });
    }
    Ok(Ready {
        root_pem: batch.root_pem,
        issuing_pem: batch.issuing_pem,
        packs,
    })
}

/// Asks the CA for one pack per id (with `replaces` for ids that turn out to
/// hold a certificate the stock does not know) and checks the answer.
async fn issue(
    ca: &CaLink,
    kek: Arc<Kek>,
    ids: &[String],
    profiles: BTreeMap<String, crate::pki::profile::CertProfile>,
    replaces: &HashMap<String, String>,
) -> anyhow::Result<(Vec<BatchItem>, Ready)> {
    let live: LookupResponse = ca
        .client
        .post(api::LOOKUP, &LookupRequest { ids: ids.to_vec() })
        .await?;
    let mut live: HashMap<String, String> =
        live.live.into_iter().map(|l| (l.id, l.serial)).collect();
    let items: Vec<BatchItem> = ids
        .iter()
        .map(|id| BatchItem {
            id: id.clone(),
            replaces: live.remove(id).or_else(|| replaces.get(id).cloned()),
        })
        .collect();
    let request = BatchRequest {
        items: items.clone(),
        profiles,
    };
    let batch: PackBatch = ca.client.post(api::PACKS, &request).await?;
    let root = ca.root_der.clone();
    let asked = items.clone();
    let ready = tokio::task::spawn_blocking(move || check_and_seal(&asked, batch, &root, &kek))
        .await
        .map_err(|e| anyhow::anyhow!("sealing failed: {e}"))??;
    Ok((items, ready))
}

/// The fetch for `days`: every planned id of a certificate model that has no
/// pack yet, in chunks, each stored in one transaction as soon as it arrives.
pub async fn fetch(
    shared: &Shared,
    ca: &CaLink,
    days: &[Date],
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> anyhow::Result<FetchReport> {
    let days_text: Vec<String> = days.iter().map(|d| day_text(*d)).collect();
    let wanted_days = days_text.clone();
    let (targets, report, chunk, profiles, kek) = blocking(shared, move |station| {
        let mut report = FetchReport {
            days: wanted_days.clone(),
            ..Default::default()
        };
        let mut ids = Vec::new();
        let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
        let mut device_keygen: BTreeMap<String, usize> = BTreeMap::new();
        for day in &wanted_days {
            for row in station.stock.plan_between(day, day)? {
                if !station.config.carries_certificate(&row.model) {
                    *skipped.entry(row.model).or_default() += 1;
                } else if station.config.keygen(&row.model) == Keygen::Device {
                    // Signed when the device is on the line (its CSR); nothing to fetch.
                    *device_keygen.entry(row.model).or_default() += 1;
                } else if !row.discarded {
                    ids.push(row.id);
                }
            }
        }
        for (model, n) in skipped {
            report.notes.push(format!(
                "model {model}: {n} planned id(s) carry no certificate; skipped"
            ));
        }
        for (model, n) in device_keygen {
            report.notes.push(format!(
                "model {model}: {n} planned id(s) generate their key in the device; signed on the line, not fetched"
            ));
        }
        report.planned = ids.len();
        let covered = station.stock.covered_ids(&ids)?;
        report.already_in_stock = covered.len();
        let targets: Vec<String> = ids.into_iter().filter(|id| !covered.contains(id)).collect();
        let profiles: BTreeMap<String, crate::pki::profile::CertProfile> = station
            .config
            .models
            .iter()
            .filter(|(_, m)| m.certificate)
            .map(|(code, m)| (code.clone(), m.profile.clone()))
            .collect();
        anyhow::Ok((
            targets,
            report,
            station.config.chunk_size,
            profiles,
            station.kek()?,
        ))
    })
    .await??;
    let mut report = report;
    let total = targets.len();
    progress(0, total);
    let mut done = 0;
    // One chunk in flight at the CA while the previous one is checked and
    // stored: the CA signs while the station seals and commits.
    let chunks: Vec<Vec<String>> = targets
        .chunks(chunk.max(1))
        .map(<[String]>::to_vec)
        .collect();
    let start = |part: Vec<String>| {
        let models: std::collections::BTreeSet<String> = part
            .iter()
            .filter_map(|id| id.split('-').next().map(str::to_string))
            .collect();
        let chunk_profiles = profiles
            .iter()
            .filter(|(m, _)| models.contains(m.as_str()))
            .map(|(m, p)| (m.clone(), p.clone()))
            .collect();
        let ca = ca.clone();
        let kek = kek.clone();
        tokio::spawn(async move { issue(&ca, kek, &part, chunk_profiles, &HashMap::new()).await })
    };
    let mut chunks = chunks.into_iter();
    let mut in_flight = chunks.next().map(&start);
    while let Some(current) = in_flight.take() {
        in_flight = chunks.next().map(&start);
        let answered = current
            .await
            .map_err(|e| anyhow::anyhow!("the request task failed: {e}"))
            .and_then(|r| r);
        let (items, ready) = match answered {
            Ok(answer) => answer,
            Err(e) => {
                if let Some(next) = in_flight.take() {
                    next.abort();
                }
                return Err(anyhow::anyhow!(
                    "{e:#}\n{done} of {total} packs are in stock; nothing of the failed chunk was stored. Run the fetch again to complete it."
                ));
            }
        };
        point("fetch-before-store");
        let count = ready.packs.len();
        blocking(shared, move |station| {
            let tx = station.stock.transaction()?;
            Stock::stock_packs(
                &tx,
                &ready.root_pem,
                &ready.issuing_pem,
                &ready.packs,
                "station",
                "fetch",
            )?;
            tx.commit()?;
            anyhow::Ok(())
        })
        .await??;
        report.superseded_unknown += items.iter().filter(|i| i.replaces.is_some()).count();
        report.fetched += count;
        report.chunks += 1;
        done += count;
        progress(done, total);
        point("fetch-after-store");
    }
    Ok(report)
}

fn backoff(attempts: i64) -> i64 {
    (5i64 << attempts.clamp(0, 6)).min(300)
}

/// Sends the queued revocations and replacements that are due. Stops at the
/// first item that cannot reach the CA (the rest wait for the next run).
pub async fn work_queue(shared: &Shared, ca: &CaLink, all: bool) -> anyhow::Result<QueueRun> {
    let now = now_unix();
    let due = blocking(shared, move |s| {
        if all {
            s.stock.queue_retry_now()?;
        }
        s.stock.queue_due(now)
    })
    .await??;
    let mut run = QueueRun::default();
    for item in due {
        let result = match item.kind {
            QueueKind::Replace => replace(shared, ca, &item).await,
            QueueKind::Revoke => revoke(shared, ca, &item).await,
        };
        match result {
            Ok(()) => run.done += 1,
            Err(err) => {
                run.failed += 1;
                let text = format!("{err:#}");
                run.errors
                    .push(format!("{} {} {}: {text}", item.kind, item.id, item.serial));
                let unreachable = err
                    .downcast_ref::<ClientError>()
                    .is_some_and(|e| matches!(e, ClientError::Unreachable { .. }));
                let (seq, next) = (item.seq, now_unix() + backoff(item.attempts));
                blocking(shared, move |s| {
                    s.stock.queue_attempt_failed(seq, &text, next)
                })
                .await??;
                if unreachable {
                    break;
                }
            }
        }
    }
    run.waiting = blocking(shared, |s| s.stock.queue().map(|q| q.len())).await??;
    Ok(run)
}

async fn revoke_at_ca(ca: &CaLink, serial: &str, reason: Reason) -> anyhow::Result<()> {
    let request = RevokeRequest {
        serial: Some(serial.to_string()),
        id: None,
        reason,
    };
    match ca.client.post::<_, Revoked>(api::REVOKE, &request).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(codes::ALREADY_REVOKED) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn revoke(shared: &Shared, ca: &CaLink, item: &QueueRow) -> anyhow::Result<()> {
    let reason = Reason::parse(&item.reason).unwrap_or(Reason::Unspecified);
    revoke_at_ca(ca, &item.serial, reason).await?;
    point("queue-after-ca");
    let item = item.clone();
    blocking(shared, move |s| {
        let tx = s.stock.transaction()?;
        Stock::queue_done(
            &tx,
            &item,
            "station",
            serde_json::json!({"reason": item.reason}),
        )?;
        tx.commit()?;
        anyhow::Ok(())
    })
    .await?
}

/// Revokes the item's certificate and stocks a fresh pack for its id. A
/// superseded certificate goes in one CA call (`/v1/replace`); another reason
/// (a quarantined key: key-compromise) is revoked first, then re-issued.
async fn replace(shared: &Shared, ca: &CaLink, item: &QueueRow) -> anyhow::Result<()> {
    let id = item.id.clone();
    let (profile, kek, live) = blocking(shared, move |s| {
        let profile = s
            .config
            .model(id.split('-').next().unwrap_or(""))
            .map(|m| m.profile.clone());
        anyhow::Ok((profile, s.kek()?, s.stock.live_pack(&id)?.is_some()))
    })
    .await??;
    let ready = if live {
        // Something else already gave the id a pack: nothing left to replace.
        None
    } else if item.reason == Reason::Superseded.name() {
        let request = ReplaceRequest {
            id: item.id.clone(),
            replaces: item.serial.clone(),
            profile: profile.clone(),
        };
        match ca.client.post::<_, PackBatch>(api::REPLACE, &request).await {
            Ok(batch) => {
                let asked = vec![BatchItem {
                    id: item.id.clone(),
                    replaces: Some(item.serial.clone()),
                }];
                let root = ca.root_der.clone();
                let kek = kek.clone();
                Some(
                    tokio::task::spawn_blocking(move || check_and_seal(&asked, batch, &root, &kek))
                        .await
                        .map_err(|e| anyhow::anyhow!("sealing failed: {e}"))??,
                )
            }
            // The certificate was already replaced (an answer lost on the way)
            // or revoked at the CA: look up what is live and go from there.
            Err(e)
                if matches!(
                    e.code(),
                    Some(
                        codes::REPLACE_MISMATCH
                            | codes::NO_VALID_CERTIFICATE
                            | codes::UNKNOWN_SERIAL
                            | codes::ALREADY_REVOKED
                    )
                ) =>
            {
                Some(reissue(ca, kek, item, profile).await?)
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        let reason = Reason::parse(&item.reason).unwrap_or(Reason::Unspecified);
        revoke_at_ca(ca, &item.serial, reason).await?;
        Some(reissue(ca, kek, item, profile).await?)
    };
    let item = item.clone();
    blocking(shared, move |s| {
        let tx = s.stock.transaction()?;
        let mut detail = serde_json::json!({"reason": item.reason});
        if let Some(ready) = &ready {
            let mut packs = ready.packs.iter().map(|p| NewPack {
                id: p.id.clone(),
                model: p.model.clone(),
                serial: p.serial.clone(),
                fingerprint: p.fingerprint.clone(),
                cert_pem: p.cert_pem.clone(),
                sealed_key: p.sealed_key.clone(),
                replaces: Some(item.serial.clone()),
                device_key: false,
            });
            let packs: Vec<NewPack> = packs.by_ref().collect();
            detail["new_serial"] = packs.first().map(|p| p.serial.clone()).into();
            Stock::stock_packs(
                &tx,
                &ready.root_pem,
                &ready.issuing_pem,
                &packs,
                "station",
                "replacement",
            )?;
        }
        Stock::queue_done(&tx, &item, "station", detail)?;
        tx.commit()?;
        point("replace-after-commit");
        anyhow::Ok(())
    })
    .await?
}

async fn reissue(
    ca: &CaLink,
    kek: Arc<Kek>,
    item: &QueueRow,
    profile: Option<crate::pki::profile::CertProfile>,
) -> anyhow::Result<Ready> {
    let mut profiles = BTreeMap::new();
    if let Some(p) = profile {
        profiles.insert(item.model.clone(), p);
    }
    let (_, ready) = issue(
        ca,
        kek,
        std::slice::from_ref(&item.id),
        profiles,
        &HashMap::new(),
    )
    .await?;
    Ok(ready)
}

/// Certificates the CA holds valid for planned ids whose pack never reached
/// the stock (a fetch interrupted between the CA's answer and the commit):
/// each is queued for revocation, durably, and the queue sends it. Run by
/// `serve` at start, with the fetch lock held so that no fetch is between
/// those two steps meanwhile. Returns how many were queued.
pub async fn revoke_orphans(shared: &Shared, ca: &CaLink) -> anyhow::Result<usize> {
    let (ids, chunk) = blocking(shared, |s| {
        let rows = s.stock.plan_between("0000-01-01", "9999-12-31")?;
        let ids: Vec<String> = rows
            .into_iter()
            .filter(|r| s.config.carries_certificate(&r.model))
            .map(|r| r.id)
            .collect();
        let covered = s.stock.covered_ids(&ids)?;
        let open: Vec<String> = ids.into_iter().filter(|id| !covered.contains(id)).collect();
        anyhow::Ok((open, s.config.chunk_size.max(1)))
    })
    .await??;
    let mut queued = 0;
    for part in ids.chunks(chunk) {
        let live: LookupResponse = ca
            .client
            .post(api::LOOKUP, &LookupRequest { ids: part.to_vec() })
            .await?;
        if live.live.is_empty() {
            continue;
        }
        let found: Vec<(String, String)> =
            live.live.into_iter().map(|l| (l.id, l.serial)).collect();
        queued += blocking(shared, move |s| {
            let tx = s.stock.transaction()?;
            let mut n = 0;
            for (id, serial) in &found {
                let serial = serial.to_ascii_lowercase();
                if Stock::knows_serial(&tx, &serial)? {
                    continue;
                }
                let model = id.split('-').next().unwrap_or("").to_string();
                n += Stock::queue_orphan(&tx, id, &model, &serial, Reason::Superseded, now_unix())?;
            }
            tx.commit()?;
            anyhow::Ok(n)
        })
        .await??;
    }
    Ok(queued)
}
