//! State for one session, and a plugin's last words.
//!
//! The host makes a fresh instance of the plugin for every device operation
//! (check the id, write, read back, prove possession: one session on one
//! link) and throws it away afterwards. So anything a plugin keeps in a
//! `thread_local!` lives exactly as long as one session: a protocol endpoint
//! that said `HELLO` once, its sequence numbers, bytes read ahead. The link
//! itself is lent to each call only; [`SessionLink`] is a [`Transport`] that
//! reaches whichever link the running call was lent, so an endpoint built
//! once over it serves every call of the session.
//!
//! [`install_panic_hook`] makes a panic say what and where through
//! `host.log` before the component traps (the host shows it with the trap,
//! instead of only "wasm unreachable instruction executed").

use std::cell::Cell;

use certline_device_protocol::{LinkFailure, Transport};

use crate::{host, Link, LinkTransport};

thread_local! {
    /// The link lent to the call running now (null between calls).
    static LENT: Cell<*const Link> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with `link` as the link [`SessionLink`] reaches; every export of
/// a plugin that keeps an endpoint across calls wraps its body in this
/// (`protocol_plugin!` does).
pub fn lend<R>(link: &Link, f: impl FnOnce() -> R) -> R {
    struct Restore(*const Link);
    impl Drop for Restore {
        fn drop(&mut self) {
            LENT.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LENT.with(|l| l.replace(link as *const Link)));
    f()
}

fn with_lent<R>(
    f: impl FnOnce(&mut LinkTransport<'_>) -> Result<R, LinkFailure>,
) -> Result<R, LinkFailure> {
    let ptr = LENT.with(|l| l.get());
    if ptr.is_null() {
        return Err(LinkFailure::Io(
            "no link is lent outside a call (wrap the call in certline_plugin_sdk::lend)".into(),
        ));
    }
    // SAFETY: the pointer is set by `lend` from a reference that outlives
    // the closure it runs, and reset when that closure returns or unwinds.
    let link = unsafe { &*ptr };
    f(&mut LinkTransport(link))
}

/// The link of the running call, as a [`Transport`] that can be kept across
/// the calls of one session (inside [`lend`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionLink;

impl Transport for SessionLink {
    fn read(&mut self, max: usize, timeout_ms: u32) -> Result<Vec<u8>, LinkFailure> {
        with_lent(|t| t.read(max, timeout_ms))
    }

    fn write(&mut self, data: &[u8]) -> Result<(), LinkFailure> {
        with_lent(|t| t.write(data))
    }
}

/// Logs a panic's message and location through `host.log` (level error)
/// before the component traps. Installed once; `protocol_plugin!` installs
/// it at every entry, a hand-written plugin calls it at the top of each export.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(a panic without a message)".into());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            host::log(host::Level::Error, &format!("panicked{at}: {what}"));
        }));
    });
}
