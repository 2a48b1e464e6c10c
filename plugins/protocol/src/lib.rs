//! The wire formats of the two example device protocols, written once and used by
//! both ends: the vendor plugins (compiled to wasm32-wasip2) speak the client side,
//! the reference device (`certline device-sim`) speaks the device side.
//!
//! - [`xml`]: an image-forming device's request/response XML envelope (a header,
//!   an action, the pack's parts), length-prefixed on a TCP link.
//! - [`tlv`]: a meter's binary frames (kind, sequence, length, payload, CRC-16)
//!   with acknowledgements and retries on a bad CRC, for a serial link.
//!
//! Both map onto the same [`Request`]/[`Answer`] messages, so the client flows in
//! [`client`] (read the identity, write a pack, prove possession) exist once.
//! Both run over a [`Transport`]: the host's mutually authenticated link.

pub mod client;
pub mod hex;
pub mod tlv;
pub mod xml;

use std::fmt;

/// The bytes a device signs to prove it holds its key: this context, a zero byte,
/// then the host's challenge. The context keeps a device from being used as a
/// signing oracle for anything else.
pub const POP_CONTEXT: &[u8] = b"certline-proof-of-possession-v1";

/// Longest challenge a host may send.
pub const MAX_CHALLENGE: usize = 256;

/// The message a device signs for `challenge`.
pub fn pop_message(challenge: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(POP_CONTEXT.len() + 1 + challenge.len());
    msg.extend_from_slice(POP_CONTEXT);
    msg.push(0);
    msg.extend_from_slice(challenge);
    msg
}

/// How a transport read or write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFailure {
    Timeout,
    Closed,
    Io(String),
}

impl fmt::Display for LinkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkFailure::Timeout => f.write_str("timed out waiting for the other side"),
            LinkFailure::Closed => f.write_str("link closed by the other side"),
            LinkFailure::Io(e) => write!(f, "link error: {e}"),
        }
    }
}

/// A byte stream to the other side (the host's link resource in a plugin; a TLS
/// stream in the device simulator).
pub trait Transport {
    /// At least one byte, at most `max`; `Timeout` if nothing came in `timeout_ms`.
    fn read(&mut self, max: usize, timeout_ms: u32) -> Result<Vec<u8>, LinkFailure>;
    fn write(&mut self, data: &[u8]) -> Result<(), LinkFailure>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn read(&mut self, max: usize, timeout_ms: u32) -> Result<Vec<u8>, LinkFailure> {
        (**self).read(max, timeout_ms)
    }
    fn write(&mut self, data: &[u8]) -> Result<(), LinkFailure> {
        (**self).write(data)
    }
}

/// A transport over bytes in memory, for tests and fuzzing: reads what is
/// queued in `rx` (then `Closed`), collects writes in `tx`.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    pub rx: std::collections::VecDeque<u8>,
    pub tx: Vec<u8>,
}

impl Replay {
    /// A transport whose other side has sent `bytes`.
    pub fn new(bytes: &[u8]) -> Replay {
        Replay {
            rx: bytes.iter().copied().collect(),
            tx: Vec::new(),
        }
    }
}

impl Transport for Replay {
    fn read(&mut self, max: usize, _timeout_ms: u32) -> Result<Vec<u8>, LinkFailure> {
        if self.rx.is_empty() {
            return Err(LinkFailure::Closed);
        }
        let n = max.clamp(1, self.rx.len());
        Ok(self.rx.drain(..n).collect())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), LinkFailure> {
        self.tx.extend_from_slice(data);
        Ok(())
    }
}

/// Why an exchange failed (mirrors the WIT `error` variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The transport failed.
    Link(LinkFailure),
    /// The other side sent something that does not parse or does not fit.
    Protocol(String),
    /// The device understood and refused, with its reason.
    Device(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Link(e) => e.fmt(f),
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::Device(e) => write!(f, "device refused: {e}"),
        }
    }
}

impl From<LinkFailure> for Error {
    fn from(e: LinkFailure) -> Self {
        Error::Link(e)
    }
}

/// Bytes read from the transport but not yet consumed.
#[derive(Default)]
pub(crate) struct Inbox {
    pub(crate) buf: Vec<u8>,
}

impl Inbox {
    /// Reads until `buf` holds at least `n` bytes.
    pub(crate) fn fill(
        &mut self,
        t: &mut impl Transport,
        n: usize,
        timeout_ms: u32,
    ) -> Result<(), LinkFailure> {
        while self.buf.len() < n {
            let got = t.read(n - self.buf.len(), timeout_ms)?;
            self.buf.extend_from_slice(&got);
        }
        Ok(())
    }
}

pub(crate) fn protocol<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error::Protocol(msg.into()))
}

/// An identity to write, all PEM. Without a key for a device that generated
/// its own (`Request::GenerateKey`): it installs the certificate for the key
/// it holds, and refuses one for another key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pack {
    pub device_id: String,
    pub root_pem: String,
    pub chain_pem: String,
    pub key_pem: Option<String>,
}

/// Longest certificate signing request a device may answer (DER bytes).
pub const MAX_CSR: usize = 16 * 1024;

/// What the host asks a device to generate: a key of `algorithm` (`p256`,
/// `p384` or `ed25519`) for the device whose id is `device_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequest {
    pub device_id: String,
    pub algorithm: String,
}

/// What a device reports it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub device_id: String,
    /// SHA-256 hex of the identity certificate's DER, if the flash holds one.
    pub fingerprint: Option<String>,
}

/// What the host side asks a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    ReadIdentity,
    Write(Pack),
    Sign(Vec<u8>),
    /// Generate a key in the device's protected store; answer a CSR.
    GenerateKey(KeyRequest),
}

impl Request {
    pub fn name(&self) -> &'static str {
        match self {
            Request::ReadIdentity => "read-identity",
            Request::Write(_) => "write",
            Request::Sign(_) => "sign",
            Request::GenerateKey(_) => "generate-key",
        }
    }
}

/// What a device answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Identity(Identity),
    /// The pack arrived whole and is for this device; flash not written yet.
    Received,
    /// Flash written.
    Written,
    /// The write failed or was refused, with the device's reason.
    Failed(String),
    Signature(Vec<u8>),
    /// A PKCS#10 request (DER) for the key the device just generated.
    Csr(Vec<u8>),
    /// The device could not serve the request at all (did not parse, no key to
    /// sign with), with its reason.
    Fault(String),
}

impl Answer {
    pub fn name(&self) -> &'static str {
        match self {
            Answer::Identity(_) => "identity",
            Answer::Received => "received",
            Answer::Written => "written",
            Answer::Failed(_) => "failed",
            Answer::Signature(_) => "signature",
            Answer::Csr(_) => "csr",
            Answer::Fault(_) => "fault",
        }
    }
}

/// The host's end of a protocol.
pub trait ClientSide {
    fn send_request(&mut self, req: &Request) -> Result<(), Error>;
    fn recv_answer(&mut self, timeout_ms: u32) -> Result<Answer, Error>;
}

/// An endpoint lent for a while (the SDK keeps one per session and lends it
/// to each call).
impl<C: ClientSide + ?Sized> ClientSide for &mut C {
    fn send_request(&mut self, req: &Request) -> Result<(), Error> {
        (**self).send_request(req)
    }
    fn recv_answer(&mut self, timeout_ms: u32) -> Result<Answer, Error> {
        (**self).recv_answer(timeout_ms)
    }
}

/// The device's end of a protocol.
pub trait DeviceSide {
    /// Waits up to `timeout_ms` for the next request. A request that does not
    /// parse is `Err(Protocol)`; the device should answer it with a fault.
    fn recv_request(&mut self, timeout_ms: u32) -> Result<Request, Error>;
    fn send_answer(&mut self, answer: &Answer) -> Result<(), Error>;
}
