//! Tests of the library's parts driven from outside the binary: the plugin
//! host, the device protocols, and the Lua scripts. One test
//! binary holds them all, so the library is linked once for all of them (run
//! one file with `cargo test --test library script_sandbox::`).

mod common;
mod device_support;

mod device_protocol;
mod plugin_host;
mod script_examples;
mod script_line;
mod script_reload;
mod script_sandbox;
mod script_station;
