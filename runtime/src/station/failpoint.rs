//! The station's crash points, in lifecycle order (see [`crate::failpoint`]).

/// Every point the station has, in lifecycle order (the crash matrix runs them all).
pub const POINTS: &[&str] = &[
    "fetch-before-store",
    "fetch-after-store",
    "take-after-commit",
    "sign-after-ca",
    "sign-after-commit",
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
    crate::failpoint::point("station", name)
}
