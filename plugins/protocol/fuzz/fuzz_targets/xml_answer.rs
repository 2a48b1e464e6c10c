//! A device's answer, any bytes, read by the host's (the plugin's) XML end
//! after it asked for the identity: an answer or an error, never a panic.
#![no_main]

use certline_device_protocol::xml::XmlEndpoint;
use certline_device_protocol::{ClientSide, Replay, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut host = XmlEndpoint::new(Replay::new(&[]));
    host.send_request(&Request::ReadIdentity).unwrap();
    host.transport().rx.extend(bytes.iter().copied());
    let _ = host.recv_answer(0);
});
