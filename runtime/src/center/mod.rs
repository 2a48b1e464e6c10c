//! The remote-management center (`certline center`): devices connect with the
//! identity certificate written on the line; the center reads the id from the
//! SAN (checked against the subject), checks revocation against the CA's CRL,
//! and answers contract / no contract / revoked / unknown — or unverifiable
//! when it cannot know the revocation status (it fails closed).

pub mod cli;
pub mod contracts;
pub mod crl;
pub mod decide;
pub mod serve;
