//! Example vendor plugin: an electricity meter that takes its identity as binary
//! TLV frames with a CRC over a serial link, acknowledging every frame and asking
//! for it again when the CRC is wrong. The wire format is
//! `certline_device_protocol::tlv`, shared with the reference device.

use certline_device_protocol::tlv::TlvEndpoint;

certline_plugin_sdk::protocol_plugin!(Meter, "acme-meter", ["A123"], |link| {
    TlvEndpoint::new(link)
});
