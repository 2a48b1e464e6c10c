//! What every role's command line shares, as a leaf the roles import (the
//! top-level `cli.rs` only dispatches to them): printing a report as text or
//! `--json`, the tokio runtime for commands that talk over the network, and
//! the percentile the bench commands report.

/// The environment variable a station's admin password comes from (the
/// passphrase's is [`crate::pki::seal::PASSPHRASE_ENV`]).
pub const ADMIN_PASSWORD_ENV: &str = "CERTLINE_ADMIN_PASSWORD";

/// Prints a report: as one JSON document with `--json`, otherwise as the
/// human-readable text `human` writes.
pub fn emit<T: serde::Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce(),
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        human();
    }
    Ok(())
}

/// A multi-threaded tokio runtime for the commands that talk over the network.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The `p`th percentile (0 to 100) of `sorted` by nearest rank: the smallest
/// value with at least p % of the values at or below it; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of unsorted figures.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}

/// The state folder of a CA or a station and where its key-encryption
/// passphrase comes from: one argument group for every command that opens
/// one. The passphrase itself never goes on the command line: it comes from
/// `--passphrase-file` or the `CERTLINE_PASSPHRASE` environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct StateDir {
    /// The state folder (the CA's or the station's).
    #[arg(long)]
    pub dir: std::path::PathBuf,
    /// File holding the key-encryption passphrase (else CERTLINE_PASSPHRASE).
    #[arg(long)]
    pub passphrase_file: Option<std::path::PathBuf>,
}

impl StateDir {
    /// The key-encryption passphrase, from the file or the environment.
    pub fn passphrase(&self) -> anyhow::Result<zeroize::Zeroizing<String>> {
        crate::pki::seal::read_passphrase(self.passphrase_file.as_deref())
    }
}
