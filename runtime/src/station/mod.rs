//! The station role (`certline station`): the factory's terminal between
//! the CA and the lines.
//!
//! - the station itself ([`station`]: open, keys, stock check) and its
//!   refusals ([`error`]: a kind and a stable code, no transport);
//! - what it does: the line API ([`handout`], and [`csr`] for models whose
//!   devices generate their own key), the sweeps ([`sweeps`]), the admin's
//!   changes ([`admin`]) behind the login ([`login`]), the admin's reports
//!   ([`reports`]), production plans and the drop folder ([`plan`]),
//!   retention ([`retention`]);
//! - what it asks of the CA ([`fetch`]) and the CA's CRL ([`crl`]);
//! - transport: the HTTPS API ([`serve`], the only place with HTTP statuses),
//!   the admin's console in a browser ([`console`], mounted by `serve`), what
//!   the serving station saw of each line ([`activity`]) and the work beside
//!   it ([`background`]);
//! - configuration and directory ([`config`], [`dir`]), the command line
//!   ([`cli`], [`admin_cli`]), crash-test points ([`failpoint`]).
//!
//! Storage is `store::stock`, which holds the pack lifecycle.

pub mod activity;
pub mod admin;
pub mod admin_cli;
pub mod background;
pub mod bench;
pub mod cli;
pub mod config;
pub mod console;
pub mod crl;
pub mod csr;
pub mod dir;
pub mod error;
pub mod failpoint;
pub mod fetch;
pub mod handout;
pub mod login;
pub mod plan;
pub mod reports;
pub mod retention;
pub mod serve;
#[allow(clippy::module_inception)]
pub mod station;
pub mod sweeps;

pub use error::StationError;
pub use station::{Opened, Station};
