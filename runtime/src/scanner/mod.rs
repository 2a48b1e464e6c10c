//! The scanner primitive: barcodes in, one scan per line of input.
//!
//! Two sources: a serial barcode reader (the `serialport` crate; a real port or
//! a pseudo-terminal) and a keyboard-wedge reader typing into standard input.
//! Either way a scan is one line (ended by CR, LF or both); the AIM symbology
//! identifier a reader may put in front (`]C1`, `]Q3`, `]d2`, ...) is stripped,
//! surrounding blanks are trimmed, and empty lines are no scans. [`Debounce`]
//! turns a double trigger (the same code again within a window) into one scan.
//!
//! The scanner knows nothing about device ids: what a code means is the line
//! workflow's business.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Longest scan kept; anything longer is cut (and will not parse as an id).
pub const MAX_SCAN: usize = 512;
/// How often a serial reader looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);
/// How long a serial reader waits before reopening a port that failed.
const REOPEN: Duration = Duration::from_millis(500);

/// Where scans come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A keyboard-wedge scanner typing into standard input.
    Stdin,
    /// A serial barcode reader.
    Serial { port: PathBuf, baud: u32 },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Stdin => write!(f, "keyboard (standard input)"),
            Source::Serial { port, baud } => write!(f, "serial {} at {baud} baud", port.display()),
        }
    }
}

/// One scan: the code as the reader sent it, cleaned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub code: String,
    /// When the scan's line was complete.
    pub at: Instant,
}

/// What a scanner reports.
#[derive(Debug)]
pub enum ScanEvent {
    Scan(Scan),
    /// The source ended for good (standard input closed); says why.
    Ended(String),
}

/// Strips an AIM symbology identifier (`]` + symbology letter + modifier) from
/// the front of a code.
pub fn strip_aim(code: &str) -> &str {
    let b = code.as_bytes();
    if b.len() >= 3 && b[0] == b']' && b[1].is_ascii_alphabetic() && b[2].is_ascii_alphanumeric() {
        &code[3..]
    } else {
        code
    }
}

/// Turns one raw line into a scan code: lossy UTF-8, trimmed, AIM prefix
/// stripped, cut at [`MAX_SCAN`]. `None` for an empty line.
pub fn clean(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let text = strip_aim(text.trim()).trim();
    if text.is_empty() {
        return None;
    }
    let cut: String = text.chars().take(MAX_SCAN).collect();
    Some(cut.trim_end().to_string())
}

/// Splits a byte stream into lines (CR, LF or CRLF), keeping an unfinished line.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; returns every code completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\r' || b == b'\n' {
                if let Some(code) = clean(&self.buf) {
                    out.push(code);
                }
                self.buf.clear();
            } else if self.buf.len() < MAX_SCAN * 4 {
                self.buf.push(b);
            }
        }
        out
    }
}

/// Drops a scan of the same code as the last accepted one within `window`
/// (a double trigger). A window of zero accepts everything.
#[derive(Debug)]
pub struct Debounce {
    window: Duration,
    last: Option<(String, Instant)>,
}

impl Debounce {
    pub fn new(window: Duration) -> Debounce {
        Debounce { window, last: None }
    }

    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Whether `scan` counts; an accepted scan starts a new window.
    pub fn accept(&mut self, scan: &Scan) -> bool {
        if let Some((code, at)) = &self.last {
            if *code == scan.code && scan.at.saturating_duration_since(*at) < self.window {
                return false;
            }
        }
        self.last = Some((scan.code.clone(), scan.at));
        true
    }
}

/// A running scanner; stops reading when dropped (a serial reader within
/// [`POLL`]; standard input cannot be interrupted and simply stays unread).
pub struct Scanner {
    source: Source,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scanner {
    /// Starts reading `source` on its own thread; every scan goes to `sink`.
    /// A serial port that cannot be opened is an error here; one that fails
    /// later is reopened until it works again.
    pub fn start(
        source: &Source,
        sink: impl Fn(ScanEvent) + Send + 'static,
    ) -> anyhow::Result<Scanner> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match source {
            Source::Stdin => {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name("scanner-stdin".into())
                    .spawn(move || read_stdin(&stop, &sink))?
            }
            Source::Serial { port, baud } => {
                let first = open_serial(port, *baud)?;
                let (port, baud, stop) = (port.clone(), *baud, stop.clone());
                std::thread::Builder::new()
                    .name("scanner-serial".into())
                    .spawn(move || read_serial(first, &port, baud, &stop, &sink))?
            }
        };
        Ok(Scanner {
            source: source.clone(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn source(&self) -> &Source {
        &self.source
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if matches!(self.source, Source::Serial { .. }) {
                let _ = t.join();
            }
        }
    }
}

fn read_stdin(stop: &AtomicBool, sink: &dyn Fn(ScanEvent)) {
    let stdin = std::io::stdin();
    let mut lock = stdin.lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match lock.read_until(b'\n', &mut line) {
            Ok(0) => {
                if !stop.load(Ordering::SeqCst) {
                    sink(ScanEvent::Ended("standard input closed".into()));
                }
                return;
            }
            Ok(_) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let mut splitter = LineSplitter::default();
                line.push(b'\n');
                for code in splitter.feed(&line) {
                    sink(ScanEvent::Scan(Scan {
                        code,
                        at: Instant::now(),
                    }));
                }
            }
            Err(e) => {
                sink(ScanEvent::Ended(format!("standard input failed: {e}")));
                return;
            }
        }
    }
}

/// Opens a serial barcode reader (no flow control, 8N1).
pub fn open_serial(port: &std::path::Path, baud: u32) -> anyhow::Result<serialport::TTYPort> {
    serialport::new(port.to_string_lossy(), baud)
        .timeout(POLL)
        .open_native()
        .with_context(|| format!("cannot open the scanner's serial port {}", port.display()))
}

fn read_serial(
    mut port: serialport::TTYPort,
    path: &std::path::Path,
    baud: u32,
    stop: &AtomicBool,
    sink: &dyn Fn(ScanEvent),
) {
    let mut splitter = LineSplitter::default();
    let mut buf = [0u8; 256];
    let mut failing = false;
    while !stop.load(Ordering::SeqCst) {
        match port.read(&mut buf) {
            Ok(0) => std::thread::sleep(POLL),
            Ok(n) => {
                failing = false;
                for code in splitter.feed(&buf[..n]) {
                    sink(ScanEvent::Scan(Scan {
                        code,
                        at: Instant::now(),
                    }));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(port = %path.display(), "scanner port failed: {e}; reopening");
                    failing = true;
                }
                std::thread::sleep(REOPEN);
                if let Ok(p) = open_serial(path, baud) {
                    port = p;
                    splitter = LineSplitter::default();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aim_prefix_and_blanks() {
        assert_eq!(clean(b"]C13012-123456\r").as_deref(), Some("3012-123456"));
        assert_eq!(clean(b"]Q3A123-1").as_deref(), Some("A123-1"));
        assert_eq!(clean(b"  3012-1  ").as_deref(), Some("3012-1"));
        assert_eq!(clean(b"]C1"), None);
        assert_eq!(clean(b"   "), None);
        // Not an AIM identifier: left alone.
        assert_eq!(clean(b"]3012-1").as_deref(), Some("]3012-1"));
        // Cut at MAX_SCAN characters, and still trimmed after the cut.
        let long = format!("{} tail", "A".repeat(MAX_SCAN - 1));
        assert_eq!(clean(long.as_bytes()), Some("A".repeat(MAX_SCAN - 1)));
    }

    #[test]
    fn lines_split_on_cr_lf_and_crlf() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"A-1\r\nB-2\rC-"), vec!["A-1", "B-2"]);
        assert_eq!(s.feed(b"3\n\n"), vec!["C-3"]);
    }

    #[test]
    fn double_trigger_is_one_scan() {
        let t = Instant::now();
        let scan = |code: &str, ms: u64| Scan {
            code: code.into(),
            at: t + Duration::from_millis(ms),
        };
        let mut d = Debounce::new(Duration::from_millis(500));
        assert!(d.accept(&scan("A-1", 0)));
        assert!(!d.accept(&scan("A-1", 100)));
        assert!(d.accept(&scan("B-1", 200)));
        assert!(d.accept(&scan("A-1", 300)));
        assert!(d.accept(&scan("A-1", 900)));
        let mut off = Debounce::new(Duration::ZERO);
        assert!(off.accept(&scan("A-1", 0)));
        assert!(off.accept(&scan("A-1", 0)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Any bytes from a reader: a scan is trimmed, not empty, at most
        /// MAX_SCAN characters, and how the bytes arrive in reads does not
        /// change the scans.
        #[test]
        fn any_bytes_split_the_same_however_they_arrive(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(0usize..3000, 0..8),
        ) {
            let whole = LineSplitter::default().feed(&bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort();
            let mut pieces = LineSplitter::default();
            let mut got = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                got.extend(pieces.feed(&bytes[from..c]));
                from = c;
            }
            proptest::prop_assert_eq!(&got, &whole);
            for code in &whole {
                proptest::prop_assert!(!code.is_empty());
                proptest::prop_assert_eq!(code.trim(), code.as_str());
                proptest::prop_assert!(code.chars().count() <= MAX_SCAN);
                proptest::prop_assert!(!code.contains(['\r', '\n']));
            }
        }

        #[test]
        fn clean_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Some(code) = clean(&bytes) {
                proptest::prop_assert!(!code.is_empty() && code.chars().count() <= MAX_SCAN);
            }
        }
    }

    /// The scanner on a real pseudo-terminal pair: one scan per line (CR, LF
    /// or CRLF, split across reads or not), the AIM symbology prefix stripped,
    /// blank lines ignored, a double trigger debounced.
    mod on_a_pty {
        use std::io::Write;
        use std::sync::mpsc::channel;
        use std::time::Duration;

        use crate::scanner::{Debounce, ScanEvent, Scanner, Source};

        fn pair() -> (serialport::TTYPort, serialport::TTYPort, String) {
            let (master, slave) = serialport::TTYPort::pair().unwrap();
            let path = serialport::SerialPort::name(&slave).unwrap();
            (master, slave, path)
        }

        #[test]
        fn serial_reader_scans_lines_strips_aim_and_debounces() {
            let (mut reader, _slave, path) = pair();
            let (tx, rx) = channel();
            let scanner = Scanner::start(
                &Source::Serial {
                    port: path.into(),
                    baud: 9600,
                },
                move |e| {
                    let _ = tx.send(e);
                },
            )
            .unwrap();
            let next = || match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
                ScanEvent::Scan(s) => s,
                other => panic!("unexpected {other:?}"),
            };
            reader.write_all(b"]C13012-000001\r\n").unwrap();
            assert_eq!(next().code, "3012-000001");
            reader.write_all(b"   \r\n]d2A123-1\n").unwrap();
            assert_eq!(next().code, "A123-1");
            // A line split across two reads.
            reader.write_all(b"30").unwrap();
            reader.flush().unwrap();
            std::thread::sleep(Duration::from_millis(150));
            reader.write_all(b"12-7\r").unwrap();
            assert_eq!(next().code, "3012-7");

            // A double trigger: the second of two equal scans in the window is dropped.
            reader.write_all(b"3012-9\r3012-9\r3012-10\r").unwrap();
            let (a, b, c) = (next(), next(), next());
            let mut debounce = Debounce::new(Duration::from_secs(5));
            assert!(debounce.accept(&a));
            assert!(!debounce.accept(&b), "double trigger accepted");
            assert!(debounce.accept(&c));
            // Stopping the scanner ends its thread.
            drop(scanner);
        }

        #[test]
        fn a_missing_port_is_a_clear_error() {
            let err = Scanner::start(
                &Source::Serial {
                    port: "/dev/certline-no-such-port".into(),
                    baud: 9600,
                },
                |_| {},
            )
            .err()
            .unwrap();
            let text = format!("{err:#}");
            assert!(
                text.contains("cannot open the scanner's serial port /dev/certline-no-such-port"),
                "{text}"
            );
        }
    }
}
