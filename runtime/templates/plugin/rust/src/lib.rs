//! The certline device plugin for model {{model}} ({{name}}), made by
//! `certline plugin new`: it speaks a line-based protocol, one command a
//! line and one answer a line, over the link the host lends it (mutual TLS
//! is already done, the plugin sees plain bytes):
//!
//! ```text
//! line                                   device
//! HELLO certline/1                       HELLO <id>            once per session
//! ID                                     ID <id> <sha256 hex of the certificate, or ->
//! WRITE <id> <root> <chain> <key|->     RECEIVED, then WRITTEN or FAILED <reason>
//!        (the PEMs hex-encoded; - when   (or FAILED <reason> at once: not for me)
//!        the device made its own key)
//! SIGN <challenge hex>                   SIG <signature hex>
//! GENKEY <id> <algorithm>                CSR <PKCS#10 DER hex>  (keys born in the device)
//! anything the device cannot serve       ERR <reason>
//! ```
//!
//! Change the protocol here and in `device.py` (the device stub the
//! simulator runs with `certline device-sim --exec`) together. The host's
//! calls become [`Request`]s and the device's lines [`Answer`]s; the SDK's
//! flows check that each answer fits its question.

use certline_device_protocol::{hex, Answer, ClientSide, Error, Identity, Request, Transport};

/// How long the device may take to greet.
const HELLO_MS: u32 = 10_000;
/// The longest line the device may send.
const MAX_LINE: usize = 64 * 1024;

/// The line protocol over a transport. `protocol_plugin!` keeps one for each
/// session, so `HELLO` is said once per session, not once per call.
pub struct LineEndpoint<T> {
    transport: T,
    inbox: Vec<u8>,
    greeted: bool,
}

impl<T: Transport> LineEndpoint<T> {
    pub fn new(transport: T) -> Self {
        LineEndpoint {
            transport,
            inbox: Vec::new(),
            greeted: false,
        }
    }

    fn send_line(&mut self, line: &str) -> Result<(), Error> {
        self.transport.write(format!("{line}\n").as_bytes())?;
        Ok(())
    }

    fn read_line(&mut self, timeout_ms: u32) -> Result<String, Error> {
        loop {
            if let Some(end) = self.inbox.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.inbox.drain(..=end).collect();
                return String::from_utf8(line)
                    .map(|l| l.trim_end().to_string())
                    .map_err(|_| Error::Protocol("the device sent a line that is not UTF-8".into()));
            }
            if self.inbox.len() > MAX_LINE {
                return Err(Error::Protocol(format!(
                    "the device sent a line longer than {MAX_LINE} bytes"
                )));
            }
            let got = self.transport.read(4096, timeout_ms)?;
            self.inbox.extend_from_slice(&got);
        }
    }

    fn greet(&mut self) -> Result<(), Error> {
        if self.greeted {
            return Ok(());
        }
        self.send_line("HELLO certline/1")?;
        let line = self.read_line(HELLO_MS)?;
        if !line.starts_with("HELLO ") {
            return Err(Error::Protocol(format!("expected HELLO from the device, got {line:?}")));
        }
        self.greeted = true;
        Ok(())
    }
}

impl<T: Transport> ClientSide for LineEndpoint<T> {
    fn send_request(&mut self, req: &Request) -> Result<(), Error> {
        self.greet()?;
        match req {
            Request::ReadIdentity => self.send_line("ID"),
            Request::Write(pack) => self.send_line(&format!(
                "WRITE {} {} {} {}",
                pack.device_id,
                hex::encode(pack.root_pem.as_bytes()),
                hex::encode(pack.chain_pem.as_bytes()),
                pack.key_pem
                    .as_deref()
                    .map_or("-".to_string(), |k| hex::encode(k.as_bytes())),
            )),
            Request::Sign(challenge) => self.send_line(&format!("SIGN {}", hex::encode(challenge))),
            Request::GenerateKey(request) => {
                self.send_line(&format!("GENKEY {} {}", request.device_id, request.algorithm))
            }
            #[allow(unreachable_patterns)] // requests of later interface versions
            other => Err(Error::Protocol(format!(
                "this device does not support {}",
                other.name()
            ))),
        }
    }

    fn recv_answer(&mut self, timeout_ms: u32) -> Result<Answer, Error> {
        let line = self.read_line(timeout_ms)?;
        let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match word {
            "ID" => {
                let (id, fingerprint) = rest.split_once(' ').unwrap_or((rest, "-"));
                Ok(Answer::Identity(Identity {
                    device_id: id.to_string(),
                    fingerprint: (fingerprint != "-").then(|| fingerprint.to_string()),
                }))
            }
            "RECEIVED" => Ok(Answer::Received),
            "WRITTEN" => Ok(Answer::Written),
            "FAILED" => Ok(Answer::Failed(rest.to_string())),
            "SIG" => hex::decode(rest)
                .map(Answer::Signature)
                .map_err(|e| Error::Protocol(format!("SIG with a signature that is not hex: {e}"))),
            "CSR" => hex::decode(rest)
                .map(Answer::Csr)
                .map_err(|e| Error::Protocol(format!("CSR that is not hex: {e}"))),
            "ERR" => Ok(Answer::Fault(rest.to_string())),
            _ => Err(Error::Protocol(format!("the device sent {line:?}"))),
        }
    }
}

certline_plugin_sdk::protocol_plugin!(Plugin, "{{name}}", ["{{model}}"], |link| {
    LineEndpoint::new(link)
});
