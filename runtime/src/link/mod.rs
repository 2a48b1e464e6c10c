//! The device link: mutual TLS over a TCP connection (the crossover cable) or a
//! serial port. The line side presents its line credential and accepts only a
//! device that presents a device-link credential (the vendor's "common
//! certificate" every board gets); the device side presents its device-link
//! credential and accepts only a line. Both chains must verify to the same root.
//!
//! A plugin sees the link as a byte stream ([`DeviceLink`]); it never sees the
//! socket, the port or the certificates.

pub mod pop;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConfig};
use rustls::{ServerConnection, SideData, StreamOwned};

pub use certline_device_protocol::LinkFailure;

use crate::pki::credential::Credential;
use crate::pki::role::{role_of, Role};
use crate::service::tls::{provider, ClientAuth, RoleVerifier};

/// The ALPN name of the device link, so a link endpoint is never mistaken for
/// a certline HTTPS service (or the other way round).
pub const ALPN: &[u8] = b"certline-device-link/1";
/// Serial line speed when the line opens a port (ignored by pseudo-terminals).
pub const BAUD_RATE: u32 = 115_200;
/// How long closing a link waits for the peer's close_notify.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Longest single read handed to a plugin.
pub const MAX_READ: usize = 64 * 1024;

/// A byte stream to one device, already authenticated.
pub trait DeviceLink: Send {
    /// At least one byte and at most `max`, waiting at most `timeout`.
    fn read(&mut self, max: usize, timeout: Duration) -> Result<Vec<u8>, LinkFailure>;
    fn write(&mut self, data: &[u8]) -> Result<(), LinkFailure>;
    /// Ends the session (TLS close_notify); later reads and writes fail `Closed`.
    fn close(&mut self);
    /// Where the link goes and who is at the other end, for messages.
    fn describe(&self) -> String;
}

/// What a TLS session runs on: a TCP stream or a serial port.
pub trait ByteStream: Read + Write + Send {
    /// Bounds the next reads (and, where the stream has one, writes).
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()>;
}

impl ByteStream for TcpStream {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        // A zero timeout means "block forever" to the OS.
        let t = Some(timeout.max(Duration::from_millis(1)));
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

/// A serial port (or pseudo-terminal) as a TLS transport.
pub struct SerialStream(pub serialport::TTYPort);

impl Read for SerialStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for SerialStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    /// rustls flushes after every record; the port's own flush waits for the
    /// line to drain (tcdrain), which would stall every frame. The kernel
    /// sends what was written anyway.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ByteStream for SerialStream {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        serialport::SerialPort::set_timeout(&mut self.0, timeout.max(Duration::from_millis(1)))
            .map_err(io::Error::from)
    }
}

/// Where a device is: a TCP address, or a serial port's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAddr {
    Tcp(String),
    Serial(PathBuf),
}

impl DeviceAddr {
    /// A path (starting with `/` or `.`) is a serial port; anything else is
    /// `host:port`.
    pub fn parse(text: &str) -> anyhow::Result<DeviceAddr> {
        if text.starts_with('/') || text.starts_with('.') {
            Ok(DeviceAddr::Serial(PathBuf::from(text)))
        } else if text
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            Ok(DeviceAddr::Tcp(text.to_string()))
        } else {
            anyhow::bail!(
                "device address {text:?} is neither HOST:PORT nor a serial port path (/dev/...)"
            )
        }
    }
}

impl std::fmt::Display for DeviceAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceAddr::Tcp(a) => write!(f, "tcp {a}"),
            DeviceAddr::Serial(p) => write!(f, "serial {}", p.display()),
        }
    }
}

fn io_failure(e: io::Error) -> LinkFailure {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LinkFailure::Timeout,
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => LinkFailure::Closed,
        // EIO: the other end of a pseudo-terminal (or a USB adapter) went away.
        _ if e.raw_os_error() == Some(5) => LinkFailure::Closed,
        _ => LinkFailure::Io(e.to_string()),
    }
}

/// A TLS session over a byte stream, either side.
pub struct TlsLink<C> {
    stream: StreamOwned<C, Box<dyn ByteStream>>,
    peer: (Role, String),
    addr: String,
    closed: bool,
}

impl<C, S> TlsLink<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>> + Send,
    S: SideData,
{
    /// Runs the handshake within `timeout` and checks that the peer holds a
    /// credential of role `expect`.
    fn establish(
        mut conn: C,
        mut sock: Box<dyn ByteStream>,
        addr: String,
        expect: Role,
        timeout: Duration,
    ) -> anyhow::Result<TlsLink<C>> {
        let deadline = Instant::now() + timeout;
        while conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                anyhow::bail!("TLS handshake with {addr} timed out after {timeout:?}");
            }
            sock.set_timeout(left)?;
            conn.complete_io(&mut sock).map_err(|e| match io_failure(e) {
                LinkFailure::Timeout => anyhow::anyhow!("TLS handshake with {addr} timed out after {timeout:?}"),
                LinkFailure::Closed => anyhow::anyhow!("{addr} closed the link during the TLS handshake (did it refuse our credential?)"),
                LinkFailure::Io(e) => anyhow::anyhow!("TLS handshake with {addr} failed: {e}"),
            })?;
        }
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .with_context(|| format!("{addr} presented no certificate"))?;
        let peer = role_of(leaf).with_context(|| {
            format!("{addr} presented a certificate with no certline role; expected a {expect} credential")
        })?;
        if peer.0 != expect {
            anyhow::bail!(
                "{addr} presented a {} credential ({}); expected a {expect} credential",
                peer.0,
                peer.1
            );
        }
        Ok(TlsLink {
            stream: StreamOwned::new(conn, sock),
            peer,
            addr,
            closed: false,
        })
    }

    /// The peer's role and name from its credential.
    pub fn peer(&self) -> &(Role, String) {
        &self.peer
    }

    /// Drops the connection without a TLS close_notify (a pulled cable).
    pub fn abort(mut self) {
        self.closed = true;
    }
}

impl<C, S> DeviceLink for TlsLink<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>> + Send,
    S: SideData,
{
    fn read(&mut self, max: usize, timeout: Duration) -> Result<Vec<u8>, LinkFailure> {
        if self.closed {
            return Err(LinkFailure::Closed);
        }
        self.stream.sock.set_timeout(timeout).map_err(io_failure)?;
        let mut buf = vec![0; max.clamp(1, MAX_READ)];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(LinkFailure::Closed),
            Ok(n) => {
                buf.truncate(n);
                Ok(buf)
            }
            Err(e) => Err(io_failure(e)),
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<(), LinkFailure> {
        if self.closed {
            return Err(LinkFailure::Closed);
        }
        self.stream
            .sock
            .set_timeout(Duration::from_secs(30))
            .map_err(io_failure)?;
        self.stream
            .write_all(data)
            .and_then(|()| self.stream.flush())
            .map_err(io_failure)
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.stream.conn.send_close_notify();
        if self.stream.flush().is_err() {
            return;
        }
        // Wait (briefly) for the peer's close_notify: a serial line has no
        // connection boundaries, so a peer still finishing this session would
        // read the next session's first bytes as part of this one.
        let deadline = Instant::now() + CLOSE_WAIT;
        let mut sink = [0u8; 1024];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if self.stream.sock.set_timeout(left).is_err() {
                return;
            }
            match self.stream.read(&mut sink) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn describe(&self) -> String {
        format!("{} ({} {})", self.addr, self.peer.0, self.peer.1)
    }
}

/// The line's side of the link: presents the line credential, trusts its root.
pub fn line_config(cred: &Credential) -> anyhow::Result<Arc<ClientConfig>> {
    if cred.role() != Role::Line {
        anyhow::bail!(
            "credential {} is a {} credential; the device link needs a line credential",
            cred.name(),
            cred.role()
        );
    }
    // Every device of a vendor shares one link credential (clientAuth only, no
    // host names): its chain and role are checked in the handshake, not a name.
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(RoleVerifier::device_link(&cred.root)?)
        .with_client_auth_cert(cred.chain.clone(), cred.key())
        .map_err(|e| anyhow::anyhow!("credential {} is unusable for the link: {e}", cred.name()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The device's side of the link: presents the device-link credential and
/// requires a client certificate from the same root.
pub fn device_config(cred: &Credential) -> anyhow::Result<Arc<ServerConfig>> {
    if cred.role() != Role::DeviceLink {
        anyhow::bail!(
            "credential {} is a {} credential; a device needs a device-link credential",
            cred.name(),
            cred.role()
        );
    }
    let mut config = (*crate::service::tls::server_config(cred, ClientAuth::Required)?).clone();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Opens a serial port as the line does.
pub fn open_serial(path: &std::path::Path) -> anyhow::Result<serialport::TTYPort> {
    let port = serialport::new(path.to_string_lossy(), BAUD_RATE)
        .timeout(Duration::from_secs(1))
        .open_native()
        .with_context(|| format!("cannot open serial port {}", path.display()))?;
    // Bytes left in the line by an earlier session (a device's late reply)
    // would be read as the start of this one.
    serialport::SerialPort::clear(&port, serialport::ClearBuffer::Input)
        .with_context(|| format!("cannot clear serial port {}", path.display()))?;
    Ok(port)
}

/// Connects the line to the device at `addr` and runs the TLS handshake.
pub fn connect(
    addr: &DeviceAddr,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> anyhow::Result<TlsLink<ClientConnection>> {
    let sock: Box<dyn ByteStream> = match addr {
        DeviceAddr::Tcp(a) => {
            let sa: SocketAddr = a
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve device address {a}"))?
                .next()
                .with_context(|| format!("device address {a} resolves to nothing"))?;
            let s = TcpStream::connect_timeout(&sa, timeout)
                .with_context(|| format!("cannot connect to the device at {a}"))?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        DeviceAddr::Serial(p) => Box::new(SerialStream(open_serial(p)?)),
    };
    // The name is not checked (see line_config); rustls needs one anyway.
    let name = ServerName::try_from("device.certline.invalid").expect("a valid DNS name");
    let conn = ClientConnection::new(config, name)
        .map_err(|e| anyhow::anyhow!("cannot start TLS: {e}"))?;
    TlsLink::establish(conn, sock, addr.to_string(), Role::DeviceLink, timeout)
}

/// The device's side: runs the handshake on an accepted stream and checks that
/// the peer is a line.
pub fn accept(
    sock: Box<dyn ByteStream>,
    addr: String,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> anyhow::Result<TlsLink<ServerConnection>> {
    let conn =
        ServerConnection::new(config).map_err(|e| anyhow::anyhow!("cannot start TLS: {e}"))?;
    TlsLink::establish(conn, sock, addr, Role::Line, timeout)
}

/// A [`DeviceLink`] as a protocol transport (the device simulator's end).
pub struct AsTransport<'a>(pub &'a mut dyn DeviceLink);

impl certline_device_protocol::Transport for AsTransport<'_> {
    fn read(&mut self, max: usize, timeout_ms: u32) -> Result<Vec<u8>, LinkFailure> {
        self.0.read(max, Duration::from_millis(timeout_ms.into()))
    }

    fn write(&mut self, data: &[u8]) -> Result<(), LinkFailure> {
        self.0.write(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_addresses() {
        assert_eq!(
            DeviceAddr::parse("127.0.0.1:4000").unwrap(),
            DeviceAddr::Tcp("127.0.0.1:4000".into())
        );
        assert_eq!(
            DeviceAddr::parse("[::1]:4000").unwrap(),
            DeviceAddr::Tcp("[::1]:4000".into())
        );
        assert_eq!(
            DeviceAddr::parse("/dev/pts/3").unwrap(),
            DeviceAddr::Serial("/dev/pts/3".into())
        );
        let err = DeviceAddr::parse("printer").unwrap_err().to_string();
        assert!(err.contains("neither HOST:PORT"), "{err}");
    }
}
