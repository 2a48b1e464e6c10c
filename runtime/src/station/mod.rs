//! The station role (`certline station`), split like the CA: policy
//! ([`desk`]: who may take what, what a report does, retention, rework,
//! discard; [`admin`]: the login), storage (`store::stock`, which holds the
//! pack lifecycle), transport ([`serve`] for lines and administrators,
//! [`fetch`] for everything asked of the CA), plans ([`plan`]), configuration
//! ([`config`], [`dir`], [`retention`]) and the command line.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod desk;
pub mod dir;
pub mod fetch;
pub mod plan;
pub mod retention;
pub mod serve;
