//! The budget of one script call: an instruction count kept by a global
//! hook, a wall-clock deadline and the memory limit, and what happens once a
//! call is over one of them.
//!
//! How the budget holds against a script that tries to keep running:
//! - A global count hook fires every [`HOOK_STEP`] instructions and adds up
//!   the instructions of the call. Global, so that every Lua thread the state
//!   creates inherits it.
//! - Once a call is over its instruction budget or past its deadline (or hit
//!   the memory limit) the call is *fatal*: the hook is switched to fire on
//!   every instruction and raises the budget error each time. `pcall` catches
//!   one raise, but the very next instruction raises again, so the error
//!   climbs out of every `pcall` until it leaves the script.
//! - The script's `pcall` and `xpcall` are host wrappers that re-raise a fatal
//!   error and a memory error instead of returning it, and whatever a fatal
//!   call returns is discarded: the call fails with the budget error.
//! - Script code that runs outside a host call (a `__gc` finalizer) is stopped
//!   at once.
//! - The hook never fires inside a C function, so the library functions that
//!   loop in C are replaced (see `prelude.lua`): the pattern functions by the
//!   metered port in [`super::pattern`], the table and bulk string functions
//!   by wrappers that charge their work to the call ([`Budget::charge`])
//!   before it is done (the host's side of both is [`super::stdlib`]). An
//!   `xpcall` handler (which Lua runs with hooks off for an error raised by
//!   the hook) is skipped once the call is fatal.
//! - The libraries are read-only proxies: a script cannot replace what its
//!   later calls, or the methods of strings, run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::debug::Debug as LuaDebug;
use mlua::{HookTriggers, Lua, VmState};

/// The hook runs every this many VM instructions while a call is within budget.
pub const HOOK_STEP: u32 = 1000;

#[derive(Default)]
pub(super) struct BudgetState {
    /// A host call is running.
    pub(super) active: bool,
    pub(super) used: u64,
    pub(super) limit: u64,
    pub(super) deadline: Option<Instant>,
    pub(super) wall: Duration,
    pub(super) memory_bytes: usize,
    /// The hook fires on every instruction.
    pub(super) strict: bool,
    /// Why the running call must end.
    pub(super) fatal: Option<String>,
    /// Where the hook last saw the script (for memory errors, which Lua
    /// reports without a position).
    pub(super) last_seen: Option<(String, usize)>,
    /// The script's file, when nothing better is known.
    pub(super) file: String,
}

pub(super) struct Budget {
    pub(super) state: Mutex<BudgetState>,
}

impl Budget {
    /// Charges `steps` of work done outside the VM (a pattern match, a sort)
    /// to the running call, and fails the call once it is over its budget or
    /// past its deadline: from then on the call is fatal, as when the hook
    /// finds it so.
    pub(super) fn charge(self: &Arc<Self>, lua: &Lua, steps: u64) -> mlua::Result<()> {
        let mut s = self.state.lock().unwrap();
        if let Some(message) = &s.fatal {
            return Err(mlua::Error::runtime(message.clone()));
        }
        s.used = s.used.saturating_add(steps);
        let over = if s.used > s.limit {
            Some(format!(
                "over the instruction budget of {} instructions per call (a pattern or a library call doing too much work?)",
                s.limit
            ))
        } else if s.deadline.is_some_and(|d| Instant::now() > d) {
            Some(format!(
                "over the time budget of {} ms per call",
                s.wall.as_millis()
            ))
        } else {
            None
        };
        let Some(why) = over else {
            return Ok(());
        };
        drop(s);
        let at = script_caller(lua);
        Err(self.fail(lua, |s| {
            let at = at.or_else(|| s.last_seen.clone());
            match at {
                Some((src, line)) => format!("{src}:{line}: {why}"),
                None => format!("{}: {why}", s.file),
            }
        }))
    }

    /// Makes the running call fatal (with the message `why` builds, unless it
    /// already is) and switches the hook to every instruction.
    pub(super) fn fail(
        self: &Arc<Self>,
        lua: &Lua,
        why: impl FnOnce(&BudgetState) -> String,
    ) -> mlua::Error {
        let mut s = self.state.lock().unwrap();
        if s.fatal.is_none() {
            s.fatal = Some(why(&s));
        }
        let message = s.fatal.clone().unwrap_or_default();
        if !s.strict {
            s.strict = true;
            drop(s);
            let again = self.clone();
            let _ = lua.set_global_hook(
                HookTriggers::new().every_nth_instruction(1),
                move |lua, debug| hook(&again, lua, debug),
            );
        }
        mlua::Error::runtime(message)
    }
}

/// Where the script called into the host: the first frame up the stack that
/// is the script's own (not the sandbox's wrappers, not a C function).
pub(super) fn script_caller(lua: &Lua) -> Option<(String, usize)> {
    (1..32).find_map(|level| {
        lua.inspect_stack(level, location)
            .flatten()
            .filter(|(src, _)| src != "sandbox")
    })
}

fn location(debug: &LuaDebug) -> Option<(String, usize)> {
    let line = debug.current_line()?;
    let src = debug.source().short_src.map(|s| s.to_string())?;
    Some((src, line))
}

pub(super) fn hook(budget: &Arc<Budget>, lua: &Lua, debug: &LuaDebug) -> mlua::Result<VmState> {
    let mut here = location(debug);
    // In the sandbox's own wrappers (a table function run in Lua), the place
    // to name is the script's line that called them.
    if here.as_ref().is_some_and(|(src, _)| src == "sandbox") {
        here = script_caller(lua).or(here);
    }
    let mut s = budget.state.lock().unwrap();
    if here.is_some() {
        s.last_seen.clone_from(&here);
    }
    if !s.strict {
        s.used += u64::from(HOOK_STEP);
    }
    if s.fatal.is_none() {
        let at = match &here {
            Some((src, line)) => format!("{src}:{line}"),
            None => s.file.clone(),
        };
        if !s.active {
            s.fatal = Some(format!(
                "{at}: script code ran outside a host call (a __gc finalizer?) and was stopped"
            ));
        } else if s.used > s.limit {
            s.fatal = Some(format!(
                "{at}: over the instruction budget of {} instructions per call (an endless loop?)",
                s.limit
            ));
        } else if s.deadline.is_some_and(|d| Instant::now() > d) {
            s.fatal = Some(format!(
                "{at}: over the time budget of {} ms per call",
                s.wall.as_millis()
            ));
        }
    }
    let Some(message) = s.fatal.clone() else {
        return Ok(VmState::Continue);
    };
    if !s.strict {
        s.strict = true;
        drop(s);
        let again = budget.clone();
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(1),
            move |lua, debug| hook(&again, lua, debug),
        )?;
    }
    Err(mlua::Error::runtime(message))
}

pub(super) fn memory_message(at: &str, limit: usize) -> String {
    format!(
        "{at}: over the memory limit of {} KiB for this script (near this line)",
        limit / 1024
    )
}
