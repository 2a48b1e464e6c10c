//! The scanner primitive on a real pseudo-terminal pair: one scan per line
//! (CR, LF or CRLF, split across reads or not), the AIM symbology prefix
//! stripped, blank lines ignored, a double trigger debounced.

use std::io::Write;
use std::sync::mpsc::channel;
use std::time::Duration;

use certline::scanner::{Debounce, ScanEvent, Scanner, Source};

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
