//! Service credentials as one PEM file: the leaf certificate, the issuing CA,
//! the root (trust anchor, last), and the PKCS#8 private key. Written 0600.

use std::path::Path;

use anyhow::Context;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use super::role::{role_of, Role};
use super::{pem_blocks, to_pem};

pub struct Credential {
    /// Leaf first, then the issuing CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The root this credential trusts for its peers.
    pub root: CertificateDer<'static>,
    key: Zeroizing<Vec<u8>>,
    role: Role,
    name: String,
}

impl Credential {
    pub fn new(
        chain: Vec<Vec<u8>>,
        root: Vec<u8>,
        key_pkcs8: Zeroizing<Vec<u8>>,
    ) -> anyhow::Result<Credential> {
        let leaf = chain.first().context("a credential needs a certificate")?;
        let (role, name) = role_of(leaf)
            .context("the certificate names no certline role: it is not a service credential")?;
        Ok(Credential {
            chain: chain.into_iter().map(CertificateDer::from).collect(),
            root: CertificateDer::from(root),
            key: key_pkcs8,
            role,
            name,
        })
    }

    pub fn load(path: &Path) -> anyhow::Result<Credential> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read credential {}", path.display()))?,
        );
        Self::from_pem(&text).with_context(|| format!("credential {}", path.display()))
    }

    pub fn from_pem(text: &str) -> anyhow::Result<Credential> {
        let mut certs = pem_blocks(text, "CERTIFICATE")?;
        let mut keys = pem_blocks(text, "PRIVATE KEY")?;
        if certs.len() < 2 {
            anyhow::bail!(
                "expected the certificate chain and the root, found {} certificate(s)",
                certs.len()
            );
        }
        if keys.len() != 1 {
            anyhow::bail!(
                "expected exactly one PRIVATE KEY block, found {}",
                keys.len()
            );
        }
        let root = certs.pop().expect("checked above");
        Credential::new(
            certs,
            root,
            Zeroizing::new(keys.pop().expect("checked above")),
        )
    }

    pub fn to_pem(&self) -> Zeroizing<String> {
        let mut out = String::new();
        for cert in self.chain.iter().chain(std::iter::once(&self.root)) {
            out.push_str(&to_pem("CERTIFICATE", cert));
        }
        out.push_str(&to_pem("PRIVATE KEY", &self.key));
        Zeroizing::new(out)
    }

    /// Writes the credential readable by its owner only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        super::pack::write_private_file(path, self.to_pem().as_bytes())
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.to_vec()))
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}
