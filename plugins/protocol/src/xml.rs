//! The image-forming device protocol: SOAP-like XML envelopes, each sent as
//! `Content-Length: N\r\n\r\n` followed by N bytes of UTF-8 XML.
//!
//! ```xml
//! <?xml version="1.0" encoding="UTF-8"?>
//! <Envelope xmlns="urn:certline:imaging:1">
//!   <Header><MessageId>2</MessageId><Action>WriteIdentity</Action></Header>
//!   <Body><DeviceId>3012-123456</DeviceId><RootCertificate>-----BEGIN…</RootCertificate>
//!         <CertificateChain>…</CertificateChain><PrivateKey>…</PrivateKey></Body>
//! </Envelope>
//! ```
//!
//! Requests: `ReadIdentity`, `WriteIdentity`, `SignChallenge` (`<Challenge>` hex).
//! Answers carry `<RelatesTo>` (the request's MessageId) and one of the actions
//! `Identity` (`<DeviceId>`, optional `<Fingerprint>`), `Status` (`<Status>received`
//! or `written`), `WriteFailed` (`<Reason>`), `Signature` (`<Signature>` hex),
//! `Fault` (`<Reason>`).
//!
//! The parser accepts the small XML subset this needs (elements, attributes, text,
//! the five entities and character references, comments, CDATA) and refuses DTDs,
//! so a device cannot make the plugin expand entities.

use crate::{
    hex, protocol, Answer, ClientSide, DeviceSide, Error, Identity, KeyRequest, Pack, Request,
};
use crate::{Inbox, Transport};

pub const NAMESPACE: &str = "urn:certline:imaging:1";
/// Largest envelope either side accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
const MAX_DEPTH: usize = 16;
const MAX_HEADER: usize = 64;

/// One XML element: name, attributes, child elements, and its text (the
/// concatenation of its character data).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the child `name`, or a protocol error naming what is missing.
    pub fn field(&self, name: &str) -> Result<&str, Error> {
        match self.child(name) {
            Some(c) => Ok(&c.text),
            None => protocol(format!("<{}> has no <{name}>", self.name)),
        }
    }
}

/// Parses one XML document (the root element).
pub fn parse(doc: &str) -> Result<Element, String> {
    let mut p = Parser {
        s: doc.as_bytes(),
        pos: 0,
    };
    p.skip_prolog()?;
    let root = p.element(0)?;
    p.skip_misc()?;
    if p.pos != p.s.len() {
        return Err(p.err("content after the root element"));
    }
    Ok(root)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!("malformed XML at byte {}: {what}", self.pos)
    }

    fn starts(&self, lit: &str) -> bool {
        self.s[self.pos..].starts_with(lit.as_bytes())
    }

    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    /// Moves past the next `end`, or fails with `what`.
    fn skip_past(&mut self, end: &str, what: &str) -> Result<usize, String> {
        let rest = &self.s[self.pos..];
        match rest.windows(end.len()).position(|w| w == end.as_bytes()) {
            Some(i) => {
                let start = self.pos;
                self.pos += i + end.len();
                Ok(start + i)
            }
            None => Err(self.err(what)),
        }
    }

    fn skip_prolog(&mut self) -> Result<(), String> {
        if self.starts("\u{feff}") {
            self.pos += 3;
        }
        self.skip_ws();
        if self.starts("<?xml") {
            self.skip_past("?>", "unterminated XML declaration")?;
        }
        self.skip_misc()
    }

    /// Whitespace and comments; a DTD is refused.
    fn skip_misc(&mut self) -> Result<(), String> {
        loop {
            self.skip_ws();
            if self.starts("<!--") {
                self.skip_past("-->", "unterminated comment")?;
            } else if self.starts("<!") || self.starts("<?") {
                return Err(self.err("DTDs and processing instructions are not accepted"));
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let start = self.pos;
        while self.pos < self.s.len()
            && (self.s[self.pos].is_ascii_alphanumeric() || b"-_.:".contains(&self.s[self.pos]))
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err("expected a name"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected {:?}", c as char)))
        }
    }

    fn element(&mut self, depth: usize) -> Result<Element, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("elements nested too deep"));
        }
        self.expect(b'<')?;
        let mut el = Element {
            name: self.name()?,
            ..Element::default()
        };
        loop {
            self.skip_ws();
            if self.starts("/>") {
                self.pos += 2;
                return Ok(el);
            }
            if self.starts(">") {
                self.pos += 1;
                break;
            }
            let name = self.name()?;
            self.skip_ws();
            self.expect(b'=')?;
            self.skip_ws();
            let quote = match self.s.get(self.pos) {
                Some(q @ (b'"' | b'\'')) => *q,
                _ => return Err(self.err("expected a quoted attribute value")),
            };
            self.pos += 1;
            let start = self.pos;
            let end = self.skip_past(
                if quote == b'"' { "\"" } else { "'" },
                "unterminated attribute",
            )?;
            let raw = &self.s[start..end];
            el.attrs
                .push((name, unescape(raw).map_err(|e| self.err(&e))?));
        }
        loop {
            if self.pos >= self.s.len() {
                return Err(self.err(&format!("<{}> is not closed", el.name)));
            }
            if self.starts("</") {
                self.pos += 2;
                let name = self.name()?;
                if name != el.name {
                    return Err(self.err(&format!("</{name}> closes <{}>", el.name)));
                }
                self.skip_ws();
                self.expect(b'>')?;
                return Ok(el);
            } else if self.starts("<!--") {
                self.skip_past("-->", "unterminated comment")?;
            } else if self.starts("<![CDATA[") {
                self.pos += 9;
                let start = self.pos;
                let end = self.skip_past("]]>", "unterminated CDATA")?;
                el.text
                    .push_str(&String::from_utf8_lossy(&self.s[start..end]));
            } else if self.starts("<!") || self.starts("<?") {
                return Err(self.err("DTDs and processing instructions are not accepted"));
            } else if self.starts("<") {
                el.children.push(self.element(depth + 1)?);
            } else {
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos] != b'<' {
                    self.pos += 1;
                }
                el.text
                    .push_str(&unescape(&self.s[start..self.pos]).map_err(|e| self.err(&e))?);
            }
        }
    }
}

fn unescape(raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "text is not UTF-8".to_string())?;
    if !text.contains('&') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find(';')
            .ok_or_else(|| "'&' without ';'".to_string())?;
        let entity = &rest[i + 1..i + end];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(h) = entity.strip_prefix("#x") {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = entity.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(c);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Escapes text for element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Carriage returns would be normalised away by a conforming parser.
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// Builds one envelope. `relates_to` is set on answers.
pub fn envelope(id: u32, relates_to: Option<u32>, action: &str, body: &[(&str, &str)]) -> String {
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Envelope xmlns=\"{NAMESPACE}\">\n  <Header><MessageId>{id}</MessageId>"
    );
    if let Some(r) = relates_to {
        x.push_str(&format!("<RelatesTo>{r}</RelatesTo>"));
    }
    x.push_str(&format!("<Action>{action}</Action></Header>\n  <Body>"));
    for (name, value) in body {
        x.push_str(&format!("<{name}>{}</{name}>", escape(value)));
    }
    x.push_str("</Body>\n</Envelope>\n");
    x
}

/// A parsed envelope.
#[derive(Debug)]
pub struct Envelope {
    pub id: u32,
    pub relates_to: Option<u32>,
    pub action: String,
    pub body: Element,
}

pub fn parse_envelope(doc: &str) -> Result<Envelope, Error> {
    let root = parse(doc).map_err(Error::Protocol)?;
    if root.name != "Envelope" {
        return protocol(format!("expected <Envelope>, got <{}>", root.name));
    }
    match root.attrs.iter().find(|(k, _)| k == "xmlns") {
        Some((_, ns)) if ns == NAMESPACE => {}
        Some((_, ns)) => {
            return protocol(format!("envelope namespace {ns:?}, expected {NAMESPACE:?}"))
        }
        None => return protocol(format!("envelope has no namespace, expected {NAMESPACE:?}")),
    }
    let header = root
        .child("Header")
        .ok_or_else(|| Error::Protocol("envelope has no <Header>".into()))?;
    let number = |name: &str| -> Result<u32, Error> {
        let t = header.field(name)?;
        t.trim()
            .parse()
            .map_err(|_| Error::Protocol(format!("<{name}> {t:?} is not a number")))
    };
    let id = number("MessageId")?;
    let relates_to = match header.child("RelatesTo") {
        Some(_) => Some(number("RelatesTo")?),
        None => None,
    };
    let action = header.field("Action")?.trim().to_string();
    let body = root
        .child("Body")
        .cloned()
        .ok_or_else(|| Error::Protocol("envelope has no <Body>".into()))?;
    Ok(Envelope {
        id,
        relates_to,
        action,
        body,
    })
}

/// One end of the XML protocol over a transport.
pub struct XmlEndpoint<T> {
    transport: T,
    inbox: Inbox,
    next_id: u32,
    /// The request being answered (device side) or awaited (host side).
    current: Option<u32>,
}

impl<T: Transport> XmlEndpoint<T> {
    pub fn new(transport: T) -> Self {
        XmlEndpoint {
            transport,
            inbox: Inbox::default(),
            next_id: 1,
            current: None,
        }
    }

    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    fn send(&mut self, doc: &str) -> Result<(), Error> {
        let mut msg = format!("Content-Length: {}\r\n\r\n", doc.len()).into_bytes();
        msg.extend_from_slice(doc.as_bytes());
        self.transport.write(&msg)?;
        Ok(())
    }

    /// Reads one framed message.
    fn recv(&mut self, timeout_ms: u32) -> Result<Envelope, Error> {
        // The header is short: read it a byte at a time so no body bytes are
        // taken before the length is known.
        loop {
            if let Some(end) = self.inbox.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let header = String::from_utf8_lossy(&self.inbox.buf[..end]).into_owned();
                let len: usize = header
                    .strip_prefix("Content-Length:")
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| {
                        Error::Protocol(format!(
                            "garbled frame header {header:?}, expected \"Content-Length: N\""
                        ))
                    })?;
                if len > MAX_MESSAGE {
                    return protocol(format!(
                        "message of {len} bytes is larger than {MAX_MESSAGE}"
                    ));
                }
                self.inbox
                    .fill(&mut self.transport, end + 4 + len, timeout_ms)?;
                let body: Vec<u8> = self
                    .inbox
                    .buf
                    .drain(..end + 4 + len)
                    .skip(end + 4)
                    .collect();
                let doc = String::from_utf8(body)
                    .map_err(|_| Error::Protocol("message is not UTF-8".into()))?;
                return parse_envelope(&doc);
            }
            if self.inbox.buf.len() > MAX_HEADER {
                let shown = String::from_utf8_lossy(&self.inbox.buf[..MAX_HEADER]).into_owned();
                return protocol(format!(
                    "garbled frame header {shown:?}, expected \"Content-Length: N\""
                ));
            }
            let want = self.inbox.buf.len() + 1;
            self.inbox.fill(&mut self.transport, want, timeout_ms)?;
        }
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }
}

impl<T: Transport> ClientSide for XmlEndpoint<T> {
    fn send_request(&mut self, req: &Request) -> Result<(), Error> {
        let id = self.take_id();
        self.current = Some(id);
        let challenge;
        let (action, body): (&str, Vec<(&str, &str)>) = match req {
            Request::ReadIdentity => ("ReadIdentity", vec![]),
            Request::Write(p) => {
                let mut body = vec![
                    ("DeviceId", p.device_id.as_str()),
                    ("RootCertificate", p.root_pem.as_str()),
                    ("CertificateChain", p.chain_pem.as_str()),
                ];
                if let Some(key) = &p.key_pem {
                    body.push(("PrivateKey", key.as_str()));
                }
                ("WriteIdentity", body)
            }
            Request::GenerateKey(k) => (
                "GenerateKey",
                vec![("DeviceId", &k.device_id), ("Algorithm", &k.algorithm)],
            ),
            Request::Sign(c) => {
                challenge = hex::encode(c);
                ("SignChallenge", vec![("Challenge", &challenge)])
            }
        };
        self.send(&envelope(id, None, action, &body))
    }

    fn recv_answer(&mut self, timeout_ms: u32) -> Result<Answer, Error> {
        let env = self.recv(timeout_ms)?;
        if env.relates_to != self.current {
            return protocol(format!(
                "answer relates to message {:?}, expected {:?} (an answer to another question)",
                env.relates_to, self.current
            ));
        }
        let b = &env.body;
        Ok(match env.action.as_str() {
            "Identity" => Answer::Identity(Identity {
                device_id: b.field("DeviceId")?.trim().to_string(),
                fingerprint: b.child("Fingerprint").map(|f| f.text.trim().to_string()),
            }),
            "Status" => match b.field("Status")?.trim() {
                "received" => Answer::Received,
                "written" => Answer::Written,
                other => return protocol(format!("unknown status {other:?}")),
            },
            "WriteFailed" => Answer::Failed(b.field("Reason")?.to_string()),
            "Signature" => Answer::Signature(
                hex::decode(b.field("Signature")?)
                    .map_err(|e| Error::Protocol(format!("<Signature>: {e}")))?,
            ),
            "CertificateRequest" => Answer::Csr(
                hex::decode(b.field("Csr")?).map_err(|e| Error::Protocol(format!("<Csr>: {e}")))?,
            ),
            "Fault" => Answer::Fault(b.field("Reason")?.to_string()),
            other => return protocol(format!("unknown answer action {other:?}")),
        })
    }
}

impl<T: Transport> DeviceSide for XmlEndpoint<T> {
    fn recv_request(&mut self, timeout_ms: u32) -> Result<Request, Error> {
        let env = self.recv(timeout_ms)?;
        self.current = Some(env.id);
        let b = &env.body;
        Ok(match env.action.as_str() {
            "ReadIdentity" => Request::ReadIdentity,
            "WriteIdentity" => Request::Write(Pack {
                device_id: b.field("DeviceId")?.trim().to_string(),
                root_pem: b.field("RootCertificate")?.to_string(),
                chain_pem: b.field("CertificateChain")?.to_string(),
                key_pem: b.child("PrivateKey").map(|k| k.text.to_string()),
            }),
            "GenerateKey" => Request::GenerateKey(KeyRequest {
                device_id: b.field("DeviceId")?.trim().to_string(),
                algorithm: b.field("Algorithm")?.trim().to_string(),
            }),
            "SignChallenge" => Request::Sign(
                hex::decode(b.field("Challenge")?)
                    .map_err(|e| Error::Protocol(format!("<Challenge>: {e}")))?,
            ),
            other => return protocol(format!("unknown action {other:?}")),
        })
    }

    fn send_answer(&mut self, answer: &Answer) -> Result<(), Error> {
        let id = self.take_id();
        let text;
        let (action, body): (&str, Vec<(&str, &str)>) = match answer {
            Answer::Identity(i) => {
                let mut body = vec![("DeviceId", i.device_id.as_str())];
                if let Some(f) = &i.fingerprint {
                    body.push(("Fingerprint", f));
                }
                ("Identity", body)
            }
            Answer::Received => ("Status", vec![("Status", "received")]),
            Answer::Written => ("Status", vec![("Status", "written")]),
            Answer::Failed(r) => ("WriteFailed", vec![("Reason", r)]),
            Answer::Signature(s) => {
                text = hex::encode(s);
                ("Signature", vec![("Signature", &text)])
            }
            Answer::Csr(c) => {
                text = hex::encode(c);
                ("CertificateRequest", vec![("Csr", &text)])
            }
            Answer::Fault(r) => ("Fault", vec![("Reason", r)]),
        };
        let doc = envelope(id, self.current, action, &body);
        self.send(&doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subset() {
        let e = parse("<?xml version='1.0'?><!-- c --><a x=\"1 &amp; 2\"><b>t&lt;&#65;&#x42;</b><c/><![CDATA[<raw>]]></a>").unwrap();
        assert_eq!(e.name, "a");
        assert_eq!(e.attrs, vec![("x".into(), "1 & 2".into())]);
        assert_eq!(e.child("b").unwrap().text, "t<AB");
        assert_eq!(e.text, "<raw>");
    }

    #[test]
    fn refuses_bad_documents() {
        for bad in [
            "<a>",
            "<a></b>",
            "<a>&foo;</a>",
            "<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>",
            "<a/><b/>",
            "<a x=1/>",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(parse(&deep).unwrap_err().contains("too deep"));
    }

    #[test]
    fn escapes_round_trip() {
        let text = "a<b>&\"'\r\nc";
        let doc = format!("<t>{}</t>", escape(text));
        assert_eq!(parse(&doc).unwrap().text, text);
    }
}
