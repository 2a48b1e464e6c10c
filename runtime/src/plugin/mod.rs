//! The device-plugin host (wasmtime, component model).
//!
//! A vendor's plugin is a WebAssembly component of the `certline:device` world
//! (`wit/`). The host checks the file before wasmtime sees it, reads the
//! interface version from the component's type and refuses one it cannot run,
//! compiles it once and pre-instantiates it once ([`Plugin`]). Every device
//! operation then gets a fresh [`wasmtime::Store`] with a fuel budget per call, a
//! memory cap and a deadline (enforced by epoch interruption inside the
//! plugin's code and by every host call), and the caps of [`sandbox`] on what
//! it may push through the host; so a plugin that traps, loops, hoards memory,
//! floods the link or answers nonsense fails that one operation with an error
//! naming the plugin and the cause ([`OpError`]), and the next operation
//! starts clean. [`folder::PluginFolder`] maps model codes to plugins and
//! hot-reloads them; [`bindings`] holds one module per frozen WIT version.
//!
//! This file holds the types; loading and checking a plugin is in `load.rs`,
//! one device operation (its store, limits and calls) in `session.rs`.

mod bindings;
pub mod cli;
pub mod folder;
mod load;
pub mod sandbox;
mod session;
pub mod template;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::Engine;

use bindings::Bindings;
pub use bindings::{Version, FROZEN, SUPPORTED};
use load::{read_limited, spawn_epoch_ticker};
use sandbox::HostState;

use crate::link::LinkFailure;
use crate::pki::id::DeviceId;
use crate::pki::pack::Pack;

/// Largest plugin file the host reads.
pub const MAX_PLUGIN_BYTES: usize = 32 << 20;

/// What one device operation may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Fuel (about one unit per wasm instruction) for each call into the plugin.
    pub fuel: u64,
    /// Cap on the plugin's linear memory, bytes.
    pub memory: usize,
    /// Wall-clock limit of one device operation (all its calls and link waits).
    pub deadline: Duration,
}

/// How often the engine's epoch advances: the granularity of the deadline
/// inside a plugin's own code.
const EPOCH_TICK: Duration = Duration::from_millis(10);

impl Default for Limits {
    fn default() -> Self {
        // A write through the example plugins takes a few million units; a
        // thousand times that is still well under a second of CPU.
        Limits {
            fuel: 2_000_000_000,
            memory: 64 << 20,
            deadline: Duration::from_secs(60),
        }
    }
}

/// The wasmtime engine and linker shared by every plugin of a host.
pub struct PluginEngine {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
}

impl PluginEngine {
    pub fn new(limits: Limits) -> anyhow::Result<Arc<PluginEngine>> {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
        spawn_epoch_ticker(&engine)?;
        let mut linker = Linker::new(&engine);
        bindings::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        Ok(Arc::new(PluginEngine {
            engine,
            linker,
            limits,
        }))
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }
}

/// Who a plugin says it is, checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub models: Vec<String>,
}

/// A loaded, pre-instantiated plugin.
pub struct Plugin {
    engine: Arc<PluginEngine>,
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub size: usize,
    /// The `certline:device` version it was built against.
    pub interface: Version,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    pub compile_time: Duration,
    pub info: PluginInfo,
    bindings: Bindings,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("info", &self.info)
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn serves(&self, model: &str) -> bool {
        self.info.models.iter().any(|m| m == model)
    }

    /// Refuses this plugin for a model whose devices generate their own key
    /// when it was built against an interface without `generate-key`.
    pub fn check_device_keygen(&self, model: &str) -> Result<(), String> {
        if self.interface >= bindings::DEVICE_KEYGEN {
            return Ok(());
        }
        Err(format!(
            "plugin {} ({}) exports {}@{}, but model {model} generates its keys in the device (keygen = \"device\"), which needs {}@{} or newer (generate-key); rebuild the plugin against the newer interface or set keygen = \"ca\" for {model}",
            self.info.name,
            self.path.display(),
            bindings::PACKAGE,
            self.interface,
            bindings::PACKAGE,
            bindings::DEVICE_KEYGEN,
        ))
    }
}

impl Fault {
    /// The plugin call the fault happened in, when it happened in one.
    pub fn call(&self) -> Option<&'static str> {
        match self {
            Fault::Trap { call, .. }
            | Fault::OutOfFuel { call, .. }
            | Fault::Deadline { call, .. }
            | Fault::Rule { call, .. }
            | Fault::Memory { call, .. }
            | Fault::Malformed { call, .. }
            | Fault::Link { call, .. }
            | Fault::Protocol { call, .. }
            | Fault::Device { call, .. } => Some(call),
            Fault::WrongDevice { .. } => Some("read-identity"),
            Fault::ReadBack { .. } => Some("read-identity"),
            Fault::Possession { .. } => Some("prove-possession"),
            Fault::Csr { .. } => Some("generate-key"),
            Fault::Host(_) => None,
        }
    }
}

/// Why a device operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("trapped in {call}: {detail}")]
    Trap { call: &'static str, detail: String },
    #[error("used up its fuel budget of {fuel} in {call} (is it looping?)")]
    OutOfFuel { call: &'static str, fuel: u64 },
    #[error("timed out: ran past the device operation's deadline of {secs} s in {call} (is it looping or waiting forever?)")]
    Deadline { call: &'static str, secs: u64 },
    #[error("broke a rule of the host in {call}: {rule}")]
    Rule { call: &'static str, rule: String },
    #[error("went over its memory cap of {cap} MiB in {call} (it asked for {asked} MiB)")]
    Memory {
        call: &'static str,
        cap: usize,
        asked: usize,
    },
    #[error("malformed answer from {call}: {detail}")]
    Malformed { call: &'static str, detail: String },
    #[error("link failure in {call}: {failure}")]
    Link {
        call: &'static str,
        failure: LinkFailure,
    },
    #[error("device protocol error in {call}: {detail}")]
    Protocol { call: &'static str, detail: String },
    #[error("the device refused in {call}: {reason}")]
    Device { call: &'static str, reason: String },
    #[error("the device is {found}, but the pack is for {expected} (wrong rating plate scanned?)")]
    WrongDevice { found: String, expected: String },
    #[error("read-back mismatch: {detail}")]
    ReadBack { detail: String },
    #[error("proof of possession failed: {detail}")]
    Possession { detail: String },
    #[error("the device's certificate signing request cannot be used: {detail}")]
    Csr { detail: String },
    #[error("host error: {0}")]
    Host(String),
}

/// A failed device operation: which plugin, what went wrong, and whether the
/// device had confirmed it received the pack (the station needs to know).
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin}: {fault}{}", when(*received, fault))]
pub struct OpError {
    pub plugin: String,
    pub fault: Fault,
    pub received: bool,
}

/// Where in the write the failure came, when the device had the pack:
/// "after received" only for write-pack itself; a failure in the checks
/// that follow a completed write-pack says so instead.
fn when(received: bool, fault: &Fault) -> &'static str {
    if !received {
        return "";
    }
    match fault.call() {
        Some("write-pack") => " (after the device reported \"received\")",
        Some(_) | None => {
            " (write-pack had completed: the device received and stored the pack; this failed in the checks after it)"
        }
    }
}

/// What a device holds, as its plugin reported it (checked).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceIdentity {
    pub device_id: String,
    pub fingerprint: Option<String>,
}

/// A pack ready to write: the PEMs plus what the host checks against.
pub struct WriteJob {
    pub device_id: DeviceId,
    pub fingerprint: String,
    cert_der: Vec<u8>,
    pack: bindings::Pack,
}

impl WriteJob {
    /// The DER of the device certificate being written.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn new(pack: &Pack) -> anyhow::Result<WriteJob> {
        Self::with_key(pack, true)
    }

    /// A job that installs the pack's certificate for the key the device
    /// generated itself (`keygen = "device"`): the pack's key is not sent.
    pub fn for_device_key(pack: &Pack) -> anyhow::Result<WriteJob> {
        Self::with_key(pack, false)
    }

    fn with_key(pack: &Pack, send_key: bool) -> anyhow::Result<WriteJob> {
        let cert_der = pack.device_cert_der()?;
        let identity = pack.identity()?;
        Ok(WriteJob {
            device_id: identity.id.clone(),
            fingerprint: crate::pki::fingerprint(&cert_der),
            cert_der,
            pack: bindings::Pack {
                device_id: identity.id.to_string(),
                root_pem: pack.root_pem.clone(),
                chain_pem: pack.chain_pem.clone(),
                key_pem: send_key.then(|| pack.key_pem.to_string()),
            },
        })
    }
}

/// How a write went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteReport {
    pub plugin: String,
    pub device_id: String,
    /// What the device held before (when the identity was checked first).
    pub before: Option<DeviceIdentity>,
    pub received: bool,
    pub written: bool,
    /// What the device reported after the write; matches the pack.
    pub read_back: DeviceIdentity,
    /// The device signed the host's challenge with the new key.
    pub possession_proved: bool,
    /// Time spent creating the store and instantiating the plugin.
    #[serde(serialize_with = "micros")]
    pub instantiate: Duration,
    #[serde(serialize_with = "micros")]
    pub total: Duration,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}

/// Whether to ask the device who it is before writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precheck {
    /// Read the identity first and refuse to write to another device.
    CheckId,
    /// Send the pack regardless (to test the device's own id check).
    Skip,
}

#[cfg(test)]
mod wording_tests {
    use super::*;

    fn said(fault: Fault, received: bool) -> String {
        OpError {
            plugin: "p".into(),
            fault,
            received,
        }
        .to_string()
    }

    /// "after received" only where it is true: inside write-pack. A trap in
    /// prove-possession (after a complete write) says that instead.
    #[test]
    fn a_failure_names_its_call_and_says_after_received_only_there() {
        let in_write = said(
            Fault::Link {
                call: "write-pack",
                failure: LinkFailure::Closed,
            },
            true,
        );
        assert!(in_write.contains("write-pack"), "{in_write}");
        assert!(
            in_write.contains("after the device reported \"received\""),
            "{in_write}"
        );
        let in_proof = said(
            Fault::Trap {
                call: "prove-possession",
                detail: "unreachable".into(),
            },
            true,
        );
        assert!(
            in_proof.contains("trapped in prove-possession"),
            "{in_proof}"
        );
        assert!(
            !in_proof.contains("after the device reported"),
            "{in_proof}"
        );
        assert!(in_proof.contains("write-pack had completed"), "{in_proof}");
        let before = said(
            Fault::Trap {
                call: "read-identity",
                detail: "unreachable".into(),
            },
            false,
        );
        assert!(!before.contains("write-pack"), "{before}");
    }
}
