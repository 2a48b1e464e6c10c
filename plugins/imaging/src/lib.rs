//! Example vendor plugin: an image-forming device (printer/copier) that takes its
//! identity as SOAP-like XML envelopes over the TCP crossover link. The wire
//! format is `certline_device_protocol::xml`, shared with the reference device.

use certline_device_protocol::xml::XmlEndpoint;

certline_plugin_sdk::protocol_plugin!(Imaging, "acme-imaging", ["3012", "3013"], |link| {
    XmlEndpoint::new(link)
});
