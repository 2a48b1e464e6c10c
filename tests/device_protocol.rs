//! The wire formats (plugins/protocol, shared by the plugins and the device
//! simulator) against hostile bytes: each end of a protocol over an in-memory
//! byte pipe, the other end scripted byte by byte.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use certline_device_protocol::tlv::{self, encode_frame, kind, TlvEndpoint};
use certline_device_protocol::xml::{envelope, XmlEndpoint};
use certline_device_protocol::{
    client, Answer, ClientSide, DeviceSide, Error, LinkFailure, Pack, Request, Transport,
};

/// One direction of an in-memory link.
#[derive(Default)]
struct Pipe {
    bytes: Mutex<(VecDeque<u8>, bool)>,
    ready: Condvar,
}

/// One end: reads from `rx`, writes to `tx`.
struct End {
    rx: Arc<Pipe>,
    tx: Arc<Pipe>,
}

fn pair() -> (End, End) {
    let (a, b) = (Arc::new(Pipe::default()), Arc::new(Pipe::default()));
    (
        End {
            rx: a.clone(),
            tx: b.clone(),
        },
        End { rx: b, tx: a },
    )
}

impl Transport for End {
    fn read(&mut self, max: usize, timeout_ms: u32) -> Result<Vec<u8>, LinkFailure> {
        let guard = self.rx.bytes.lock().unwrap();
        let (mut guard, _) = self
            .rx
            .ready
            .wait_timeout_while(
                guard,
                Duration::from_millis(timeout_ms.into()),
                |(q, closed)| q.is_empty() && !*closed,
            )
            .unwrap();
        if guard.0.is_empty() {
            return Err(if guard.1 {
                LinkFailure::Closed
            } else {
                LinkFailure::Timeout
            });
        }
        let n = max.min(guard.0.len());
        Ok(guard.0.drain(..n).collect())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), LinkFailure> {
        self.tx.bytes.lock().unwrap().0.extend(data);
        self.tx.ready.notify_all();
        Ok(())
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.tx.bytes.lock().unwrap().1 = true;
        self.tx.ready.notify_all();
    }
}

fn pack() -> Pack {
    Pack {
        device_id: "A123-1".into(),
        root_pem: "-----BEGIN CERTIFICATE-----\nroot & <stuff>\n-----END CERTIFICATE-----\n".into(),
        chain_pem: "chain\r\n".into(),
        key_pem: Some("key".into()),
    }
}

/// A well-behaved device end that answers a write with received + written.
fn device<D: DeviceSide + Send + 'static>(mut d: D) -> std::thread::JoinHandle<Vec<Request>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Ok(req) = d.recv_request(5_000) {
            let answers = match &req {
                Request::ReadIdentity => {
                    vec![Answer::Identity(certline_device_protocol::Identity {
                        device_id: "A123-1".into(),
                        fingerprint: None,
                    })]
                }
                Request::Write(_) => vec![Answer::Received, Answer::Written],
                Request::Sign(c) => vec![Answer::Signature(c.iter().rev().copied().collect())],
                Request::GenerateKey(k) => vec![Answer::Csr(k.device_id.as_bytes().to_vec())],
            };
            seen.push(req);
            for a in answers {
                d.send_answer(&a).unwrap();
            }
        }
        seen
    })
}

#[test]
fn both_protocols_carry_a_pack_intact() {
    for tlv in [false, true] {
        let (host, dev) = pair();
        let (handle, mut c): (_, Box<dyn ClientSide>) = if tlv {
            (
                device(TlvEndpoint::new(dev)),
                Box::new(TlvEndpoint::new(host)),
            )
        } else {
            (
                device(XmlEndpoint::new(dev)),
                Box::new(XmlEndpoint::new(host)),
            )
        };
        let client_end = c.as_mut();
        let id = client::read_identity(client_end).unwrap();
        assert_eq!(id.device_id, "A123-1");
        let mut received = false;
        client::write_pack(client_end, pack(), || received = true).unwrap();
        assert!(received);
        assert_eq!(
            client::prove_possession(client_end, &[1, 2, 3]).unwrap(),
            vec![3, 2, 1]
        );
        drop(c);
        let seen = handle.join().unwrap();
        assert_eq!(
            seen[1],
            Request::Write(pack()),
            "tlv={tlv}: the pack changed on the way"
        );
    }
}

#[test]
fn tlv_bad_crc_is_naked_and_resent() {
    let (host, dev) = pair();
    let mut d = TlvEndpoint::new(dev);
    d.corrupt_crcs = 2;
    let handle = device(d);
    let mut c = TlvEndpoint::new(host);
    assert_eq!(client::read_identity(&mut c).unwrap().device_id, "A123-1");
    drop(c);
    handle.join().unwrap();
}

#[test]
fn tlv_crc_that_stays_bad_is_an_error() {
    let (host, dev) = pair();
    let mut d = TlvEndpoint::new(dev);
    d.corrupt_crcs = 100;
    let _handle = device(d);
    let mut c = TlvEndpoint::new(host);
    let err = client::read_identity(&mut c).unwrap_err();
    assert!(
        matches!(&err, Error::Protocol(m) if m.contains("bad CRC")),
        "{err}"
    );
}

/// The host asks to read the identity; the scripted device answers `bytes`.
fn tlv_answer(bytes: &[u8]) -> Error {
    let (host, mut dev) = pair();
    let mut c = TlvEndpoint::new(host);
    std::thread::scope(|s| {
        s.spawn(move || {
            // Take the request, acknowledge it, answer with the script.
            let req = dev.read(1024, 5_000).unwrap();
            dev.write(&encode_frame(kind::ACK, req[3], &[])).unwrap();
            dev.write(bytes).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        });
        client::read_identity(&mut c).unwrap_err()
    })
}

#[test]
fn tlv_garbled_frames_are_protocol_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"\xde\xad\xbe\xef\0\0\0\0".to_vec(),
            "garbled frame: starts de ad",
        ),
        (
            [&tlv::MAGIC[..], &[kind::IDENTITY, 0, 0xff, 0xff]].concat(),
            "length 65535 is over the limit",
        ),
        (
            encode_frame(kind::IDENTITY, 0, &[tlv::tag::DEVICE_ID, 0, 9, b'x']),
            "item 0x01 says 9 bytes, only 1 left",
        ),
        (
            encode_frame(kind::IDENTITY, 0, &[]),
            "frame has no device id",
        ),
        (encode_frame(0x42, 0, &[]), "unknown answer kind 0x42"),
    ];
    for (bytes, says) in cases {
        let err = tlv_answer(&bytes);
        assert!(
            matches!(&err, Error::Protocol(m) if m.contains(says)),
            "wanted {says:?}, got {err}"
        );
    }
}

/// The same for the XML protocol: the device answers the framed document `doc`.
fn xml_answer(framed: Vec<u8>) -> Error {
    let (host, mut dev) = pair();
    let mut c = XmlEndpoint::new(host);
    std::thread::scope(|s| {
        s.spawn(move || {
            let _ = dev.read(65536, 5_000).unwrap();
            dev.write(&framed).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        });
        client::read_identity(&mut c).unwrap_err()
    })
}

fn framed(doc: &str) -> Vec<u8> {
    format!("Content-Length: {}\r\n\r\n{doc}", doc.len()).into_bytes()
}

#[test]
fn xml_malformed_answers_are_protocol_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), "garbled frame header"),
        (framed("<Envelope><Body>"), "malformed XML"),
        (framed("<!DOCTYPE x [<!ENTITY a 'b'>]><Envelope/>"), "DTDs"),
        (
            framed(
                &envelope(1, Some(1), "Identity", &[])
                    .replace("urn:certline:imaging:1", "urn:other"),
            ),
            "namespace",
        ),
        (
            framed(&envelope(1, Some(7), "Identity", &[("DeviceId", "A123-1")])),
            "an answer to another question",
        ),
        (
            framed(&envelope(1, Some(1), "Identity", &[])),
            "<Body> has no <DeviceId>",
        ),
        (
            framed(&envelope(1, Some(1), "Status", &[("Status", "written")])),
            "expected an identity from the device, got written",
        ),
        (b"Content-Length: 99999999\r\n\r\n".to_vec(), "larger than"),
    ];
    for (bytes, says) in cases {
        let err = xml_answer(bytes);
        assert!(
            matches!(&err, Error::Protocol(m) if m.contains(says)),
            "wanted {says:?}, got {err}"
        );
    }
}

#[test]
fn a_device_fault_is_the_devices_reason() {
    let err = xml_answer(framed(&envelope(
        1,
        Some(1),
        "Fault",
        &[("Reason", "flash locked")],
    )));
    assert_eq!(err, Error::Device("flash locked".into()));
}

/// Property tests (issue 12, matrix item 4): the XML and TLV codecs carry
/// every request and answer intact, and arbitrary bytes from the other side
/// are an error, never a panic. Short runs here; the long runs are the
/// `cargo fuzz` targets in plugins/protocol/fuzz/.
mod properties {
    use certline_device_protocol::tlv::{self, encode_frame, kind, TlvEndpoint};
    use certline_device_protocol::xml::{self, XmlEndpoint};
    use certline_device_protocol::{
        Answer, ClientSide, DeviceSide, Identity, KeyRequest, Pack, Replay, Request,
    };
    use proptest::prelude::*;

    type Mem = Replay;

    fn mem(rx: &[u8]) -> Mem {
        Replay::new(rx)
    }

    /// Text XML 1.0 can carry (what a PEM, an id or a reason is made of).
    fn text() -> impl Strategy<Value = String> {
        "[\t\n\r -~\u{a0}-\u{d7ff}\u{e000}-\u{fffd}]{0,300}"
    }

    /// Text without surrounding blanks (ids and fingerprints are trimmed).
    fn word() -> impl Strategy<Value = String> {
        "[!-~]([ -~]{0,60}[!-~])?"
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::ReadIdentity),
            (word(), text(), text(), proptest::option::of(text())).prop_map(|(d, r, c, k)| {
                Request::Write(Pack {
                    device_id: d,
                    root_pem: r,
                    chain_pem: c,
                    key_pem: k,
                })
            }),
            proptest::collection::vec(any::<u8>(), 0..=256).prop_map(Request::Sign),
            (word(), word()).prop_map(|(d, a)| Request::GenerateKey(KeyRequest {
                device_id: d,
                algorithm: a,
            })),
        ]
    }

    fn answer() -> impl Strategy<Value = Answer> {
        prop_oneof![
            (word(), proptest::option::of(word())).prop_map(|(d, f)| Answer::Identity(Identity {
                device_id: d,
                fingerprint: f,
            })),
            Just(Answer::Received),
            Just(Answer::Written),
            text().prop_map(Answer::Failed),
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(Answer::Signature),
            proptest::collection::vec(any::<u8>(), 0..600).prop_map(Answer::Csr),
            text().prop_map(Answer::Fault),
        ]
    }

    /// One question and its answer through a pair of endpoints built by `new`;
    /// `ack(seq)` is what the sender of a frame needs back before it goes on.
    fn exchange<E, F>(
        new: F,
        ack: fn(u8) -> Vec<u8>,
        req: &Request,
        ans: &Answer,
    ) -> (Request, Answer)
    where
        E: ClientSide + DeviceSide,
        F: Fn(Mem) -> E,
        E: Endpoint,
    {
        let mut host = new(mem(&ack(0)));
        host.send_request(req).unwrap();
        let mut dev = new(mem(&[host.mem().tx.clone(), ack(0)].concat()));
        let got_req = dev.recv_request(1000).unwrap();
        dev.send_answer(ans).unwrap();
        let reply = dev.mem().tx.clone();
        host.mem().rx.extend(reply);
        let got_ans = host.recv_answer(1000).unwrap();
        (got_req, got_ans)
    }

    trait Endpoint {
        fn mem(&mut self) -> &mut Mem;
    }
    impl Endpoint for XmlEndpoint<Mem> {
        fn mem(&mut self) -> &mut Mem {
            self.transport()
        }
    }
    impl Endpoint for TlvEndpoint<Mem> {
        fn mem(&mut self) -> &mut Mem {
            self.transport()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn xml_carries_every_request_and_answer(req in request(), ans in answer()) {
            let (r, a) = exchange(XmlEndpoint::new, |_| Vec::new(), &req, &ans);
            prop_assert_eq!(r, req);
            prop_assert_eq!(a, ans);
        }

        #[test]
        fn tlv_carries_every_request_and_answer(req in request(), ans in answer()) {
            let ack = |seq| encode_frame(kind::ACK, seq, &[]);
            let (r, a) = exchange(TlvEndpoint::new, ack, &req, &ans);
            prop_assert_eq!(r, req);
            prop_assert_eq!(a, ans);
        }

        #[test]
        fn xml_text_survives_escaping(t in "\\PC{0,200}") {
            let doc = format!("<t>{}</t>", xml::escape(&t));
            let parsed = xml::parse(&doc);
            // Text XML cannot carry (controls other than tab, CR, LF) is
            // refused, never changed.
            if let Ok(e) = parsed {
                prop_assert_eq!(e.text, t);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_a_device_or_a_host(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            framed in any::<bool>(),
        ) {
            // Raw, and behind a well-formed header so the body is parsed.
            let bytes = if framed {
                [format!("Content-Length: {}\r\n\r\n", bytes.len()).into_bytes(), bytes].concat()
            } else {
                bytes
            };
            let _ = XmlEndpoint::new(mem(&bytes)).recv_request(10);
            let mut host = XmlEndpoint::new(mem(&[]));
            host.send_request(&Request::ReadIdentity).unwrap();
            host.transport().rx.extend(bytes.iter().copied());
            let _ = host.recv_answer(10);
            let _ = TlvEndpoint::new(mem(&bytes)).recv_request(10);
            let _ = TlvEndpoint::new(mem(&bytes)).recv_answer(10);
            let _ = tlv::items(&bytes);
            let _ = xml::parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn arbitrary_tlv_frames_never_panic(
            k in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            // A frame with a good CRC, so the payload's items are parsed.
            let frame = encode_frame(k, 0, &payload);
            let _ = TlvEndpoint::new(mem(&frame)).recv_request(10);
            let _ = TlvEndpoint::new(mem(&frame)).recv_answer(10);
        }

        #[test]
        fn arbitrary_xml_documents_never_panic(doc in "(<[a-zA-Z!?/][^<]{0,20}|&#?[a-zA-Z0-9]{0,8};?|[^<&]{0,10}){0,40}") {
            let _ = xml::parse(&doc);
            let _ = xml::parse_envelope(&doc);
        }
    }
}
