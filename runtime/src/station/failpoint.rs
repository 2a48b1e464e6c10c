//! Named points in the station's state changes where the crash tests stop or
//! kill it: the `fail` crate's `fail_point!`, compiled in only with the
//! `failpoints` feature and set with the `FAILPOINTS` environment variable
//! (e.g. `FAILPOINTS=take-after-commit=pause`). A configured point says so on
//! stderr when it is reached, so a test knows when to kill.

/// Every point the station has, in lifecycle order (the crash matrix runs them all).
pub const POINTS: &[&str] = &[
    "fetch-before-store",
    "fetch-after-store",
    "take-after-commit",
    "received-after-commit",
    "written-after-commit",
    "failed-after-commit",
    "timeout-after-commit",
    "retention-before-checkpoint",
    "discard-after-commit",
    "rework-after-commit",
    "queue-after-ca",
    "replace-after-commit",
];

/// Stops, fails or panics here if the crash tests configured `name`.
#[inline]
pub(crate) fn point(name: &'static str) {
    #[cfg(feature = "failpoints")]
    {
        if fail::list().iter().any(|(n, _)| n == name) {
            eprintln!("station reached fail point {name}");
        }
        fail::fail_point!(name);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
