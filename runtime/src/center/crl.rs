//! The center's revocation set: the CA's CRLs (the issuing CA's base CRL,
//! each partition of it, and the root's), refreshed on its own from the CA,
//! the CRL Distribution Points or a file, each verified and decoded once per
//! new CRL number into a serial → reason map, so a connection costs a hash
//! probe per CRL of the certificate's issuer whatever the CRLs' size.
//!
//! A refresh reads the CA's index of CRLs (`GET /v1/crls`, or `crls.json`
//! beside the CDP) and fetches only the CRLs whose number changed; a CRL
//! whose number is the one held does nothing; a failed or refused refresh
//! (bad signature, older number) keeps the set in force and says why. When
//! the CA says a committed revocation is not on its CRLs yet, the next
//! refresh comes after its `crl_max_delay` instead of the configured period,
//! and a stale or failed set is retried within seconds. Whether a set past
//! its nextUpdate may still be used is the caller's (configured) decision.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::pki::crl::{crl_header, RevocationList};
use crate::pki::pem_blocks;
use crate::service::client::ServiceClient;
use crate::wire::ca::{self as ca_api, CrlIndex};

pub enum CrlSource {
    /// The CA's `/v1/crls` index and the CRLs it lists, fetched without a client certificate.
    Ca(ServiceClient),
    /// A PEM file holding the CRLs (as `certline ca crl --out` writes it).
    File(PathBuf),
    /// The CRL Distribution Points the CA wrote into the center's own
    /// credential (the issuing CA's base CRL, beside which `crls.json` lists
    /// the partitions) and into the issuing CA's certificate (the root's),
    /// fetched over plain HTTP: CRLs are signed, and each is verified before
    /// it is used.
    Cdp {
        urls: Vec<String>,
        http: reqwest::Client,
    },
}

/// The trust the center checks CRLs with: the root and the issuing CA
/// certificates (DER), from the center's own credential.
#[derive(Clone)]
pub struct CrlIssuers {
    pub root: Vec<u8>,
    pub issuing: Vec<u8>,
}

/// The revocation set the center answers from: one verified, decoded list
/// per CRL (the issuing CA's base and partitions, the root's), keyed by the
/// name its source gives it (`issuing`, `issuing:2026-12`, `root`); a list
/// is replaced when a refresh brings a newer number for its key.
#[derive(Default, Clone)]
pub struct CrlState {
    /// Empty until the first successful load.
    pub lists: BTreeMap<String, Arc<RevocationList>>,
    /// The earliest nextUpdate among them.
    pub next_update: Option<time::OffsetDateTime>,
    /// Why the last refresh failed, if it did.
    pub error: Option<String>,
    /// The CA said a committed revocation is not on its CRLs yet; they will be within this.
    pub pending: Option<Duration>,
}

/// What one certificate of a chain is, as far as the revocation set knows.
pub enum Status {
    Good,
    Revoked {
        serial_hex: String,
        reason: String,
    },
    /// No CRL of its issuer that speaks for it (its partition) is held: its
    /// status cannot be known.
    NoCrl,
}

/// CRLs fetched by a refresh, each with its key, and what the CA said of
/// revocations not yet published.
pub struct Fetched {
    pub crls: Vec<(String, Vec<u8>)>,
    pub pending: Option<Duration>,
    /// Every key the source serves now (its index, or the file's CRLs): a
    /// list held under another key is no longer published and is dropped.
    pub keys: Option<Vec<String>>,
}

impl CrlState {
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    pub fn is_stale(&self, now: time::OffsetDateTime) -> bool {
        self.next_update.is_none_or(|next| now > next)
    }

    /// Checks one certificate (DER integer serial, DER issuer name, the URIs
    /// of its CDP). Revoked when any CRL of its issuer lists the serial (a
    /// serial is unique per issuer); good when none does and a CRL that
    /// speaks for it (its partition's, see
    /// [`RevocationList::authoritative_for`]) is held.
    pub fn status(&self, issuer: &[u8], cdp_urls: &[String], serial: &[u8]) -> Status {
        let mut covered = false;
        for list in self.lists.values().filter(|l| l.issuer() == issuer) {
            if let Some(reason) = list.reason(serial) {
                return Status::Revoked {
                    serial_hex: hex::encode(serial),
                    reason,
                };
            }
            covered |= list.authoritative_for(cdp_urls);
        }
        if covered {
            Status::Good
        } else {
            Status::NoCrl
        }
    }

    /// The CRL number held for each key.
    pub fn numbers(&self) -> BTreeMap<String, u64> {
        self.lists
            .iter()
            .map(|(key, l)| (key.clone(), l.number()))
            .collect()
    }

    /// Revoked entries held, all lists together.
    pub fn entries(&self) -> usize {
        self.lists.values().map(|l| l.len()).sum()
    }

    /// Takes freshly fetched CRLs (each with its key), all or nothing. A CRL
    /// whose number is the one already held under its key costs a few
    /// header reads and nothing else; a newer one is verified and decoded
    /// once; an older one, one that does not verify, or one from another
    /// issuer refuses the whole refresh, and the set in force stays. Lists
    /// not offered stay. Returns whether anything changed.
    pub fn offer(
        &mut self,
        crls: &[(String, Vec<u8>)],
        issuers: &CrlIssuers,
    ) -> anyhow::Result<bool> {
        let mut taken = Vec::new();
        for (key, der) in crls {
            let header = crl_header(der).map_err(|e| anyhow::anyhow!("CRL {key}: {e:#}"))?;
            match self.lists.get(key) {
                Some(held) if held.number() == header.number => continue,
                Some(held) if held.number() > header.number => anyhow::bail!(
                    "the CA served CRL {key} number {}, older than number {} already held; refused",
                    header.number,
                    held.number()
                ),
                _ => {}
            }
            let signer = [&issuers.issuing, &issuers.root]
                .into_iter()
                .find(|cert| subject_of(cert).is_some_and(|s| s == header.issuer))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "CRL {key} is from an issuer that is neither this CA's root nor its issuing CA"
                    )
                })?;
            let list = RevocationList::verified(der, signer)
                .map_err(|e| anyhow::anyhow!("CRL {key}: {e:#}"))?;
            anyhow::ensure!(
                list.number() == header.number && list.idp() == header.idp.as_deref(),
                "CRL {key} changed between two reads"
            );
            taken.push((key.clone(), Arc::new(list)));
        }
        let changed = !taken.is_empty();
        if changed {
            self.lists.extend(taken);
            self.next_update = self.lists.values().map(|l| l.next_update()).min();
        }
        self.error = None;
        Ok(changed)
    }
}

impl CrlState {
    /// Drops the lists held under a key not in `keys` (a CRL no longer
    /// published); returns whether any was dropped. Never empties the set.
    pub fn keep_only(&mut self, keys: &[String]) -> bool {
        let before = self.lists.len();
        let kept: BTreeMap<_, _> = self
            .lists
            .iter()
            .filter(|(key, _)| keys.contains(key))
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        if kept.is_empty() || kept.len() == before {
            return false;
        }
        self.lists = kept;
        self.next_update = self.lists.values().map(|l| l.next_update()).min();
        true
    }
}

/// A certificate's subject name (DER), as a CRL's issuer field carries it.
fn subject_of(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(cert.subject().as_raw().to_vec())
}

/// The key of a CRL read from a file: its issuer and scope, as its header says.
fn file_key(der: &[u8]) -> anyhow::Result<String> {
    let header = crl_header(der)?;
    Ok(format!(
        "{}/{}",
        hex::encode(&header.issuer),
        header.idp.as_deref().map(hex::encode).unwrap_or_default()
    ))
}

/// The CRLs of `index` whose number differs from the one held under their
/// key, with the pending delay the index gives.
fn changed<'a>(
    index: &'a CrlIndex,
    held: &'a BTreeMap<String, u64>,
) -> impl Iterator<Item = &'a ca_api::CrlIndexEntry> {
    index
        .crls
        .iter()
        .filter(move |entry| held.get(&entry.scope) != Some(&entry.number))
}

fn pending_of(index: &CrlIndex) -> Option<Duration> {
    index
        .pending
        .then(|| Duration::from_secs_f64(index.crl_max_delay.clamp(0.0, 86_400.0)))
}

async fn http_get(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot fetch {url}: {e}"))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(response
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {url}: {e}"))?
        .to_vec())
}

impl CrlSource {
    /// Fetches what may have changed since `held` (key → number).
    pub async fn fetch(&self, held: &BTreeMap<String, u64>) -> anyhow::Result<Fetched> {
        match self {
            CrlSource::Ca(client) => {
                let index: CrlIndex = match client.get_json(ca_api::CRLS).await {
                    Ok(index) => index,
                    // A CA from before partitions: its two CRLs.
                    Err(e) if e.code().is_none() && e.to_string().contains("404") => CrlIndex {
                        crls: [("issuing", ca_api::CRL), ("root", ca_api::ROOT_CRL)]
                            .into_iter()
                            .map(|(scope, path)| ca_api::CrlIndexEntry {
                                scope: scope.into(),
                                number: 0,
                                path: path.into(),
                                url: None,
                            })
                            .collect(),
                        ..CrlIndex::default()
                    },
                    Err(e) => return Err(anyhow::anyhow!("cannot read the CA's CRL index: {e}")),
                };
                let mut crls = Vec::new();
                for entry in changed(&index, held) {
                    let der = client
                        .get_bytes(&entry.path)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot fetch CRL {}: {e}", entry.scope))?;
                    crls.push((entry.scope.clone(), der));
                }
                Ok(Fetched {
                    crls,
                    pending: pending_of(&index),
                    keys: Some(index.crls.iter().map(|e| e.scope.clone()).collect()),
                })
            }
            CrlSource::Cdp { urls, http } => {
                let index_url =
                    crate::pki::urls::sibling(&urls[0], crate::pki::urls::CRL_INDEX_FILE);
                let index: Option<CrlIndex> = match http_get(http, &index_url).await {
                    Ok(body) => Some(
                        serde_json::from_slice(&body)
                            .map_err(|e| anyhow::anyhow!("{index_url} is not a CRL index: {e}"))?,
                    ),
                    // No index published: the two CRLs the certificates name.
                    Err(_) => None,
                };
                let mut crls = Vec::new();
                match &index {
                    Some(index) => {
                        for entry in changed(index, held) {
                            let url = entry.url.as_deref().ok_or_else(|| {
                                anyhow::anyhow!("{index_url} names no URL for CRL {}", entry.scope)
                            })?;
                            crls.push((entry.scope.clone(), http_get(http, url).await?));
                        }
                    }
                    None => {
                        for (url, key) in urls.iter().zip(["issuing", "root"]) {
                            crls.push((key.to_string(), http_get(http, url).await?));
                        }
                    }
                }
                Ok(Fetched {
                    crls,
                    pending: index.as_ref().and_then(pending_of),
                    keys: index.map(|i| i.crls.into_iter().map(|e| e.scope).collect()),
                })
            }
            CrlSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read CRL file {}: {e}", path.display()))?;
                let crls = pem_blocks(&text, "X509 CRL")?;
                anyhow::ensure!(!crls.is_empty(), "{} holds no X509 CRL", path.display());
                let crls: Vec<(String, Vec<u8>)> = crls
                    .into_iter()
                    .map(|der| Ok((file_key(&der)?, der)))
                    .collect::<anyhow::Result<_>>()?;
                Ok(Fetched {
                    keys: Some(crls.iter().map(|(key, _)| key.clone()).collect()),
                    crls,
                    pending: None,
                })
            }
        }
    }
}

impl CrlSource {
    /// The CDP source for a credential: the CRL URLs in its leaf (the issuing
    /// CA's base CRL) and in its issuing CA's certificate (the root's),
    /// refused with a clear error when the CA wrote none.
    pub fn from_cdp(cred: &crate::pki::credential::Credential) -> anyhow::Result<CrlSource> {
        let mut urls = Vec::new();
        for (cert, which) in cred.chain.iter().zip([
            "the credential's own certificate",
            "its issuing CA's certificate",
        ]) {
            let url = crate::pki::urls::read(cert)?.crl.ok_or_else(|| {
                anyhow::anyhow!(
                    "--crl-from-cdp: {which} names no CRL Distribution Point (the CA had no crl_url when it signed it); use --ca or --crl-file"
                )
            })?;
            urls.push(url);
        }
        anyhow::ensure!(
            urls.len() == 2,
            "--crl-from-cdp: the credential holds no issuing CA certificate"
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cred.root.clone())?;
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(CrlSource::Cdp { urls, http })
    }
}

/// How soon a failed or stale set is tried again (the configured period if shorter).
const RETRY: Duration = Duration::from_secs(5);

/// When the refresh after one that left `state` should come: after the
/// CA's publication delay when it said a revocation is pending, within
/// seconds when the set failed or is stale, else after `every`.
pub fn next_refresh(state: &CrlState, every: Duration) -> Duration {
    if let Some(delay) = state.pending {
        return (delay + Duration::from_millis(100)).min(every);
    }
    if state.error.is_some() || state.is_stale(time::OffsetDateTime::now_utc()) {
        return RETRY.min(every);
    }
    every
}

/// Refreshes `state` from `source` every `every` (sooner when a revocation
/// is pending or the set is failed or stale: [`next_refresh`]); a refresh
/// that fails or is refused keeps the set in force and records why.
pub async fn refresh_loop(
    source: CrlSource,
    issuers: CrlIssuers,
    state: Arc<RwLock<CrlState>>,
    every: Duration,
) {
    loop {
        let pause = next_refresh(&state.read().unwrap_or_else(|p| p.into_inner()), every);
        tokio::time::sleep(pause).await;
        refresh(&source, &issuers, &state).await;
    }
}

/// The first refresh, before the center answers anyone: repeated while the
/// CA says a revocation is pending (up to `patience`), so a center started
/// right after a revocation does not answer from a set that misses it.
pub async fn first_refresh(
    source: &CrlSource,
    issuers: &CrlIssuers,
    state: &Arc<RwLock<CrlState>>,
    patience: Duration,
) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        refresh(source, issuers, state).await;
        let pending = state.read().unwrap_or_else(|p| p.into_inner()).pending;
        match pending {
            Some(delay) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(delay + Duration::from_millis(100)).await;
            }
            _ => return,
        }
    }
}

/// One refresh: fetch what changed, then verify and decode off the
/// executor, then swap in.
pub async fn refresh(source: &CrlSource, issuers: &CrlIssuers, state: &Arc<RwLock<CrlState>>) {
    let held = state.read().unwrap_or_else(|p| p.into_inner()).numbers();
    let result = match source.fetch(&held).await {
        Ok(fetched) => {
            let mut next = state.read().unwrap_or_else(|p| p.into_inner()).clone();
            next.pending = fetched.pending;
            let issuers = issuers.clone();
            tokio::task::spawn_blocking(move || {
                let offered = next.offer(&fetched.crls, &issuers)?;
                let dropped = fetched.keys.is_some_and(|keys| next.keep_only(&keys));
                Ok((offered || dropped, next))
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the CRL check failed: {e}")))
        }
        Err(e) => Err(e),
    };
    let mut current = state.write().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok((true, fresh)) => {
            tracing::info!(
                numbers = ?fresh.numbers(),
                entries = fresh.entries(),
                map_bytes = fresh.lists.values().map(|l| l.heap_bytes()).sum::<usize>(),
                "CRLs taken"
            );
            *current = fresh;
        }
        Ok((false, fresh)) => {
            current.error = None;
            current.pending = fresh.pending;
        }
        Err(e) => {
            tracing::warn!("CRL refresh failed, keeping the last set: {e:#}");
            current.error = Some(format!("{e:#}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::authority::Authority;
    use crate::pki::crl::{Reason, RevokedEntry};
    use crate::pki::keystore::{self, CaKeyAlgorithm};
    use crate::pki::serial::Serial;

    struct Ca {
        pki: Authority,
        now: time::OffsetDateTime,
    }

    impl Ca {
        fn new() -> Ca {
            let now = time::OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap();
            let (root, _) = keystore::file::generate(CaKeyAlgorithm::P384).unwrap();
            let (issuing, _) = keystore::file::generate(CaKeyAlgorithm::P256).unwrap();
            let pki = Authority::create(
                "certline Test",
                32473,
                &Default::default(),
                root,
                issuing,
                now,
            )
            .unwrap();
            Ca { pki, now }
        }

        fn issuers(&self) -> CrlIssuers {
            CrlIssuers {
                root: self.pki.root_der().to_vec(),
                issuing: self.pki.issuing_der().to_vec(),
            }
        }

        /// The issuing CA's CRL number `number` listing `serials`, and the root's.
        fn crls(&self, number: u64, serials: &[&Serial]) -> Vec<(String, Vec<u8>)> {
            vec![
                ("issuing".into(), self.crl(number, serials, None)),
                (
                    "root".into(),
                    self.pki
                        .root_crl(number, &[], self.now, time::Duration::days(1))
                        .unwrap(),
                ),
            ]
        }

        /// One CRL of the issuing CA, scoped to `idp` if given.
        fn crl(&self, number: u64, serials: &[&Serial], idp: Option<&str>) -> Vec<u8> {
            let entries: Vec<RevokedEntry> = serials
                .iter()
                .map(|s| RevokedEntry {
                    serial: (*s).clone(),
                    revoked_at: self.now,
                    reason: Reason::KeyCompromise,
                })
                .collect();
            self.pki
                .issuing_crl(number, &entries, self.now, time::Duration::days(1), idp)
                .unwrap()
        }
    }

    fn issuing_name(ca: &Ca) -> Vec<u8> {
        subject_of(ca.pki.issuing_der()).unwrap()
    }

    fn numbers(state: &CrlState) -> Vec<u64> {
        state.numbers().into_values().collect()
    }

    #[test]
    fn a_partition_speaks_only_for_the_certificates_whose_cdp_names_it() {
        let ca = Ca::new();
        let (base_url, dec_url, jan_url) = (
            "http://ca.example/crl/issuing.crl",
            "http://ca.example/crl/issuing-2026-12.crl",
            "http://ca.example/crl/issuing-2027-01.crl",
        );
        let (in_dec, gone_in_dec) = (Serial::random(), Serial::random());
        let mut state = CrlState::default();
        let offered = vec![
            ("issuing".to_string(), ca.crl(3, &[], Some(base_url))),
            (
                "issuing:2026-12".to_string(),
                ca.crl(1, &[&gone_in_dec], Some(dec_url)),
            ),
        ];
        assert!(state.offer(&offered, &ca.issuers()).unwrap());
        let name = issuing_name(&ca);
        let dec = [dec_url.to_string()];
        assert!(matches!(
            state.status(&name, &dec, in_dec.as_bytes()),
            Status::Good
        ));
        assert!(matches!(
            state.status(&name, &dec, gone_in_dec.as_bytes()),
            Status::Revoked { .. }
        ));
        // A certificate of a month whose partition is not held: unknown.
        assert!(matches!(
            state.status(&name, &[jan_url.to_string()], in_dec.as_bytes()),
            Status::NoCrl
        ));
        // One that names the base CRL (a service credential, an older device).
        assert!(matches!(
            state.status(&name, &[base_url.to_string()], in_dec.as_bytes()),
            Status::Good
        ));
        // Only the partition that changed is decoded again.
        let base = state.lists["issuing"].clone();
        let offered = vec![
            ("issuing".to_string(), ca.crl(3, &[], Some(base_url))),
            (
                "issuing:2026-12".to_string(),
                ca.crl(2, &[&gone_in_dec, &in_dec], Some(dec_url)),
            ),
        ];
        assert!(state.offer(&offered, &ca.issuers()).unwrap());
        assert!(Arc::ptr_eq(&base, &state.lists["issuing"]));
        assert!(matches!(
            state.status(&name, &dec, in_dec.as_bytes()),
            Status::Revoked { .. }
        ));
    }

    #[test]
    fn a_crl_is_decoded_once_per_number_and_looked_up_by_serial() {
        let ca = Ca::new();
        let (gone, kept) = (Serial::random(), Serial::random());
        let mut state = CrlState::default();
        assert!(state.offer(&ca.crls(1, &[]), &ca.issuers()).unwrap());
        let first = state.lists["issuing"].clone();
        // The same numbers again: nothing decoded, the very same lists kept.
        assert!(!state.offer(&ca.crls(1, &[&gone]), &ca.issuers()).unwrap());
        assert!(Arc::ptr_eq(&first, &state.lists["issuing"]));
        assert!(matches!(
            state.status(&issuing_name(&ca), &[], gone.as_bytes()),
            Status::Good
        ));
        // A newer number is taken.
        assert!(state.offer(&ca.crls(2, &[&gone]), &ca.issuers()).unwrap());
        assert_eq!(numbers(&state), vec![2, 2]);
        match state.status(&issuing_name(&ca), &[], gone.as_bytes()) {
            Status::Revoked { serial_hex, reason } => {
                assert_eq!(serial_hex, gone.to_hex());
                assert_eq!(reason, "KeyCompromise");
            }
            _ => panic!("the revoked serial is not found"),
        }
        assert!(matches!(
            state.status(&issuing_name(&ca), &[], kept.as_bytes()),
            Status::Good
        ));
        // A certificate from an issuer without a CRL has no known status.
        assert!(matches!(
            state.status(b"someone else", &[], kept.as_bytes()),
            Status::NoCrl
        ));
    }

    #[test]
    fn an_older_number_or_a_bad_signature_is_refused_and_the_set_stays() {
        let ca = Ca::new();
        let gone = Serial::random();
        let mut state = CrlState::default();
        state.offer(&ca.crls(5, &[&gone]), &ca.issuers()).unwrap();

        let err = state
            .offer(&ca.crls(4, &[]), &ca.issuers())
            .unwrap_err()
            .to_string();
        assert!(err.contains("older"), "{err}");
        assert_eq!(numbers(&state), vec![5, 5]);

        let mut forged = ca.crls(6, &[]);
        let last = forged[0].1.len() - 1;
        forged[0].1[last] ^= 0x01;
        let err = format!("{:#}", state.offer(&forged, &ca.issuers()).unwrap_err());
        assert!(err.contains("signature"), "{err}");
        assert_eq!(numbers(&state), vec![5, 5]);

        // A CRL signed by another CA of the same name: its signature fails.
        let other = Ca::new();
        let err = format!(
            "{:#}",
            state.offer(&other.crls(7, &[]), &ca.issuers()).unwrap_err()
        );
        assert!(err.contains("signature"), "{err}");
        assert!(matches!(
            state.status(&issuing_name(&ca), &[], gone.as_bytes()),
            Status::Revoked { .. }
        ));
    }
}
