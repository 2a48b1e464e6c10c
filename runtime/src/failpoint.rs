//! Named crash points for the crash tests: the `fail` crate's `fail_point!`,
//! compiled in only with the `failpoints` feature and set with the
//! `FAILPOINTS` environment variable (e.g. `FAILPOINTS=take-after-commit=pause`).
//! A configured point says so on stderr ("<who> reached fail point <name>")
//! when it is reached, so a test knows when to kill the process. Each role
//! keeps the list of its own points; this is the one mechanism they share.

/// Stops, fails or panics here if the crash tests configured `name`.
#[inline]
pub fn point(who: &str, name: &'static str) {
    #[cfg(feature = "failpoints")]
    {
        if fail::list().iter().any(|(n, _)| n == name) {
            eprintln!("{who} reached fail point {name}");
        }
        fail::fail_point!(name);
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (who, name);
}
