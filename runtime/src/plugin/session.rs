//! One device operation: a fresh store and instance with the operation's
//! fuel, memory cap and deadline, the device link lent to the plugin for the
//! calls, and the calls themselves (read the identity, write and check a
//! pack, verify), each turning a trap into the fault that caused it.

use std::time::{Duration, Instant};

use wasmtime::{Store, Trap};

use super::bindings::{self, Instance};
use super::sandbox::{plugin_text, HostState, Violation};
use super::{DeviceIdentity, Fault, OpError, Plugin, Precheck, WriteJob, WriteReport, EPOCH_TICK};
use crate::link::{DeviceLink, LinkFailure};
use crate::pki::id::DeviceId;
use crate::pki::profile::KeyAlgorithm;

/// One store with one instance: the calls of one device operation.
pub(super) struct Session<'p> {
    plugin: &'p Plugin,
    label: String,
    store: Store<HostState>,
    instance: Instance,
    instantiate: Duration,
}

impl Plugin {
    /// Runs `f` in a fresh store with a fresh instance. The link (if any) is
    /// moved into the store for the calls and put back afterwards, whatever
    /// happened.
    pub(super) fn with_session<R>(
        &self,
        label: &str,
        mut link: Option<&mut Box<dyn DeviceLink>>,
        f: impl FnOnce(&mut Session<'_>) -> Result<R, OpError>,
    ) -> Result<R, OpError> {
        let limits = self.engine.limits;
        let started = Instant::now();
        let lent = link.as_deref_mut().map(take);
        let state = HostState::new(label, lent, started + limits.deadline, limits.memory);
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(epoch_ticks(limits.deadline));
        let instance = store
            .set_fuel(limits.fuel)
            .and_then(|()| self.bindings.instantiate(&mut store));
        let (result, mut store) = match instance {
            Ok(instance) => {
                let mut s = Session {
                    plugin: self,
                    label: label.to_string(),
                    store,
                    instance,
                    instantiate: started.elapsed(),
                };
                (f(&mut s), s.store)
            }
            Err(e) => {
                let fault = Fault::Trap {
                    call: "instantiate",
                    detail: e.root_cause().to_string(),
                };
                (
                    Err(OpError {
                        plugin: label.to_string(),
                        fault,
                        received: false,
                    }),
                    store,
                )
            }
        };
        if let (Some(slot), Some(real)) = (link, store.data_mut().link.take()) {
            *slot = real;
        }
        result
    }

    /// Asks the device which identity it holds. `link` is lent to the plugin
    /// for the call.
    pub fn read_identity(&self, link: &mut Box<dyn DeviceLink>) -> Result<DeviceIdentity, OpError> {
        self.with_session(self.name(), Some(link), |s| s.read_identity())
    }

    /// Writes `job` to the device in one store: (optionally) checks the device's
    /// id, writes the pack, reads the identity back and compares it with the
    /// pack, and has the device prove it holds the new key.
    pub fn write(
        &self,
        link: &mut Box<dyn DeviceLink>,
        job: &WriteJob,
        precheck: Precheck,
    ) -> Result<WriteReport, OpError> {
        let started = Instant::now();
        self.with_session(self.name(), Some(link), |s| s.write(job, precheck, started))
    }

    /// Checks, in one session, that the device holds the certificate
    /// `cert_der` (issued for `id`) and can use its key: read back,
    /// fingerprint, proof of possession. How a line that stopped in the middle
    /// of a write finds out whether the write happened.
    pub fn verify(
        &self,
        link: &mut Box<dyn DeviceLink>,
        id: &DeviceId,
        cert_der: &[u8],
    ) -> Result<DeviceIdentity, OpError> {
        let fingerprint = crate::pki::fingerprint(cert_der);
        self.with_session(self.name(), Some(link), |s| {
            s.verify(&id.to_string(), &fingerprint, cert_der)
        })
    }

    /// Has the device generate a key of `algorithm` for `id` and return its
    /// CSR (DER), checked here: at most 16 KiB, DER, a signature that
    /// verifies with the key it carries (the device holds that key), the
    /// requested algorithm. Its names are never used.
    pub fn generate_key(
        &self,
        link: &mut Box<dyn DeviceLink>,
        id: &DeviceId,
        algorithm: KeyAlgorithm,
    ) -> Result<Vec<u8>, OpError> {
        self.with_session(self.name(), Some(link), |s| s.generate_key(id, algorithm))
    }

    /// Store creation, instantiation and one trivial call, without a device:
    /// the host's own cost per operation (for the benchmark).
    pub fn overhead_probe(&self) -> Result<(Duration, Duration), OpError> {
        let started = Instant::now();
        self.with_session(self.name(), None, |s| {
            let instantiated = started.elapsed();
            s.call("info", |inst, store| inst.info(store))?;
            Ok((instantiated, started.elapsed()))
        })
    }
}

/// What wasmtime says when a call returns still holding a borrowed handle
/// (the component model forbids it).
const KEPT_BORROW: &str = "borrow handles still remain at the end of the call";

/// Epoch ticks covering `left` (at least one).
fn epoch_ticks(left: Duration) -> u64 {
    (left.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

fn take(link: &mut Box<dyn DeviceLink>) -> Box<dyn DeviceLink> {
    std::mem::replace(link, Box::new(Detached))
}

/// Stands in for a link while the plugin's store holds the real one.
struct Detached;

impl DeviceLink for Detached {
    fn read(&mut self, _: usize, _: Duration) -> Result<Vec<u8>, LinkFailure> {
        Err(LinkFailure::Closed)
    }
    fn write_within(&mut self, _: &[u8], _: Duration) -> Result<(), LinkFailure> {
        Err(LinkFailure::Closed)
    }
    fn close(&mut self) {}
    fn describe(&self) -> String {
        "detached link".into()
    }
}

impl Session<'_> {
    fn fail(&self, fault: Fault) -> OpError {
        OpError {
            plugin: self.label.clone(),
            fault,
            received: self.store.data().received,
        }
    }

    /// One call into the plugin with a full fuel budget and what is left of
    /// the operation's deadline; a trap becomes the fault that caused it.
    pub(super) fn call<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&Instance, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, OpError> {
        let fuel = self.plugin.engine.limits.fuel;
        let secs = self.plugin.engine.limits.deadline.as_secs();
        let data = self.store.data_mut();
        data.limiter.memory_hit = None;
        data.last_error = None;
        data.call = call;
        data.call_seq += 1;
        let left = data.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.fail(Fault::Deadline { call, secs }));
        }
        self.store.set_epoch_deadline(epoch_ticks(left));
        if let Err(e) = self.store.set_fuel(fuel) {
            return Err(self.fail(Fault::Host(e.to_string())));
        }
        match f(&self.instance, &mut self.store) {
            Ok(r) => Ok(r),
            Err(e) => {
                let violation = self.store.data_mut().violation.take();
                let fault = if let Some(v) = violation {
                    match v {
                        Violation::Deadline => Fault::Deadline { call, secs },
                        Violation::Rule(rule) => Fault::Rule { call, rule },
                    }
                } else if let Some(asked) = self.store.data().limiter.memory_hit {
                    Fault::Memory {
                        call,
                        cap: self.store.data().limiter.memory_cap >> 20,
                        asked: asked >> 20,
                    }
                } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::OutOfFuel)) {
                    Fault::OutOfFuel { call, fuel }
                } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                    Fault::Deadline { call, secs }
                } else if e.root_cause().to_string().contains(KEPT_BORROW) {
                    Fault::Rule {
                        call,
                        rule: format!(
                            "it kept the device link it was lent past the end of {call} (a link is lent for one call)"
                        ),
                    }
                } else {
                    let mut detail = e.root_cause().to_string();
                    if let Some(said) = &self.store.data().last_error {
                        detail.push_str(&format!("; the plugin logged before it stopped: {said}"));
                    }
                    Fault::Trap { call, detail }
                };
                Err(self.fail(fault))
            }
        }
    }

    /// A call that returns the WIT `result<T, error>`.
    fn device_call<R>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(
            &Instance,
            &mut Store<HostState>,
            wasmtime::component::Resource<bindings::LinkHandle>,
        ) -> wasmtime::Result<Result<R, bindings::PluginError>>,
    ) -> Result<R, OpError> {
        // The link is lent to this call only: its table entry goes when the
        // call ends, so a handle the plugin kept names nothing later.
        let mut lent = None;
        let answer = self.call(call, |inst, store| {
            let link = store.data_mut().link_resource()?;
            lent = Some(link.rep());
            f(inst, store, link)
        });
        if let Some(rep) = lent {
            self.store
                .data_mut()
                .end_link_resource(wasmtime::component::Resource::new_own(rep));
        }
        match answer? {
            Ok(r) => Ok(r),
            Err(e) => Err(self.fail(match e {
                bindings::PluginError::Link(l) => Fault::Link {
                    call,
                    failure: match l {
                        bindings::LinkError::Timeout => LinkFailure::Timeout,
                        bindings::LinkError::Closed => LinkFailure::Closed,
                        bindings::LinkError::Io(m) => LinkFailure::Io(plugin_text(&m)),
                    },
                },
                bindings::PluginError::Protocol(detail) => Fault::Protocol {
                    call,
                    detail: plugin_text(&detail),
                },
                bindings::PluginError::Device(reason) => Fault::Device {
                    call,
                    reason: plugin_text(&reason),
                },
            })),
        }
    }

    fn read_identity(&mut self) -> Result<DeviceIdentity, OpError> {
        let id = self.device_call("read-identity", |inst, store, link| {
            inst.read_identity(store, link)
        })?;
        let malformed = |detail: String| Fault::Malformed {
            call: "read-identity",
            detail,
        };
        if let Err(e) = DeviceId::parse(&id.device_id) {
            return Err(self.fail(malformed(plugin_text(&e.to_string()))));
        }
        if let Some(f) = &id.fingerprint {
            if !certline_device_protocol::hex::is_fingerprint(f) {
                return Err(self.fail(malformed(format!(
                    "fingerprint \"{}\" is not 64 lowercase hex digits",
                    plugin_text(f)
                ))));
            }
        }
        Ok(DeviceIdentity {
            device_id: id.device_id,
            fingerprint: id.fingerprint,
        })
    }

    fn generate_key(&mut self, id: &DeviceId, algorithm: KeyAlgorithm) -> Result<Vec<u8>, OpError> {
        let request = bindings::KeyRequest {
            device_id: id.to_string(),
            algorithm: match algorithm {
                KeyAlgorithm::P256 => bindings::KeyAlgorithm::P256,
                KeyAlgorithm::P384 => bindings::KeyAlgorithm::P384,
                KeyAlgorithm::Ed25519 => bindings::KeyAlgorithm::Ed25519,
            },
        };
        let der = self.device_call("generate-key", |inst, store, link| {
            inst.generate_key(store, link, &request)
        })?;
        if let Err(e) = crate::pki::csr::verify_for(&der, algorithm) {
            return Err(self.fail(Fault::Csr {
                detail: e.to_string(),
            }));
        }
        Ok(der)
    }

    fn write(
        &mut self,
        job: &WriteJob,
        precheck: Precheck,
        started: Instant,
    ) -> Result<WriteReport, OpError> {
        let expected = job.device_id.to_string();
        let before = match precheck {
            Precheck::CheckId => {
                let before = self.read_identity()?;
                if before.device_id != expected {
                    return Err(self.fail(Fault::WrongDevice {
                        found: before.device_id,
                        expected,
                    }));
                }
                Some(before)
            }
            Precheck::Skip => None,
        };
        self.device_call("write-pack", |inst, store, link| {
            inst.write_pack(store, link, &job.pack)
        })?;
        if !self.store.data().received {
            return Err(self.fail(Fault::Malformed {
                call: "write-pack",
                detail: "it returned ok without reporting that the device received the pack".into(),
            }));
        }
        let read_back = self.verify(&expected, &job.fingerprint, &job.cert_der)?;
        Ok(WriteReport {
            plugin: self.label.clone(),
            device_id: expected,
            before,
            received: true,
            written: true,
            read_back,
            possession_proved: true,
            instantiate: self.instantiate,
            total: started.elapsed(),
        })
    }

    /// Reads the identity back, compares it with `expected` and `fingerprint`,
    /// and has the device prove it holds the key of `cert_der`.
    fn verify(
        &mut self,
        expected: &str,
        fingerprint: &str,
        cert_der: &[u8],
    ) -> Result<DeviceIdentity, OpError> {
        let read_back = self.read_identity()?;
        if read_back.device_id != expected {
            return Err(self.fail(Fault::ReadBack {
                detail: format!(
                    "the device now reports id {}, the pack is for {expected}",
                    read_back.device_id
                ),
            }));
        }
        if read_back.fingerprint.as_deref() != Some(fingerprint) {
            return Err(self.fail(Fault::ReadBack {
                detail: format!(
                    "the device reports certificate {}, the pack's certificate is {fingerprint}",
                    read_back.fingerprint.as_deref().unwrap_or("(none)"),
                ),
            }));
        }
        let mut challenge = [0u8; 32];
        aws_lc_rs::rand::fill(&mut challenge)
            .map_err(|_| self.fail(Fault::Host("no randomness for the challenge".into())))?;
        let sig = self.device_call("prove-possession", |inst, store, link| {
            inst.prove_possession(store, link, &challenge)
        })?;
        if let Err(e) = crate::link::pop::verify(cert_der, &challenge, &sig) {
            return Err(self.fail(Fault::Possession {
                detail: e.to_string(),
            }));
        }
        Ok(read_back)
    }
}
