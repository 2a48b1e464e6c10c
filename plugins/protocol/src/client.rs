//! The host-side flows, the same for every protocol: ask, then check that the
//! answer is the one this question allows.

use crate::{
    Answer, ClientSide, Error, Identity, KeyRequest, Pack, Request, MAX_CHALLENGE, MAX_CSR,
};

/// How long a device may take to answer a question.
pub const ANSWER_TIMEOUT_MS: u32 = 10_000;
/// How long a device may take to write its flash after it received a pack.
pub const WRITE_TIMEOUT_MS: u32 = 30_000;

fn unexpected<T>(wanted: &str, got: Answer) -> Result<T, Error> {
    match got {
        Answer::Failed(reason) | Answer::Fault(reason) => Err(Error::Device(reason)),
        other => Err(Error::Protocol(format!(
            "expected {wanted} from the device, got {}",
            other.name()
        ))),
    }
}

/// Reads the identity the device holds.
pub fn read_identity(c: &mut (impl ClientSide + ?Sized)) -> Result<Identity, Error> {
    c.send_request(&Request::ReadIdentity)?;
    match c.recv_answer(ANSWER_TIMEOUT_MS)? {
        Answer::Identity(id) => Ok(id),
        other => unexpected("an identity", other),
    }
}

/// Writes `pack`; calls `on_received` when the device confirms it has the pack.
pub fn write_pack(
    c: &mut (impl ClientSide + ?Sized),
    pack: Pack,
    mut on_received: impl FnMut(),
) -> Result<(), Error> {
    c.send_request(&Request::Write(pack))?;
    match c.recv_answer(ANSWER_TIMEOUT_MS)? {
        Answer::Received => on_received(),
        other => return unexpected("\"received\"", other),
    }
    match c.recv_answer(WRITE_TIMEOUT_MS)? {
        Answer::Written => Ok(()),
        other => unexpected("\"written\"", other),
    }
}

/// Has the device generate a key and answer its CSR (DER).
pub fn generate_key(
    c: &mut (impl ClientSide + ?Sized),
    request: KeyRequest,
) -> Result<Vec<u8>, Error> {
    c.send_request(&Request::GenerateKey(request))?;
    match c.recv_answer(WRITE_TIMEOUT_MS)? {
        Answer::Csr(csr) if csr.len() > MAX_CSR => Err(Error::Protocol(format!(
            "the device's CSR is {} bytes, more than {MAX_CSR}",
            csr.len()
        ))),
        Answer::Csr(csr) => Ok(csr),
        other => unexpected("a CSR", other),
    }
}

/// Has the device sign `challenge` with the key in its flash.
pub fn prove_possession(
    c: &mut (impl ClientSide + ?Sized),
    challenge: &[u8],
) -> Result<Vec<u8>, Error> {
    if challenge.len() > MAX_CHALLENGE {
        return Err(Error::Protocol(format!(
            "challenge of {} bytes is longer than {MAX_CHALLENGE}",
            challenge.len()
        )));
    }
    c.send_request(&Request::Sign(challenge.to_vec()))?;
    match c.recv_answer(ANSWER_TIMEOUT_MS)? {
        Answer::Signature(sig) => Ok(sig),
        other => unexpected("a signature", other),
    }
}
