//! certline: per-device identity certificates for factory production lines.
//!
//! Primitives (used by roles, never reaching into them): [`pki`], [`store`],
//! [`service`] (mTLS HTTPS for the roles' APIs), [`link`], [`plugin`].
//! Roles (talking to each other only over the wire): [`ca`], [`device_sim`].
//! [`wire`] holds the one definition of every request and response type that a
//! client and a server share.

pub mod ca;
pub mod center;
pub mod cli;
pub mod demo;
pub mod device_sim;
pub mod failpoint;
pub mod line;
pub mod link;
pub mod pki;
pub mod plugin;
pub mod scanner;
pub mod script;
pub mod service;
pub mod station;
pub mod store;
pub mod table;
pub mod text;
pub mod watch;
pub mod wire;
