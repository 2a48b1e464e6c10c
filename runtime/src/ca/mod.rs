//! The CA role (`certline ca`), layered as step-ca does: configuration
//! ([`config`]), issuance policy with no transport in it ([`issuance`], its
//! crash story in `ISSUANCE-CYCLE.md`), the CA directory and its sealed keys
//! ([`dir`]), the path for keys born in the device ([`csr`]), transport
//! ([`serve`], the only place refusals become HTTP, and [`request`] for the
//! client side; [`est`] is the RFC 7030 front door to the same issuance), CRL
//! publication off the request path ([`publish`]), and the command line.

pub mod bench;
pub mod cli;
pub mod config;
pub mod csr;
pub mod dir;
pub mod est;
pub mod issuance;
pub mod migrate;
pub mod publish;
pub mod request;
pub mod revocation_bench;
pub mod serve;
