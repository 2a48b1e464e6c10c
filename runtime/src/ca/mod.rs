//! The CA role (`certline ca`), split as step-ca does: issuance policy
//! ([`authority`]), the CA directory and its sealed keys ([`dir`]), transport
//! ([`serve`], and [`request`] for the client side), and the command line.

pub mod authority;
pub mod bench;
pub mod cli;
pub mod dir;
pub mod request;
pub mod serve;
