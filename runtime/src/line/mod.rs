//! The line role (`certline line`): one production line's terminal.
//!
//! Scanner in ([`crate::scanner`]), the workflow ([`workflow`]: the one
//! replaceable piece, built-in `<model>-<serial>` parser until the factory's
//! Lua takes over), the device plugin and link ([`crate::plugin`],
//! [`crate::link`]), results out to the station through a durable outbox
//! ([`outbox`]). [`terminal`] runs the steps of one scan (`stop.rs` puts a
//! failed step in the operator's words), [`run`] the main loop with
//! configuration reload, [`bench`] measures scan-to-written.

pub mod bench;
pub mod cli;
pub mod config;
pub mod outbox;
pub mod run;
mod stop;
pub mod terminal;
pub mod workflow;
