//! The center's revocation set: the CA's CRLs (the issuing CA's and the
//! root's), refreshed on a schedule from the CA or from a file, each verified
//! and decoded once per new CRL number into a serial → reason map, so a
//! connection costs one hash probe per certificate whatever the CRL's size.
//! A refresh with the numbers already held does nothing; a failed or refused
//! one (bad signature, older number) keeps the set in force and says why;
//! whether a set past its nextUpdate may still be used is the caller's
//! (configured) decision.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::pki::crl::{crl_header, RevocationList};
use crate::pki::pem_blocks;
use crate::service::client::ServiceClient;
use crate::wire::ca as ca_api;

pub enum CrlSource {
    /// The CA's `/v1/crl` and `/v1/crl/root`, fetched without a client certificate.
    Ca(ServiceClient),
    /// A PEM file holding the CRLs (as `certline ca crl --out` writes it).
    File(PathBuf),
    /// The CRL Distribution Points the CA wrote into the center's own
    /// credential (the issuing CA's CRL) and into the issuing CA's certificate
    /// (the root's), fetched over plain HTTP: CRLs are signed, and their
    /// signatures are checked when a chain is verified against them.
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
/// per CRL issuer (the issuing CA's and the root's), replaced as a whole
/// when a refresh brings newer CRL numbers.
#[derive(Default, Clone)]
pub struct CrlState {
    /// Empty until the first successful load.
    pub lists: Vec<Arc<RevocationList>>,
    /// The earliest nextUpdate among them.
    pub next_update: Option<time::OffsetDateTime>,
    /// Why the last refresh failed, if it did.
    pub error: Option<String>,
}

/// What one certificate of a chain is, as far as the revocation set knows.
pub enum Status {
    Good,
    Revoked {
        serial_hex: String,
        reason: String,
    },
    /// No CRL of its issuer is held: its status cannot be known.
    NoCrl,
}

impl CrlState {
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    pub fn is_stale(&self, now: time::OffsetDateTime) -> bool {
        self.next_update.is_none_or(|next| now > next)
    }

    /// Checks one certificate (DER integer serial, DER issuer name): one hash probe.
    pub fn status(&self, issuer: &[u8], serial: &[u8]) -> Status {
        match self.lists.iter().find(|list| list.issuer() == issuer) {
            None => Status::NoCrl,
            Some(list) => match list.reason(serial) {
                Some(reason) => Status::Revoked {
                    serial_hex: hex::encode(serial),
                    reason,
                },
                None => Status::Good,
            },
        }
    }

    /// The CRL number held for each issuer, in the order of `lists`.
    pub fn numbers(&self) -> Vec<u64> {
        self.lists.iter().map(|l| l.number()).collect()
    }

    /// Takes freshly fetched CRLs, all or nothing. A CRL whose number is the
    /// one already held costs a few header reads and nothing else; a newer
    /// one is verified and decoded once; an older one, one that does not
    /// verify, or one from another issuer refuses the whole refresh, and the
    /// set in force stays. Returns whether anything changed.
    pub fn offer(&mut self, crls: &[Vec<u8>], issuers: &CrlIssuers) -> anyhow::Result<bool> {
        anyhow::ensure!(!crls.is_empty(), "no CRL was fetched");
        let mut lists = Vec::with_capacity(crls.len());
        let mut changed = false;
        for der in crls {
            let (issuer, number) = crl_header(der)?;
            let held = self.lists.iter().find(|l| l.issuer() == issuer.as_slice());
            match held {
                Some(held) if held.number() == number => {
                    lists.push(held.clone());
                    continue;
                }
                Some(held) if held.number() > number => anyhow::bail!(
                    "the CA served CRL number {number}, older than number {} already held; refused",
                    held.number()
                ),
                _ => {}
            }
            let signer = [&issuers.issuing, &issuers.root]
                .into_iter()
                .find(|cert| subject_of(cert).is_some_and(|s| s == issuer))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "a CRL from an issuer that is neither this CA's root nor its issuing CA"
                    )
                })?;
            let list = RevocationList::verified(der, signer)?;
            anyhow::ensure!(
                list.number() == number,
                "the CRL's number changed between two reads"
            );
            lists.push(Arc::new(list));
            changed = true;
        }
        changed |= lists.len() != self.lists.len();
        if changed {
            self.next_update = lists.iter().map(|l| l.next_update()).min();
            self.lists = lists;
        }
        self.error = None;
        Ok(changed)
    }
}

/// A certificate's subject name (DER), as a CRL's issuer field carries it.
fn subject_of(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(cert.subject().as_raw().to_vec())
}

impl CrlSource {
    pub async fn fetch(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        match self {
            CrlSource::Ca(client) => Ok(vec![
                client.get_bytes(ca_api::CRL).await?,
                client.get_bytes(ca_api::ROOT_CRL).await?,
            ]),
            CrlSource::Cdp { urls, http } => {
                let mut crls = Vec::with_capacity(urls.len());
                for url in urls {
                    let response = http
                        .get(url)
                        .send()
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot fetch the CRL at {url}: {e}"))?;
                    let status = response.status();
                    anyhow::ensure!(status.is_success(), "the CRL at {url} answered {status}");
                    crls.push(
                        response
                            .bytes()
                            .await
                            .map_err(|e| anyhow::anyhow!("cannot read the CRL at {url}: {e}"))?
                            .to_vec(),
                    );
                }
                Ok(crls)
            }
            CrlSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read CRL file {}: {e}", path.display()))?;
                let crls = pem_blocks(&text, "X509 CRL")?;
                anyhow::ensure!(!crls.is_empty(), "{} holds no X509 CRL", path.display());
                Ok(crls)
            }
        }
    }
}

impl CrlSource {
    /// The CDP source for a credential: the CRL URLs in its leaf (the issuing
    /// CA's CRL) and in its issuing CA's certificate (the root's), refused
    /// with a clear error when the CA wrote none.
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

/// Refreshes `state` from `source` now and then every `every`; a refresh
/// that fails or is refused keeps the set in force and records why.
pub async fn refresh_loop(
    source: CrlSource,
    issuers: CrlIssuers,
    state: Arc<RwLock<CrlState>>,
    every: Duration,
) {
    loop {
        refresh(&source, &issuers, &state).await;
        tokio::time::sleep(every).await;
    }
}

/// One refresh: fetch, then verify and decode off the executor, then swap in.
pub async fn refresh(source: &CrlSource, issuers: &CrlIssuers, state: &Arc<RwLock<CrlState>>) {
    let result = match source.fetch().await {
        Ok(crls) => {
            let mut next = state.read().unwrap_or_else(|p| p.into_inner()).clone();
            let issuers = issuers.clone();
            tokio::task::spawn_blocking(move || next.offer(&crls, &issuers).map(|c| (c, next)))
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
                entries = fresh.lists.iter().map(|l| l.len()).sum::<usize>(),
                map_bytes = fresh.lists.iter().map(|l| l.heap_bytes()).sum::<usize>(),
                "CRLs taken"
            );
            *current = fresh;
        }
        Ok((false, _)) => current.error = None,
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
        fn crls(&self, number: u64, serials: &[&Serial]) -> Vec<Vec<u8>> {
            let entries: Vec<RevokedEntry> = serials
                .iter()
                .map(|s| RevokedEntry {
                    serial: (*s).clone(),
                    revoked_at: self.now,
                    reason: Reason::KeyCompromise,
                })
                .collect();
            let day = time::Duration::days(1);
            vec![
                self.pki
                    .issuing_crl(number, &entries, self.now, day)
                    .unwrap(),
                self.pki.root_crl(number, &[], self.now, day).unwrap(),
            ]
        }
    }

    fn issuing_name(ca: &Ca) -> Vec<u8> {
        subject_of(ca.pki.issuing_der()).unwrap()
    }

    #[test]
    fn a_crl_is_decoded_once_per_number_and_looked_up_by_serial() {
        let ca = Ca::new();
        let (gone, kept) = (Serial::random(), Serial::random());
        let mut state = CrlState::default();
        assert!(state.offer(&ca.crls(1, &[]), &ca.issuers()).unwrap());
        let first = state.lists[0].clone();
        // The same numbers again: nothing decoded, the very same lists kept.
        assert!(!state.offer(&ca.crls(1, &[&gone]), &ca.issuers()).unwrap());
        assert!(Arc::ptr_eq(&first, &state.lists[0]));
        assert!(matches!(
            state.status(&issuing_name(&ca), gone.as_bytes()),
            Status::Good
        ));
        // A newer number is taken.
        assert!(state.offer(&ca.crls(2, &[&gone]), &ca.issuers()).unwrap());
        assert_eq!(state.numbers(), vec![2, 2]);
        match state.status(&issuing_name(&ca), gone.as_bytes()) {
            Status::Revoked { serial_hex, reason } => {
                assert_eq!(serial_hex, gone.to_hex());
                assert_eq!(reason, "KeyCompromise");
            }
            _ => panic!("the revoked serial is not found"),
        }
        assert!(matches!(
            state.status(&issuing_name(&ca), kept.as_bytes()),
            Status::Good
        ));
        // A certificate from an issuer without a CRL has no known status.
        assert!(matches!(
            state.status(b"someone else", kept.as_bytes()),
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
        assert_eq!(state.numbers(), vec![5, 5]);

        let mut forged = ca.crls(6, &[]);
        let last = forged[0].len() - 1;
        forged[0][last] ^= 0x01;
        let err = format!("{:#}", state.offer(&forged, &ca.issuers()).unwrap_err());
        assert!(err.contains("signature"), "{err}");
        assert_eq!(state.numbers(), vec![5, 5]);

        // A CRL signed by another CA of the same name: its signature fails.
        let other = Ca::new();
        let err = format!(
            "{:#}",
            state.offer(&other.crls(7, &[]), &ca.issuers()).unwrap_err()
        );
        assert!(err.contains("signature"), "{err}");
        assert!(matches!(
            state.status(&issuing_name(&ca), gone.as_bytes()),
            Status::Revoked { .. }
        ));
    }
}
