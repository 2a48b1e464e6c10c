//! Example vendor plugin: an image-forming device (printer/copier) that takes its
//! identity as SOAP-like XML envelopes over the TCP crossover link. The wire
//! format is `certline_device_protocol::xml`, shared with the reference device.
//! Built against `certline:device@0.2.0`: it serves both key modes (a pack
//! with the CA's key, or `generate-key` and a pack without a key for a device
//! that generates its own).

use certline_device_protocol::xml::XmlEndpoint;

certline_plugin_sdk::protocol_plugin!(Imaging, "acme-imaging", ["3012", "3013", "3014"], |link| {
    XmlEndpoint::new(link)
});
