//! A request, any bytes, read by the device's XML end (the reference
//! device): a request or an error, never a panic.
#![no_main]

use certline_device_protocol::xml::XmlEndpoint;
use certline_device_protocol::{DeviceSide, Replay};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = XmlEndpoint::new(Replay::new(bytes)).recv_request(0);
});
