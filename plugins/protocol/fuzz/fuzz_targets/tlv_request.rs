//! A request, any bytes, read by the device's TLV end: a request or an error,
//! never a panic. The first byte picks a frame kind and the rest is sent
//! both raw and inside a frame with a good CRC, so the item parser is reached.
#![no_main]

use certline_device_protocol::tlv::{encode_frame, TlvEndpoint, MAX_PAYLOAD};
use certline_device_protocol::{DeviceSide, Replay};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = TlvEndpoint::new(Replay::new(bytes)).recv_request(0);
    if let Some((&kind, payload)) = bytes.split_first() {
        if payload.len() <= MAX_PAYLOAD {
            let frame = encode_frame(kind, 0, payload);
            let _ = TlvEndpoint::new(Replay::new(&frame)).recv_request(0);
        }
    }
});
