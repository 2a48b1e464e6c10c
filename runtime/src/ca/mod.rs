//! The CA role (`certline ca`), layered as step-ca does: configuration
//! ([`config`]), issuance policy with no transport in it ([`issuance`], its
//! crash story in `ISSUANCE-CYCLE.md`), the CA directory and its sealed keys
//! ([`dir`]), the path for keys born in the device ([`csr`]), transport ([`serve`], the only place refusals become HTTP, and
//! [`request`] for the client side), and the command line.

pub mod bench;
pub mod cli;
pub mod config;
pub mod csr;
pub mod dir;
pub mod issuance;
pub mod migrate;
pub mod request;
pub mod serve;
