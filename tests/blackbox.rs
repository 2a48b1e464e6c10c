//! The black-box tests: the real `certline` binary run as separate processes
//! (CA, station, line, device simulator, center, demo) on loopback. One test
//! binary holds them all, so the library is linked once for all of them; each
//! file below is one module (run one with `cargo test --test blackbox station_line::`).

mod common;
mod device_support;
mod line_support;
mod pg_support;
mod station_support;

mod ca;
mod ca_csr;
mod ca_hsm;
mod ca_ledger;
mod ca_postgres;
mod ca_public;
mod center;
mod demo;
mod device_link;
mod engineer_tools;
mod est;
mod hostile_peers;
mod keygen_line;
mod line_config;
mod line_flow;
mod line_outage;
mod line_script;
mod plugin_guide;
mod station_admin;
mod station_console;
mod station_crash;
mod station_fetch;
mod station_line;
mod station_plan;
