//! What the line tells its operator (and `--json` consumers) about a scan it
//! refuses before anything is written: the stable codes a workflow (the
//! built-in parser or the factory's `line.lua`) refuses with, each with the
//! one piece of advice the operator sees when the script gives none. A
//! script may use any code of 1-40 `a-z 0-9 _`; the codes here are the ones
//! whose meaning the line knows.

/// Refusal codes of the line's workflow (the `code` of a refused device line).
pub mod codes {
    /// The scan is not a device id (or the script did not recognise it).
    pub const MALFORMED_BARCODE: &str = "malformed_barcode";
    /// The device has not passed its quality check (a check sheet says so).
    pub const QC_FAILED: &str = "qc_failed";
    /// The model carries no identity certificate.
    pub const NO_CERTIFICATE: &str = "no_certificate";
    /// The workflow asks the operator to confirm by scanning the code again.
    pub const CONFIRM: &str = "confirm";
    /// The line script failed on this scan.
    pub const SCRIPT_ERROR: &str = "script_error";
}

/// What the operator does next after a refusal with `code`, when the
/// workflow does not say.
pub fn advice(code: &str) -> &'static str {
    match code {
        codes::MALFORMED_BARCODE => "scan the barcode on the device's rating plate again",
        codes::QC_FAILED => {
            "take the device off the line: it has not passed its quality check (send it back to QC, do not rescan it here)"
        }
        codes::NO_CERTIFICATE => "pass the device on; nothing to write",
        codes::CONFIRM => "scan the same code again to confirm",
        codes::SCRIPT_ERROR => {
            "set the device aside and tell the line engineer; the next scan runs normally"
        }
        _ => "scan the next device",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qc_fail_is_never_told_to_rescan() {
        let qc = advice(codes::QC_FAILED);
        assert!(qc.contains("take the device off the line"), "{qc}");
        assert!(!qc.contains("rating plate"), "{qc}");
        assert_ne!(advice(codes::MALFORMED_BARCODE), qc);
    }
}
