//! A certificate pack: what a device receives. As files, a folder holding
//! `root.pem`, `chain.pem` (device cert then issuing CA) and `key.pem` (PKCS#8, 0600).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use zeroize::Zeroizing;

use super::identity::{device_identity, DeviceIdentity};
use super::{fingerprint, pem_blocks};

#[derive(Clone)]
pub struct Pack {
    pub root_pem: String,
    pub chain_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for Pack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even in a debug log.
        f.debug_struct("Pack")
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

pub const ROOT_FILE: &str = "root.pem";
pub const CHAIN_FILE: &str = "chain.pem";
pub const KEY_FILE: &str = "key.pem";

impl Pack {
    pub fn read_dir(dir: &Path) -> anyhow::Result<Pack> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("pack {}: cannot read {name}", dir.display()))
        };
        let pack = Pack {
            root_pem: read(ROOT_FILE)?,
            chain_pem: read(CHAIN_FILE)?,
            key_pem: Zeroizing::new(read(KEY_FILE)?),
        };
        pack.device_cert_der()
            .with_context(|| format!("pack {}", dir.display()))?;
        Ok(pack)
    }

    /// Writes the pack into `dir` through a sibling temporary folder and a rename,
    /// so a reader never sees half a pack.
    pub fn write_dir(&self, dir: &Path) -> anyhow::Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let tmp = parent.join(format!(
            ".{}.tmp",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("pack")
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        write_file(&tmp.join(ROOT_FILE), self.root_pem.as_bytes(), 0o644)?;
        write_file(&tmp.join(CHAIN_FILE), self.chain_pem.as_bytes(), 0o644)?;
        write_file(&tmp.join(KEY_FILE), self.key_pem.as_bytes(), 0o600)?;
        if dir.exists() {
            anyhow::bail!("{} already exists; not overwriting a pack", dir.display());
        }
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("cannot move the pack into {}", dir.display()))?;
        Ok(())
    }

    pub fn device_cert_der(&self) -> anyhow::Result<Vec<u8>> {
        pem_blocks(&self.chain_pem, "CERTIFICATE")?
            .into_iter()
            .next()
            .context("chain.pem holds no certificate")
    }

    pub fn key_pkcs8_der(&self) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let mut keys = pem_blocks(&self.key_pem, "PRIVATE KEY")?;
        if keys.len() != 1 {
            anyhow::bail!(
                "key.pem must hold exactly one PRIVATE KEY block, found {}",
                keys.len()
            );
        }
        Ok(Zeroizing::new(keys.pop().expect("checked above")))
    }

    /// SHA-256 of the device certificate's DER, hex.
    pub fn fingerprint(&self) -> anyhow::Result<String> {
        Ok(fingerprint(&self.device_cert_der()?))
    }

    /// The device id the certificate names (SAN URI, checked against the subject).
    pub fn device_id(&self) -> anyhow::Result<super::id::DeviceId> {
        Ok(self.identity()?.id)
    }

    pub fn identity(&self) -> anyhow::Result<DeviceIdentity> {
        device_identity(&self.device_cert_der()?)
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a file only its owner can read, replacing any previous one atomically.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_file(&tmp, bytes, 0o600)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
