//! certline: per-device identity certificates for factory production lines.
//!
//! Roles, each a `certline` subcommand, talking to each other only over the
//! wire (never importing one another): [`ca`], [`station`], [`line`],
//! [`device_sim`], [`center`], and [`demo`] (which runs the others as child
//! processes). [`cli`] only dispatches to the roles' own command modules.
//!
//! Primitives, used by the roles and never reaching into them: [`pki`]
//! (keys, certificates, packs, sealing), [`store`] (SQLite stock, ledger,
//! audit), [`service`] (mTLS HTTPS for the roles' APIs), [`link`] (the TLS
//! link to a device), [`plugin`] (the WASM device-plugin host), [`scanner`],
//! [`script`] (sandboxed Lua), [`watch`] (folder watching), [`table`] (CSV
//! tables), [`text`] (escaping for terminals), [`day`] (the day as text),
//! [`failpoint`] (named crash points for the crash tests), [`child`] (a
//! `certline` child process), and [`command`] (what every role's command
//! shares: `--json` reports, the tokio runtime, bench percentiles). [`wire`]
//! holds the one definition of every request, response and report type that
//! two parts share.

pub mod child;
pub mod command;
pub mod day;
pub mod failpoint;
pub mod link;
pub mod pki;
pub mod plugin;
pub mod scanner;
pub mod script;
pub mod service;
pub mod store;
pub mod table;
pub mod text;
pub mod watch;
pub mod wire;

pub mod ca;
pub mod center;
pub mod cli;
pub mod demo;
pub mod device_sim;
pub mod line;
pub mod station;
