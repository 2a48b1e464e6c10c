//! The reference device simulator (`certline device-sim`).
//!
//! Its state is files under its folder, as a real device keeps it in memory
//! chips:
//!
//! ```text
//! DIR/nvram/id         its own id, MODEL-SERIAL, set when its board was built
//! DIR/nvram/link.pem   its device-link credential (the vendor's common certificate)
//! DIR/flash/root.pem   the identity written on the line: root certificate,
//! DIR/flash/chain.pem  device certificate + issuing CA,
//! DIR/flash/key.pem    device key (0600), when the CA generated it
//! DIR/secure/key.pem   with --keygen: the key the device generated itself,
//!                      in its "secure element" (never in flash, never on the link)
//! DIR/secure/pending.pem  a generated key whose certificate is not yet installed
//! ```
//!
//! With `--keygen` (a device with a secure element, `keygen = "device"`), it
//! answers `generate-key` with a PKCS#10 request signed by a key it made in
//! `secure/`, and installs a pack without a key only if its certificate is
//! for that key.
//!
//! It speaks one protocol of `certline_device_protocol` (the same code the
//! plugins use) over the device side of the link, checks that a pack is for its
//! own id and hangs together before writing, writes flash atomically (never half
//! an identity), answers read-back and signs challenges with its flash key. The
//! fault knobs ([`Faults`]) make it misbehave the ways real devices do.
//!
//! What the hardware does (NVRAM id, flash, signing with the flash key) is
//! one [`exec::Chip`]: the built-in protocols call it directly, a vendor's
//! own protocol program (`--exec CMD`) calls it over a socket (see [`exec`]).

pub mod cli;
pub mod exec;
pub mod report;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use certline_device_protocol::tlv::TlvEndpoint;
use certline_device_protocol::xml::XmlEndpoint;
use certline_device_protocol::{Answer, DeviceSide, Error, Identity, LinkFailure, Request};

use crate::link::{AsTransport, DeviceLink};
use crate::pki::id::DeviceId;
use crate::pki::pack::{Pack, CHAIN_FILE, KEY_FILE, ROOT_FILE};
use crate::pki::profile::KeyAlgorithm;

/// How long a session may sit idle before the device hangs up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Which wire format the device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The image-forming device's XML envelopes (acme-imaging).
    Xml,
    /// The meter's TLV frames with CRC (acme-meter).
    Tlv,
}

/// Ways to make the device misbehave.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Refuse every write after "received" with this reason.
    pub fail_write: Option<String>,
    /// Drop the link right after reporting "received" (before touching flash).
    pub drop_after_received: bool,
    /// Report a wrong fingerprint on read-back.
    pub corrupt_readback: bool,
    /// Wait this long before every answer.
    pub delay: Duration,
    /// Claim this id when asked who it is (its NVRAM id stays what it is).
    pub report_id: Option<String>,
    /// Send this many frames with a wrong CRC (TLV only), then good ones.
    pub bad_crc: u32,
    /// Send garbage instead of the first answer of every session.
    pub garble: bool,
    /// Keygen: answer a CSR for a throwaway key while keeping another one,
    /// and install any certificate (a lying device or plugin: its proof of
    /// possession must fail).
    pub csr_for_other_key: bool,
    /// Keygen: generate the key, then drop the link instead of answering.
    pub drop_after_keygen: bool,
}

/// A device's state: its NVRAM and its flash, as files.
pub struct Device {
    dir: PathBuf,
    id: DeviceId,
    /// It can generate its own key in its secure element (`--keygen`).
    keygen: bool,
    /// Fault: installs a certificate for a key it does not hold.
    keygen_lies: bool,
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The line closed the link, or went quiet.
    Closed,
    /// The device dropped the link on purpose (fault knob).
    Dropped,
}

impl Device {
    pub fn nvram(dir: &Path) -> PathBuf {
        dir.join("nvram")
    }

    pub fn flash(dir: &Path) -> PathBuf {
        dir.join("flash")
    }

    pub fn link_credential_path(dir: &Path) -> PathBuf {
        Self::nvram(dir).join("link.pem")
    }

    /// The secure element: keys the device generated, apart from its flash.
    pub fn secure(dir: &Path) -> PathBuf {
        dir.join("secure")
    }

    fn secure_key(&self) -> PathBuf {
        Self::secure(&self.dir).join("key.pem")
    }

    fn pending_key(&self) -> PathBuf {
        Self::secure(&self.dir).join("pending.pem")
    }

    /// Gives the device a secure element that generates its keys.
    pub fn with_keygen(mut self, keygen: bool, faults: &Faults) -> Device {
        self.keygen = keygen;
        self.keygen_lies = faults.csr_for_other_key;
        self
    }

    /// Opens (or, the first time, builds) the device in `dir` with id `id`. A
    /// device's id never changes: an NVRAM that says otherwise is an error.
    pub fn open(dir: &Path, id: &DeviceId) -> anyhow::Result<Device> {
        let nvram = Self::nvram(dir);
        std::fs::create_dir_all(&nvram)
            .with_context(|| format!("cannot create {}", nvram.display()))?;
        let id_file = nvram.join("id");
        match std::fs::read_to_string(&id_file) {
            Ok(text) => {
                let stored = DeviceId::parse(text.trim())
                    .with_context(|| format!("{} is corrupt", id_file.display()))?;
                if &stored != id {
                    anyhow::bail!(
                        "the device in {} is {stored} (its NVRAM says so); --model/--serial say {id}",
                        dir.display()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&id_file, format!("{id}\n").as_bytes(), 0o644)?;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", id_file.display())),
        }
        let device = Device {
            dir: dir.to_path_buf(),
            id: id.clone(),
            keygen: false,
            keygen_lies: false,
        };
        device.recover_flash()?;
        Ok(device)
    }

    pub fn id(&self) -> &DeviceId {
        &self.id
    }

    /// Installs the device-link credential into NVRAM.
    pub fn install_link_credential(&self, source: &Path) -> anyhow::Result<()> {
        let pem =
            std::fs::read(source).with_context(|| format!("cannot read {}", source.display()))?;
        crate::pki::credential::Credential::from_pem(&String::from_utf8_lossy(&pem))
            .with_context(|| format!("link credential {}", source.display()))?;
        write_atomic(&Self::link_credential_path(&self.dir), &pem, 0o600)
    }

    fn old_flash(&self) -> PathBuf {
        self.dir.join(".flash.old")
    }

    fn new_flash(&self) -> PathBuf {
        self.dir.join(".flash.new")
    }

    /// Finishes or undoes a flash swap that a power cut interrupted.
    fn recover_flash(&self) -> anyhow::Result<()> {
        let flash = Self::flash(&self.dir);
        if !flash.exists() && self.old_flash().exists() {
            std::fs::rename(self.old_flash(), &flash)
                .context("cannot restore the previous flash")?;
        }
        let _ = std::fs::remove_dir_all(self.old_flash());
        let _ = std::fs::remove_dir_all(self.new_flash());
        Ok(())
    }

    /// The identity in flash, if any, with its key: from flash, or from the
    /// secure element for a key the device generated.
    pub fn flash_pack(&self) -> anyhow::Result<Option<Pack>> {
        let flash = Self::flash(&self.dir);
        if !flash.join(CHAIN_FILE).exists() {
            return Ok(None);
        }
        if flash.join(KEY_FILE).exists() {
            return Pack::read_dir(&flash).map(Some);
        }
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let pack = Pack {
            root_pem: read(&flash.join(ROOT_FILE))?,
            chain_pem: read(&flash.join(CHAIN_FILE))?,
            key_pem: zeroize::Zeroizing::new(read(&self.secure_key()).with_context(|| {
                "flash holds a certificate without a key, and the secure element has none"
            })?),
        };
        pack.device_cert_der()?;
        Ok(Some(pack))
    }

    /// Generates a key in the secure element (kept as pending until its
    /// certificate is installed) and returns a CSR signed with it.
    fn generate_key(
        &self,
        request: &certline_device_protocol::KeyRequest,
        faults: &Faults,
    ) -> Result<Vec<u8>, String> {
        if !self.keygen {
            return Err("this device has no secure element: it cannot generate its own key (start it with --keygen)".into());
        }
        if request.device_id != self.id.to_string() {
            return Err(format!(
                "key request is for {}, this device is {}",
                request.device_id, self.id
            ));
        }
        let algorithm = match request.algorithm.as_str() {
            "p256" => KeyAlgorithm::P256,
            "p384" => KeyAlgorithm::P384,
            "ed25519" => KeyAlgorithm::Ed25519,
            other => return Err(format!("cannot generate a key of algorithm {other:?}")),
        };
        let (key, csr) = crate::pki::csr::generate(algorithm, &self.id.to_string())
            .map_err(|e| format!("key generation failed: {e:#}"))?;
        let kept = if faults.csr_for_other_key {
            crate::pki::csr::generate(algorithm, &self.id.to_string())
                .map_err(|e| format!("key generation failed: {e:#}"))?
                .0
        } else {
            key
        };
        let secure = Self::secure(&self.dir);
        std::fs::create_dir_all(&secure).map_err(|e| format!("secure element: {e}"))?;
        let pem = crate::pki::to_pem("PRIVATE KEY", &kept);
        write_atomic(&self.pending_key(), pem.as_bytes(), 0o600)
            .map_err(|e| format!("secure element: {e:#}"))?;
        Ok(csr)
    }

    /// Checks a pack the way the device's firmware would before writing it.
    pub fn check_pack(&self, pack: &certline_device_protocol::Pack) -> Result<Pack, String> {
        if pack.device_id != self.id.to_string() {
            return Err(format!(
                "pack is for {}, this device is {}",
                pack.device_id, self.id
            ));
        }
        let device_key = pack.key_pem.is_none();
        let key_pem = match &pack.key_pem {
            Some(key) => key.clone(),
            None if !self.keygen => {
                return Err("the pack holds no key, and this device has no secure element that generated one".into())
            }
            None => std::fs::read_to_string(self.pending_key())
                .or_else(|_| std::fs::read_to_string(self.secure_key()))
                .map_err(|_| {
                    "the pack holds no key, and this device generated none (ask it to generate-key first)"
                        .to_string()
                })?,
        };
        let parsed = Pack {
            root_pem: pack.root_pem.clone(),
            chain_pem: pack.chain_pem.clone(),
            key_pem: zeroize::Zeroizing::new(key_pem),
        };
        let identity = parsed
            .identity()
            .map_err(|e| format!("the pack's certificate is unusable: {e:#}"))?;
        if identity.id != self.id {
            return Err(format!(
                "the pack's certificate names {}, this device is {}",
                identity.id, self.id
            ));
        }
        let key = parsed
            .key_pkcs8_der()
            .map_err(|e| format!("the pack's key is unusable: {e:#}"))?;
        let cert = parsed.device_cert_der().map_err(|e| format!("{e:#}"))?;
        let probe = b"self-test";
        let lying = device_key && self.keygen_lies;
        if !lying {
            crate::link::pop::sign(&key, probe)
                .and_then(|sig| crate::link::pop::verify(&cert, probe, &sig))
                .map_err(|_| {
                    if device_key {
                        "the certificate is not for the key this device generated".to_string()
                    } else {
                        "the pack's key does not belong to its certificate".to_string()
                    }
                })?;
        }
        Ok(parsed)
    }

    /// Writes the identity into flash: a complete new folder, synced, swapped in
    /// by renames; [`Self::recover_flash`] repairs a swap cut short.
    /// A pack whose key the device generated goes into flash without it;
    /// its pending key becomes the secure element's key.
    pub fn write_flash(&self, pack: &Pack, device_key: bool) -> anyhow::Result<()> {
        let flash = Self::flash(&self.dir);
        let new = self.new_flash();
        let _ = std::fs::remove_dir_all(&new);
        std::fs::create_dir(&new).with_context(|| format!("cannot create {}", new.display()))?;
        write_synced(&new.join(ROOT_FILE), pack.root_pem.as_bytes(), 0o644)?;
        write_synced(&new.join(CHAIN_FILE), pack.chain_pem.as_bytes(), 0o644)?;
        if device_key {
            if self.pending_key().exists() {
                std::fs::rename(self.pending_key(), self.secure_key())
                    .context("cannot keep the generated key in the secure element")?;
                sync_dir(&Self::secure(&self.dir))?;
            }
        } else {
            write_synced(&new.join(KEY_FILE), pack.key_pem.as_bytes(), 0o600)?;
        }
        sync_dir(&new)?;
        if flash.exists() {
            std::fs::rename(&flash, self.old_flash()).context("cannot move the old flash aside")?;
        }
        std::fs::rename(&new, &flash).context("cannot swap in the new flash")?;
        sync_dir(&self.dir)?;
        let _ = std::fs::remove_dir_all(self.old_flash());
        Ok(())
    }

    fn identity(&self, faults: &Faults) -> Result<Identity, String> {
        let fingerprint = match self.flash_pack() {
            Ok(Some(p)) => Some(
                p.fingerprint()
                    .map_err(|e| format!("flash is unreadable: {e:#}"))?,
            ),
            Ok(None) => None,
            Err(e) => return Err(format!("flash is unreadable: {e:#}")),
        };
        let fingerprint = fingerprint.map(|f| {
            if faults.corrupt_readback {
                corrupt(&f)
            } else {
                f
            }
        });
        Ok(Identity {
            device_id: faults
                .report_id
                .clone()
                .unwrap_or_else(|| self.id.to_string()),
            fingerprint,
        })
    }

    fn sign(&self, challenge: &[u8]) -> Result<Vec<u8>, String> {
        if challenge.len() > certline_device_protocol::MAX_CHALLENGE {
            return Err(format!(
                "challenge of {} bytes is too long",
                challenge.len()
            ));
        }
        let pack = self
            .flash_pack()
            .map_err(|e| format!("flash is unreadable: {e:#}"))?
            .ok_or_else(|| "no identity in flash to sign with".to_string())?;
        let key = pack.key_pkcs8_der().map_err(|e| format!("{e:#}"))?;
        crate::link::pop::sign(&key, challenge).map_err(|e| format!("{e:#}"))
    }

    /// Serves one link session until the line closes it. `bad_crc` is the
    /// number of corrupt frames still to send (it counts down across sessions).
    pub fn serve(
        &self,
        link: &mut dyn DeviceLink,
        protocol: Protocol,
        faults: &Faults,
        bad_crc: &mut u32,
        events: &mut dyn FnMut(&str),
    ) -> SessionEnd {
        match protocol {
            Protocol::Xml => {
                self.serve_on(&mut XmlEndpoint::new(AsTransport(link)), faults, events)
            }
            Protocol::Tlv => {
                let mut ep = TlvEndpoint::new(AsTransport(link));
                ep.corrupt_crcs = *bad_crc;
                let end = self.serve_on(&mut ep, faults, events);
                *bad_crc = ep.corrupt_crcs;
                end
            }
        }
    }

    fn serve_on<E: DeviceSide + RawWrite>(
        &self,
        ep: &mut E,
        faults: &Faults,
        events: &mut dyn FnMut(&str),
    ) -> SessionEnd {
        let mut garble = faults.garble;
        loop {
            let request = match ep.recv_request(IDLE_TIMEOUT.as_millis() as u32) {
                Ok(r) => r,
                Err(Error::Link(LinkFailure::Closed | LinkFailure::Timeout)) => {
                    return SessionEnd::Closed
                }
                Err(Error::Link(LinkFailure::Io(e))) => {
                    events(&format!("link error: {e}"));
                    return SessionEnd::Closed;
                }
                Err(e) => {
                    events(&format!("bad request: {e}"));
                    if ep.send_answer(&Answer::Fault(e.to_string())).is_err() {
                        return SessionEnd::Closed;
                    }
                    continue;
                }
            };
            std::thread::sleep(faults.delay);
            if garble {
                garble = false;
                events("sent a garbled answer (fault knob)");
                let _ = ep.raw_write(b"\xde\xad\xbe\xef garbled\r\n\r\n");
                continue;
            }
            let chip = exec::Chip {
                device: self,
                faults,
            };
            let answers = match request {
                Request::ReadIdentity => match chip.identity() {
                    Ok(id) => {
                        events(&format!(
                            "read-identity: {} {}",
                            id.device_id,
                            id.fingerprint.as_deref().unwrap_or("(no identity)")
                        ));
                        vec![Answer::Identity(id)]
                    }
                    Err(e) => vec![Answer::Fault(e)],
                },
                Request::Sign(challenge) => match chip.sign(&challenge) {
                    Ok(sig) => vec![Answer::Signature(sig)],
                    Err(e) => vec![Answer::Fault(e)],
                },
                Request::GenerateKey(request) => match self.generate_key(&request, faults) {
                    Ok(_) if faults.drop_after_keygen => {
                        events("generated a key, dropping the link before answering (fault knob)");
                        return SessionEnd::Dropped;
                    }
                    Ok(csr) => {
                        events(&format!(
                            "generated a {} key; sent its CSR",
                            request.algorithm
                        ));
                        vec![Answer::Csr(csr)]
                    }
                    Err(e) => {
                        events(&format!("generate-key refused: {e}"));
                        vec![Answer::Fault(e)]
                    }
                },
                Request::Write(pack) => {
                    match chip.check(&pack) {
                        Err(reason) => {
                            events(&format!("write refused: {reason}"));
                            vec![Answer::Failed(reason)]
                        }
                        Ok(()) => {
                            if ep.send_answer(&Answer::Received).is_err() {
                                return SessionEnd::Closed;
                            }
                            events("received");
                            if faults.drop_after_received {
                                events("dropping the link after received (fault knob); flash untouched");
                                return SessionEnd::Dropped;
                            }
                            match chip.store(&pack) {
                                Ok(fingerprint) => {
                                    events(&format!("written: {fingerprint}"));
                                    vec![Answer::Written]
                                }
                                Err(reason) => {
                                    if faults.fail_write.as_deref() == Some(reason.as_str()) {
                                        events(&format!("write failed (fault knob): {reason}"));
                                    }
                                    vec![Answer::Failed(reason)]
                                }
                            }
                        }
                    }
                }
            };
            for a in answers {
                if ep.send_answer(&a).is_err() {
                    return SessionEnd::Closed;
                }
            }
        }
    }
}

/// Writing bytes past the protocol (the garble knob).
trait RawWrite {
    fn raw_write(&mut self, bytes: &[u8]) -> Result<(), LinkFailure>;
}

impl RawWrite for XmlEndpoint<AsTransport<'_>> {
    fn raw_write(&mut self, bytes: &[u8]) -> Result<(), LinkFailure> {
        certline_device_protocol::Transport::write(self.transport(), bytes)
    }
}

impl RawWrite for TlvEndpoint<AsTransport<'_>> {
    fn raw_write(&mut self, bytes: &[u8]) -> Result<(), LinkFailure> {
        certline_device_protocol::Transport::write(self.transport(), bytes)
    }
}

/// A fingerprint with its first digit changed.
fn corrupt(fingerprint: &str) -> String {
    let mut chars: Vec<char> = fingerprint.chars().collect();
    if let Some(c) = chars.first_mut() {
        *c = if *c == '0' { '1' } else { '0' };
    }
    chars.into_iter().collect()
}

fn write_synced(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Replaces one file atomically: a synced temporary file renamed over it.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, bytes, mode)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}
