//! The meter protocol: binary frames for a serial link.
//!
//! ```text
//! frame   = C7 4C | kind u8 | seq u8 | len u16 BE | payload (len bytes) | crc u16 BE
//! crc     = CRC-16/CCITT-FALSE over kind, seq, len and payload
//! payload = { tag u8 | len u16 BE | value }*
//! ```
//!
//! Every frame except ACK and NAK is acknowledged: the receiver answers ACK with
//! the frame's seq, or NAK if the CRC is wrong, and the sender sends the frame
//! again, up to [`RETRIES`] times. A frame whose header cannot be read (wrong
//! magic, a length over [`MAX_PAYLOAD`]) is garbled: that ends the exchange, since
//! the stream can no longer be trusted to be in step.

use crate::{protocol, Answer, ClientSide, DeviceSide, Error, Identity, Inbox, LinkFailure, Pack};
use crate::{KeyRequest, Request, Transport};

pub const MAGIC: [u8; 2] = [0xC7, 0x4C];
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// How many times a frame is sent again after a NAK (and how many bad frames a
/// receiver takes before it gives up).
pub const RETRIES: u32 = 3;
/// How long a sender waits for the ACK of a frame.
pub const ACK_TIMEOUT_MS: u32 = 5_000;
const HEADER: usize = 6;

pub mod kind {
    pub const ACK: u8 = 0x06;
    pub const NAK: u8 = 0x15;
    pub const READ_ID: u8 = 0x10;
    pub const IDENTITY: u8 = 0x11;
    pub const WRITE: u8 = 0x20;
    pub const STATUS: u8 = 0x21;
    pub const SIGN: u8 = 0x30;
    pub const SIGNATURE: u8 = 0x31;
    pub const GENERATE_KEY: u8 = 0x40;
    pub const CSR: u8 = 0x41;
    pub const FAULT: u8 = 0x7F;
}

pub mod tag {
    pub const DEVICE_ID: u8 = 0x01;
    pub const FINGERPRINT: u8 = 0x02;
    pub const ROOT: u8 = 0x03;
    pub const CHAIN: u8 = 0x04;
    pub const KEY: u8 = 0x05;
    /// One byte: see [`super::status`].
    pub const STATUS: u8 = 0x06;
    pub const REASON: u8 = 0x07;
    pub const CHALLENGE: u8 = 0x08;
    pub const SIGNATURE: u8 = 0x09;
    pub const ALGORITHM: u8 = 0x0A;
    pub const CSR: u8 = 0x0B;
}

pub mod status {
    pub const RECEIVED: u8 = 1;
    pub const WRITTEN: u8 = 2;
    pub const FAILED: u8 = 3;
}

/// CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); check value 0x29B1.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Encodes one frame. `payload` must not exceed [`MAX_PAYLOAD`].
pub fn encode_frame(kind: u8, seq: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_PAYLOAD, "payload over MAX_PAYLOAD");
    let mut f = Vec::with_capacity(HEADER + payload.len() + 2);
    f.extend_from_slice(&MAGIC);
    f.push(kind);
    f.push(seq);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(payload);
    let crc = crc16(&f[2..]);
    f.extend_from_slice(&crc.to_be_bytes());
    f
}

/// Appends one tag-length-value item.
pub fn put(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// The items of a payload, in order.
pub fn items(payload: &[u8]) -> Result<Vec<(u8, &[u8])>, Error> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.len() < 3 {
            return protocol(format!("truncated item header ({} bytes left)", rest.len()));
        }
        let (tag, len) = (rest[0], u16::from_be_bytes([rest[1], rest[2]]) as usize);
        if rest.len() < 3 + len {
            return protocol(format!(
                "item 0x{tag:02x} says {len} bytes, only {} left",
                rest.len() - 3
            ));
        }
        out.push((tag, &rest[3..3 + len]));
        rest = &rest[3 + len..];
    }
    Ok(out)
}

fn find<'a>(items: &[(u8, &'a [u8])], tag: u8) -> Option<&'a [u8]> {
    items.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v)
}

fn bytes<'a>(items: &[(u8, &'a [u8])], tag: u8, what: &str) -> Result<&'a [u8], Error> {
    find(items, tag)
        .ok_or_else(|| Error::Protocol(format!("frame has no {what} (tag 0x{tag:02x})")))
}

fn text(items: &[(u8, &[u8])], tag: u8, what: &str) -> Result<String, Error> {
    let v = bytes(items, tag, what)?;
    String::from_utf8(v.to_vec()).map_err(|_| Error::Protocol(format!("{what} is not UTF-8")))
}

/// A frame as read: its CRC already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub seq: u8,
    pub payload: Vec<u8>,
}

enum ReadError {
    Link(LinkFailure),
    /// The header cannot be read; the stream is out of step.
    Garbled(String),
    /// Header fine, CRC wrong: worth a NAK.
    BadCrc {
        seq: u8,
    },
}

impl From<LinkFailure> for ReadError {
    fn from(e: LinkFailure) -> Self {
        ReadError::Link(e)
    }
}

/// One end of the TLV protocol over a transport.
pub struct TlvEndpoint<T> {
    transport: T,
    inbox: Inbox,
    next_seq: u8,
    /// Fault knob of the reference device: the CRC of this many outgoing data
    /// frames is sent wrong (counting down).
    pub corrupt_crcs: u32,
}

impl<T: Transport> TlvEndpoint<T> {
    pub fn new(transport: T) -> Self {
        TlvEndpoint {
            transport,
            inbox: Inbox::default(),
            next_seq: 0,
            corrupt_crcs: 0,
        }
    }

    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    fn read_frame(&mut self, timeout_ms: u32) -> Result<Frame, ReadError> {
        self.inbox.fill(&mut self.transport, HEADER, timeout_ms)?;
        let h = &self.inbox.buf[..HEADER];
        if h[..2] != MAGIC {
            return Err(ReadError::Garbled(format!(
                "garbled frame: starts {:02x} {:02x}, expected magic {:02x} {:02x}",
                h[0], h[1], MAGIC[0], MAGIC[1]
            )));
        }
        let (kind, seq) = (h[2], h[3]);
        let len = u16::from_be_bytes([h[4], h[5]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(ReadError::Garbled(format!(
                "garbled frame: length {len} is over the limit of {MAX_PAYLOAD}"
            )));
        }
        self.inbox
            .fill(&mut self.transport, HEADER + len + 2, timeout_ms)?;
        let f: Vec<u8> = self.inbox.buf.drain(..HEADER + len + 2).collect();
        let sent = u16::from_be_bytes([f[HEADER + len], f[HEADER + len + 1]]);
        if crc16(&f[2..HEADER + len]) != sent {
            return Err(ReadError::BadCrc { seq });
        }
        Ok(Frame {
            kind,
            seq,
            payload: f[HEADER..HEADER + len].to_vec(),
        })
    }

    fn write_frame(&mut self, kind: u8, seq: u8, payload: &[u8]) -> Result<(), Error> {
        let mut f = encode_frame(kind, seq, payload);
        if self.corrupt_crcs > 0 && kind != kind::ACK && kind != kind::NAK {
            self.corrupt_crcs -= 1;
            *f.last_mut().unwrap() ^= 0xFF;
        }
        Ok(self.transport.write(&f)?)
    }

    /// Sends a data frame and waits for its ACK, sending it again on a NAK.
    pub fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > MAX_PAYLOAD {
            return protocol(format!(
                "frame payload of {} bytes is over the limit of {MAX_PAYLOAD}",
                payload.len()
            ));
        }
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        for _ in 0..=RETRIES {
            self.write_frame(kind, seq, payload)?;
            match self.read_frame(ACK_TIMEOUT_MS) {
                Ok(f) if f.kind == kind::ACK && f.seq == seq => return Ok(()),
                Ok(f) if f.kind == kind::NAK && f.seq == seq => continue,
                // An acknowledgement that was itself damaged: send again.
                Err(ReadError::BadCrc { .. }) => continue,
                Ok(f) => {
                    return protocol(format!(
                        "expected the ACK of frame {seq}, got kind 0x{:02x} seq {}",
                        f.kind, f.seq
                    ))
                }
                Err(ReadError::Link(e)) => return Err(Error::Link(e)),
                Err(ReadError::Garbled(e)) => return protocol(e),
            }
        }
        protocol(format!(
            "frame {seq} was refused with a bad CRC {} times",
            RETRIES + 1
        ))
    }

    /// Waits for the next data frame, ACKs it, and NAKs frames with a bad CRC.
    pub fn recv(&mut self, timeout_ms: u32) -> Result<Frame, Error> {
        let mut bad = 0;
        loop {
            match self.read_frame(timeout_ms) {
                // A stray acknowledgement carries nothing to act on.
                Ok(f) if f.kind == kind::ACK || f.kind == kind::NAK => continue,
                Ok(f) => {
                    self.write_frame(kind::ACK, f.seq, &[])?;
                    return Ok(f);
                }
                Err(ReadError::BadCrc { seq }) => {
                    bad += 1;
                    if bad > RETRIES {
                        return protocol(format!(
                            "bad CRC on {bad} frames in a row from the other side; giving up"
                        ));
                    }
                    self.write_frame(kind::NAK, seq, &[])?;
                }
                Err(ReadError::Link(e)) => return Err(Error::Link(e)),
                Err(ReadError::Garbled(e)) => return protocol(e),
            }
        }
    }
}

impl<T: Transport> ClientSide for TlvEndpoint<T> {
    fn send_request(&mut self, req: &Request) -> Result<(), Error> {
        let mut p = Vec::new();
        let k = match req {
            Request::ReadIdentity => kind::READ_ID,
            Request::Write(pack) => {
                put(&mut p, tag::DEVICE_ID, pack.device_id.as_bytes());
                put(&mut p, tag::ROOT, pack.root_pem.as_bytes());
                put(&mut p, tag::CHAIN, pack.chain_pem.as_bytes());
                if let Some(key) = &pack.key_pem {
                    put(&mut p, tag::KEY, key.as_bytes());
                }
                kind::WRITE
            }
            Request::GenerateKey(k) => {
                put(&mut p, tag::DEVICE_ID, k.device_id.as_bytes());
                put(&mut p, tag::ALGORITHM, k.algorithm.as_bytes());
                kind::GENERATE_KEY
            }
            Request::Sign(c) => {
                put(&mut p, tag::CHALLENGE, c);
                kind::SIGN
            }
        };
        self.send(k, &p)
    }

    fn recv_answer(&mut self, timeout_ms: u32) -> Result<Answer, Error> {
        let f = self.recv(timeout_ms)?;
        let it = items(&f.payload)?;
        Ok(match f.kind {
            kind::IDENTITY => Answer::Identity(Identity {
                device_id: text(&it, tag::DEVICE_ID, "device id")?,
                fingerprint: match find(&it, tag::FINGERPRINT) {
                    Some(_) => Some(text(&it, tag::FINGERPRINT, "fingerprint")?),
                    None => None,
                },
            }),
            kind::STATUS => match bytes(&it, tag::STATUS, "status")? {
                [status::RECEIVED] => Answer::Received,
                [status::WRITTEN] => Answer::Written,
                [status::FAILED] => Answer::Failed(text(&it, tag::REASON, "reason")?),
                other => return protocol(format!("unknown status {other:02x?}")),
            },
            kind::SIGNATURE => Answer::Signature(bytes(&it, tag::SIGNATURE, "signature")?.to_vec()),
            kind::CSR => Answer::Csr(bytes(&it, tag::CSR, "csr")?.to_vec()),
            kind::FAULT => Answer::Fault(text(&it, tag::REASON, "reason")?),
            other => return protocol(format!("unknown answer kind 0x{other:02x}")),
        })
    }
}

impl<T: Transport> DeviceSide for TlvEndpoint<T> {
    fn recv_request(&mut self, timeout_ms: u32) -> Result<Request, Error> {
        let f = self.recv(timeout_ms)?;
        let it = items(&f.payload)?;
        Ok(match f.kind {
            kind::READ_ID => Request::ReadIdentity,
            kind::WRITE => Request::Write(Pack {
                device_id: text(&it, tag::DEVICE_ID, "device id")?,
                root_pem: text(&it, tag::ROOT, "root certificate")?,
                chain_pem: text(&it, tag::CHAIN, "certificate chain")?,
                key_pem: match find(&it, tag::KEY) {
                    Some(_) => Some(text(&it, tag::KEY, "private key")?),
                    None => None,
                },
            }),
            kind::GENERATE_KEY => Request::GenerateKey(KeyRequest {
                device_id: text(&it, tag::DEVICE_ID, "device id")?,
                algorithm: text(&it, tag::ALGORITHM, "algorithm")?,
            }),
            kind::SIGN => Request::Sign(bytes(&it, tag::CHALLENGE, "challenge")?.to_vec()),
            other => return protocol(format!("unknown request kind 0x{other:02x}")),
        })
    }

    fn send_answer(&mut self, answer: &Answer) -> Result<(), Error> {
        let mut p = Vec::new();
        let k = match answer {
            Answer::Identity(i) => {
                put(&mut p, tag::DEVICE_ID, i.device_id.as_bytes());
                if let Some(f) = &i.fingerprint {
                    put(&mut p, tag::FINGERPRINT, f.as_bytes());
                }
                kind::IDENTITY
            }
            Answer::Received => {
                put(&mut p, tag::STATUS, &[status::RECEIVED]);
                kind::STATUS
            }
            Answer::Written => {
                put(&mut p, tag::STATUS, &[status::WRITTEN]);
                kind::STATUS
            }
            Answer::Failed(r) => {
                put(&mut p, tag::STATUS, &[status::FAILED]);
                put(&mut p, tag::REASON, r.as_bytes());
                kind::STATUS
            }
            Answer::Signature(s) => {
                put(&mut p, tag::SIGNATURE, s);
                kind::SIGNATURE
            }
            Answer::Csr(c) => {
                put(&mut p, tag::CSR, c);
                kind::CSR
            }
            Answer::Fault(r) => {
                put(&mut p, tag::REASON, r.as_bytes());
                kind::FAULT
            }
        };
        self.send(k, &p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn items_round_trip_and_truncation() {
        let mut p = Vec::new();
        put(&mut p, 1, b"abc");
        put(&mut p, 2, b"");
        assert_eq!(items(&p).unwrap(), vec![(1, &b"abc"[..]), (2, &b""[..])]);
        assert!(items(&p[..4]).is_err());
        assert!(items(&[1, 0]).is_err());
    }
}
