//! The `script` primitive: factory scripts in Lua 5.4 (mlua, vendored), each
//! in its own sandbox ([`sandbox`], under the [`budget`]), hot-reloaded
//! ([`file`]), for two roles: the line's barcode parsing and workflow
//! ([`line`]) and the station's retention policy ([`retention`]). The roles
//! adapt these to their own traits; this module never reaches into a role.
//!
//! A script sees `string`, `table`, `math`, `utf8`, the safe part of the base
//! library and a read-only `host` table (see `scripts/README.md`); no `io`,
//! `os`, `debug`, `package`/`require`, `load`/`loadfile`/`dofile`,
//! `string.dump` or `collectgarbage`. Every call runs under an instruction
//! budget and a deadline, every state under a memory limit; errors name the
//! file and the line.

pub mod bench;
pub mod budget;
pub mod cli;
pub mod factory;
pub mod file;
pub mod line;
pub mod pattern;
pub mod retention;
pub mod sandbox;
mod stdlib;

pub use file::{Reload, ScriptFile, ScriptStatus};
pub use sandbox::{HostApi, Limits, Script, ScriptError};
