//! A device's answer, any bytes, read by the host's TLV end: an answer or an
//! error, never a panic.
#![no_main]

use certline_device_protocol::tlv::TlvEndpoint;
use certline_device_protocol::{ClientSide, Replay};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = TlvEndpoint::new(Replay::new(bytes)).recv_answer(0);
});
