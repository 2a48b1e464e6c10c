//! What a plugin's store holds and the caps the host enforces on it, for every
//! interface version: the device link lent for one operation, the operation's
//! deadline, the memory limiter, and the per-operation caps on what a plugin
//! may push through the host (bytes written, log lines, `report` calls).
//!
//! A plugin that breaks one of these rules is trapped at once with the rule it
//! broke ([`HostState::violation`]); the operation fails, the next one gets a
//! fresh store. The version-specific `Host` trait impls (see
//! `bindings::since_v*`) only translate and call into here.

use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::link::{DeviceLink, LinkFailure, WRITE_TIMEOUT};

/// Most log lines one operation may write; more are dropped (a plugin could
/// otherwise flood the log).
pub const MAX_LOG_LINES: u32 = 200;
/// Longest log line kept, and longest text taken from a plugin into an error
/// message (a device's reason, a protocol detail).
pub const MAX_TEXT_CHARS: usize = 500;
/// Largest single write a plugin may hand the link (the WIT says 1 MiB).
pub const MAX_WRITE: usize = 1 << 20;
/// Most bytes one device operation may write to the link in all. A pack is a
/// few KiB; a plugin that writes more is flooding the device.
pub const MAX_OPERATION_WRITE: usize = 8 << 20;

/// Caps a plugin's linear memory and tables, and remembers when it hit the cap
/// so the error can say so.
pub struct Limiter {
    pub memory_cap: usize,
    pub memory_hit: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_hit = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }

    fn tables(&self) -> usize {
        64
    }
}

/// Why the host stopped a plugin in the middle of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The operation's deadline passed while the plugin was still running.
    Deadline,
    /// It broke a rule of the host interface (what, in words).
    Rule(String),
}

/// The table entry behind the plugin's `link` resource: one per call, so a
/// handle kept from an earlier call names nothing.
pub struct LinkHandle {
    pub call: u64,
}

/// Everything a plugin's store holds: the link, the deadline, what the plugin
/// reported, and an empty WASI context.
pub struct HostState {
    pub plugin: String,
    pub link: Option<Box<dyn DeviceLink>>,
    pub deadline: Instant,
    /// The export being called (for messages and for `report`).
    pub call: &'static str,
    /// Counts calls into the plugin; a link handle is valid in its own call only.
    pub call_seq: u64,
    /// The device reported it received the pack.
    pub received: bool,
    /// Set when the host trapped the plugin for breaking a rule.
    pub violation: Option<Violation>,
    pub limiter: Limiter,
    /// The last error the plugin logged (its panic hook's message, say), so
    /// a trap can say more than "unreachable instruction executed".
    pub last_error: Option<String>,
    written: usize,
    log_lines: u32,
    table: ResourceTable,
    wasi: WasiCtx,
}

/// A wall clock stuck at the epoch: the WIT interface grants no wall clock, but
/// Rust's std links one; this keeps the time of day out of the plugin.
struct NoWallClock;

impl wasmtime_wasi::HostWallClock for NoWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A host-side failure the plugin sees as a link error (the WIT `link-error`).
pub type LinkResult<T> = Result<T, LinkFailure>;

impl HostState {
    pub fn new(
        plugin: &str,
        link: Option<Box<dyn DeviceLink>>,
        deadline: Instant,
        memory_cap: usize,
    ) -> Self {
        // No preopened folders, no environment, no arguments, no sockets, stdio
        // closed or discarded.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(NoWallClock)
            .build();
        HostState {
            plugin: plugin.to_string(),
            link,
            deadline,
            call: "instantiate",
            call_seq: 0,
            received: false,
            violation: None,
            limiter: Limiter {
                memory_cap,
                memory_hit: None,
            },
            last_error: None,
            written: 0,
            log_lines: 0,
            table: ResourceTable::new(),
            wasi,
        }
    }

    /// A link resource for the call about to start; valid in that call only.
    pub fn link_resource(&mut self) -> wasmtime::Result<wasmtime::component::Resource<LinkHandle>> {
        Ok(self.table.push(LinkHandle {
            call: self.call_seq,
        })?)
    }

    /// Removes a call's link resource once the call is over.
    pub fn end_link_resource(&mut self, link: wasmtime::component::Resource<LinkHandle>) {
        let _ = self.table.delete(link);
    }

    /// Traps the plugin for breaking `rule`; the error is what the call returns.
    fn trap(&mut self, why: Violation) -> wasmtime::Error {
        let text = match &why {
            Violation::Deadline => "the device operation's deadline passed".to_string(),
            Violation::Rule(r) => r.clone(),
        };
        if self.violation.is_none() {
            self.violation = Some(why);
        }
        wasmtime::Error::msg(text)
    }

    /// Time left before the deadline; a trap once it has passed.
    fn left(&mut self) -> wasmtime::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.trap(Violation::Deadline));
        }
        Ok(left)
    }

    /// The link behind `handle`, if `handle` belongs to the running call.
    fn link_for(
        &mut self,
        handle: &wasmtime::component::Resource<LinkHandle>,
    ) -> wasmtime::Result<LinkResult<&mut Box<dyn DeviceLink>>> {
        let current = self.call_seq;
        let valid = self
            .table
            .get(handle)
            .is_ok_and(|h: &LinkHandle| h.call == current);
        if !valid {
            let call = self.call;
            return Err(self.trap(Violation::Rule(format!(
                "it used a link handle in {call} that was not lent to that call"
            ))));
        }
        Ok(self.link.as_mut().ok_or(LinkFailure::Closed))
    }

    /// `link.read`: at least one byte and at most `max` (capped), waiting at
    /// most `timeout_ms` and never past the deadline.
    pub fn link_read(
        &mut self,
        handle: &wasmtime::component::Resource<LinkHandle>,
        max: u32,
        timeout_ms: u32,
    ) -> wasmtime::Result<LinkResult<Vec<u8>>> {
        let left = self.left()?;
        let timeout = Duration::from_millis(timeout_ms.into()).min(left);
        Ok(match self.link_for(handle)? {
            Ok(link) => link.read(max as usize, timeout),
            Err(e) => Err(e),
        })
    }

    /// `link.write`: all of `data`, within the per-call and per-operation caps.
    pub fn link_write(
        &mut self,
        handle: &wasmtime::component::Resource<LinkHandle>,
        data: &[u8],
    ) -> wasmtime::Result<LinkResult<()>> {
        let left = self.left()?;
        if data.len() > MAX_WRITE {
            return Ok(Err(LinkFailure::Io(format!(
                "a write of {} bytes is over the host's limit of {MAX_WRITE}",
                data.len()
            ))));
        }
        if self.written + data.len() > MAX_OPERATION_WRITE {
            let call = self.call;
            return Err(self.trap(Violation::Rule(format!(
                "it wrote more than {} MiB to the device in {call} (a device operation may write at most that much)",
                MAX_OPERATION_WRITE >> 20
            ))));
        }
        self.written += data.len();
        Ok(match self.link_for(handle)? {
            Ok(link) => link.write_within(data, WRITE_TIMEOUT.min(left)),
            Err(e) => Err(e),
        })
    }

    /// `link.close`.
    pub fn link_close(
        &mut self,
        handle: &wasmtime::component::Resource<LinkHandle>,
    ) -> wasmtime::Result<()> {
        if let Ok(link) = self.link_for(handle)? {
            link.close();
        }
        Ok(())
    }

    /// `log`: one line to the host's log, escaped and truncated; lines over
    /// [`MAX_LOG_LINES`] per operation are dropped.
    pub fn log(&mut self, level: tracing::Level, message: &str) -> wasmtime::Result<()> {
        self.left()?;
        self.log_lines += 1;
        if level == tracing::Level::ERROR {
            // Kept even past the log budget: the last words before a trap.
            self.last_error = Some(plugin_text(message));
        }
        if self.log_lines > MAX_LOG_LINES {
            return Ok(());
        }
        let message = plugin_text(message);
        let plugin = &self.plugin;
        match level {
            tracing::Level::DEBUG | tracing::Level::TRACE => tracing::debug!(plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(plugin, "{message}"),
            tracing::Level::ERROR => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }

    /// `report(received)`: once, from `write-pack` only.
    pub fn report_received(&mut self) -> wasmtime::Result<()> {
        self.left()?;
        let call = self.call;
        if call != "write-pack" {
            return Err(self.trap(Violation::Rule(format!(
                "it reported \"received\" from {call}; only write-pack reports it"
            ))));
        }
        if self.received {
            return Err(self.trap(Violation::Rule(
                "it reported \"received\" more than once in write-pack (a write reports it once)"
                    .into(),
            )));
        }
        self.received = true;
        Ok(())
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Text from a plugin (a device's reason, a log line, a malformed value) as
/// the host may show it: control characters escaped, at most
/// [`MAX_TEXT_CHARS`] characters.
pub fn plugin_text(text: &str) -> String {
    let mut out: String = crate::text::printable(crate::text::cut(text, MAX_TEXT_CHARS)).into();
    if text.chars().count() > MAX_TEXT_CHARS {
        out.push_str(&format!(" … ({} bytes in all)", text.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that takes every byte.
    struct Sink(usize);

    impl DeviceLink for Sink {
        fn read(&mut self, _: usize, _: Duration) -> LinkResult<Vec<u8>> {
            Err(LinkFailure::Timeout)
        }
        fn write_within(&mut self, data: &[u8], _: Duration) -> LinkResult<()> {
            self.0 += data.len();
            Ok(())
        }
        fn close(&mut self) {}
        fn describe(&self) -> String {
            "sink".into()
        }
    }

    fn state() -> HostState {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut s = HostState::new("test", Some(Box::new(Sink(0))), deadline, 1 << 20);
        s.call = "write-pack";
        s.call_seq = 1;
        s
    }

    #[test]
    fn a_plugin_that_floods_a_device_that_reads_everything_is_stopped() {
        let mut s = state();
        let link = s.link_resource().unwrap();
        let chunk = vec![0u8; MAX_WRITE];
        for _ in 0..MAX_OPERATION_WRITE / MAX_WRITE {
            s.link_write(&link, &chunk).unwrap().unwrap();
        }
        let err = s.link_write(&link, &chunk).unwrap_err();
        assert!(err.to_string().contains("wrote more than 8 MiB"), "{err}");
        assert!(matches!(&s.violation, Some(Violation::Rule(r)) if r.contains("write-pack")));
        // One write over 1 MiB is an error the plugin sees, not a trap.
        let mut s = state();
        let link = s.link_resource().unwrap();
        assert!(matches!(
            s.link_write(&link, &vec![0u8; MAX_WRITE + 1]).unwrap(),
            Err(LinkFailure::Io(m)) if m.contains("over the host's limit")
        ));
    }

    #[test]
    fn a_link_handle_from_an_earlier_call_names_nothing() {
        let mut s = state();
        let old = s.link_resource().unwrap();
        s.call_seq += 1;
        let err = s.link_read(&old, 16, 0).unwrap_err();
        assert!(err.to_string().contains("not lent to that call"), "{err}");
    }

    #[test]
    fn received_is_reported_once_and_from_write_pack_only() {
        let mut s = state();
        s.report_received().unwrap();
        let err = s.report_received().unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
        let mut s = state();
        s.call = "read-identity";
        let err = s.report_received().unwrap_err();
        assert!(err.to_string().contains("from read-identity"), "{err}");
    }

    #[test]
    fn host_calls_after_the_deadline_trap() {
        let mut s = state();
        s.deadline = Instant::now();
        let link = s.link_resource().unwrap();
        assert!(s.link_read(&link, 16, 1000).is_err());
        assert!(s.link_write(&link, b"x").is_err());
        assert!(s.log(tracing::Level::INFO, "x").is_err());
        assert_eq!(s.violation, Some(Violation::Deadline));
    }

    #[test]
    fn plugin_text_is_escaped_and_bounded() {
        let long = "\x1b[2J".repeat(10_000);
        let shown = plugin_text(&long);
        assert!(!shown.contains('\x1b'));
        assert!(shown.len() < 4 * MAX_TEXT_CHARS, "{}", shown.len());
        assert!(shown.ends_with("(40000 bytes in all)"), "{shown}");
    }
}
