//! Test plugin: claims model code 3012, which acme-imaging serves too. A plugin
//! folder holding both must be refused with an error naming both plugins.

use certline_device_protocol::xml::XmlEndpoint;

certline_plugin_sdk::protocol_plugin!(DupModel, "dup-model", ["3012"], |link| {
    XmlEndpoint::new(link)
});
