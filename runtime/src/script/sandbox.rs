//! One loaded script: a Lua 5.4 state that holds only `string`, `table`,
//! `math`, `utf8`, the safe part of the base library and a read-only `host`
//! table, and that runs every call under an instruction budget, a wall-clock
//! deadline and a memory limit.
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
//!   loop in C are replaced (see PRELUDE): the pattern functions by the
//!   metered port in [`super::pattern`], the table and bulk string functions
//!   by wrappers that charge their work to the call ([`Budget::charge`])
//!   before it is done. An `xpcall` handler (which Lua runs with hooks off
//!   for an error raised by the hook) is skipped once the call is fatal.
//! - The libraries are read-only proxies: a script cannot replace what its
//!   later calls, or the methods of strings, run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::debug::Debug as LuaDebug;
use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};

use super::pattern;

/// The hook runs every this many VM instructions while a call is within budget.
pub const HOOK_STEP: u32 = 1000;

/// The largest script file accepted.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

/// What one script may use.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Limits {
    /// VM instructions per call (and for running the file at load).
    pub instructions: u64,
    /// Wall-clock time per call.
    pub wall: Duration,
    /// Bytes the whole Lua state may hold.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            instructions: 2_000_000,
            wall: Duration::from_millis(250),
            memory_bytes: 16 << 20,
        }
    }
}

/// A script's failure: the message names the file and, where Lua knows it,
/// the line (`path:line: what`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ScriptError {
    pub file: PathBuf,
    /// The line, when the message carries one.
    pub line: Option<u32>,
    pub message: String,
}

impl ScriptError {
    pub fn new(file: &Path, message: impl Into<String>) -> ScriptError {
        let message = message.into();
        let line = line_of(&message);
        ScriptError {
            file: file.to_path_buf(),
            line,
            message,
        }
    }
}

/// The line number in a `file:line: message` text.
fn line_of(message: &str) -> Option<u32> {
    message
        .split(':')
        .skip(1)
        .find_map(|part| part.trim().parse::<u32>().ok())
}

#[derive(Default)]
struct BudgetState {
    /// A host call is running.
    active: bool,
    used: u64,
    limit: u64,
    deadline: Option<Instant>,
    wall: Duration,
    memory_bytes: usize,
    /// The hook fires on every instruction.
    strict: bool,
    /// Why the running call must end.
    fatal: Option<String>,
    /// Where the hook last saw the script (for memory errors, which Lua
    /// reports without a position).
    last_seen: Option<(String, usize)>,
    /// The script's file, when nothing better is known.
    file: String,
}

struct Budget {
    state: Mutex<BudgetState>,
}

impl Budget {
    /// Charges `steps` of work done outside the VM (a pattern match, a sort)
    /// to the running call, and fails the call once it is over its budget or
    /// past its deadline: from then on the call is fatal, as when the hook
    /// finds it so.
    fn charge(self: &Arc<Self>, lua: &Lua, steps: u64) -> mlua::Result<()> {
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
    fn fail(self: &Arc<Self>, lua: &Lua, why: impl FnOnce(&BudgetState) -> String) -> mlua::Error {
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
fn script_caller(lua: &Lua) -> Option<(String, usize)> {
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

fn hook(budget: &Arc<Budget>, lua: &Lua, debug: &LuaDebug) -> mlua::Result<VmState> {
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

/// The sandbox set-up, run once per state before the script: wraps `pcall`
/// and `xpcall`, removes what a script must not have, protects the string
/// metatable and builds the read-only `host` table.
const PRELUDE: &str = r##"
local host_raw, is_fatal, mark_fatal, log, lib = ...
local raw_pcall, raw_xpcall, error, next, type, tostring, setmetatable, raw_setmetatable =
      pcall, xpcall, error, next, type, tostring, setmetatable, setmetatable
local getmetatable, rawlen, select, tointeger, log2 =
      getmetatable, rawlen, select, math.tointeger, function(n) return math.log(n, 2) end

local function pass(ok, ...)
  if not ok then
    local e = ...
    if e == "not enough memory" then
      mark_fatal()
      error(e, 0)
    end
    if is_fatal() then error(e, 0) end
  end
  return ok, ...
end
pcall = function(f, ...) return pass(raw_pcall(f, ...)) end
-- The message handler is part of the call: once the call is over its budget
-- (the error came from the hook, where Lua runs the handler with hooks off)
-- the handler is skipped and the error goes on up.
xpcall = function(f, h, ...)
  if type(h) ~= "function" then return pass(raw_xpcall(f, h, ...)) end
  return pass(raw_xpcall(f, function(e)
    if is_fatal() then return e end
    return h(e)
  end, ...))
end

-- A finalizer would run whenever the collector gets to it, outside any host
-- call (even while the state closes): no __gc for scripts. Lua marks an
-- object for finalization only if its metatable has __gc when set.
local rawget = rawget
_ENV.setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available to scripts", 2)
  end
  local ok, r = raw_pcall(raw_setmetatable, t, mt)
  if not ok then
    if r == "not enough memory" then mark_fatal() end
    error(r, 2)
  end
  return r
end

dofile, loadfile, load, require, collectgarbage, rawset, warn, module =
  nil, nil, nil, nil, nil, nil, nil, nil
string.dump = nil

-- Library functions whose loops run in C, where the hook never fires. The
-- pattern functions are the host's port, which charges its steps to the
-- call; the others are charged for the work they will do before doing it,
-- or (insert and remove on a table with a metatable, whose __len decides
-- how far C would loop) run here in Lua, under the hook.
local S, T, U = string, table, utf8
local charge, alloc = lib.charge, lib.alloc
local function unwrap(err, ...)
  if err ~= nil then error(err, 0) end
  return ...
end
-- Errors of the C functions called from these wrappers are re-raised at
-- the script's line, not the wrapper's.
local function rethrow(ok, ...)
  if ok then return ... end
  local e = ...
  if e == "not enough memory" then
    mark_fatal()
    error(e, 0)
  end
  if is_fatal() then error(e, 0) end
  if type(e) == "string" and e:sub(1, 8) == "sandbox:" then
    local at = e:find(": ", 9, true)
    if at then error(e:sub(at + 2), 2) end
  end
  error(e, 0)
end
local function guarded(f)
  return function(...) return rethrow(raw_pcall(f, ...)) end
end
local p_find, p_match, p_gmatch, p_gsub = lib.find, lib.match, lib.gmatch, lib.gsub
S.find = function(...) return unwrap(p_find(...)) end
S.match = function(...) return unwrap(p_match(...)) end
S.gsub = function(...) return unwrap(p_gsub(...)) end
S.gmatch = function(...)
  local it = unwrap(p_gmatch(...))
  return function() return unwrap(it()) end
end
local function linear(f)
  f = guarded(f)
  return function(s, ...)
    if type(s) == "string" then charge(#s / 64) end
    return f(s, ...)
  end
end
S.upper, S.lower, S.reverse, U.len = linear(S.upper), linear(S.lower), linear(S.reverse), linear(U.len)
local raw_rep = S.rep
S.rep = function(s, n, sep)
  alloc(s, n, sep)
  return raw_rep(s, n, sep)
end
local function count(first, last)
  first, last = tointeger(first), tointeger(last)
  if not first or not last or last < first then return 0 end
  return (last + 0.0) - first + 1
end
local raw_sort, raw_concat, raw_insert, raw_remove, raw_move, raw_unpack =
      guarded(T.sort), guarded(T.concat), guarded(T.insert), guarded(T.remove),
      guarded(T.move), guarded(T.unpack)
T.sort = function(t, ...)
  if type(t) == "table" then
    local n = getmetatable(t) == nil and rawlen(t) or #t
    if n > 1 then charge(n * log2(n)) end
  end
  return raw_sort(t, ...)
end
T.concat = function(t, sep, i, j)
  if type(t) == "table" then
    i = i == nil and 1 or i
    j = j == nil and #t or j
    charge(count(i, j))
  end
  return raw_concat(t, sep, i, j)
end
T.unpack = function(t, i, j)
  if type(t) == "table" then
    i = i == nil and 1 or i
    j = j == nil and #t or j
    charge(count(i, j))
  end
  return raw_unpack(t, i, j)
end
T.move = function(a1, f, e, t, a2)
  charge(count(f, e))
  return raw_move(a1, f, e, t, a2)
end
T.insert = function(t, ...)
  if type(t) ~= "table" or getmetatable(t) == nil or select("#", ...) ~= 2 then
    if type(t) == "table" and select("#", ...) == 2 then charge(rawlen(t)) end
    return raw_insert(t, ...)
  end
  local e = #t + 1
  local pos, v = ...
  pos = tointeger(pos)
  if not pos or pos < 1 or pos > e then
    error("bad argument #2 to 'insert' (position out of bounds)", 2)
  end
  for i = e, pos + 1, -1 do t[i] = t[i - 1] end
  t[pos] = v
end
T.remove = function(t, ...)
  if type(t) ~= "table" or getmetatable(t) == nil then
    if type(t) == "table" then charge(rawlen(t)) end
    return raw_remove(t, ...)
  end
  local size = #t
  local pos = size
  if select("#", ...) > 0 then pos = tointeger((...)) end
  if not pos or (pos ~= size and (pos < 1 or pos > size + 1)) then
    error("bad argument #2 to 'remove' (position out of bounds)", 2)
  end
  local v = t[pos]
  while pos < size do
    t[pos] = t[pos + 1]
    pos = pos + 1
  end
  t[pos] = nil
  return v
end

local concat = T.concat
print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[#parts + 1] = tostring((select(i, ...))) end
  log("info", concat(parts, "\t"))
end
getmetatable("").__metatable = "the string metatable is read-only"

local function freeze(t, what)
  for k, v in next, t do
    if type(v) == "table" then t[k] = freeze(v, what) end
  end
  local proxy = {}
  setmetatable(proxy, {
    __index = t,
    __newindex = function(_, k)
      error(what .. " is read-only (cannot set " .. tostring(k) .. ")", 2)
    end,
    __pairs = function()
      local k
      return function()
        local v
        k, v = next(t, k)
        return k, v
      end
    end,
    __len = function() return #t end,
    __metatable = what .. " is read-only",
  })
  return proxy
end
host = freeze(host_raw, "the host API")
-- The libraries are the host's, the same for every call of this script: a
-- script cannot replace string.upper (or what ("x"):upper() calls).
string = freeze(S, "the string library")
table = freeze(T, "the table library")
math = freeze(math, "the math library")
utf8 = freeze(U, "the utf8 library")
"##;

/// What the host hands a script besides the built-in helpers: the role's
/// name and data (turned into read-only Lua tables).
#[derive(Debug, Clone, Default)]
pub struct HostApi {
    /// "line", "retention", ...: shown in logs.
    pub role: String,
    /// Extra fields of `host` (objects become tables, arrays sequences).
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// One loaded script.
pub struct Script {
    lua: Lua,
    budget: Arc<Budget>,
    path: PathBuf,
    limits: Limits,
    sha256: String,
    /// One call at a time (the budget is per call).
    calls: Mutex<()>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish()
    }
}

pub fn json_to_lua(lua: &Lua, value: &serde_json::Value) -> mlua::Result<Value> {
    use serde_json::Value as J;
    Ok(match value {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::String(lua.create_string(s)?),
        J::Array(items) => {
            let t = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, json_to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        J::Object(map) => {
            let t = lua.create_table()?;
            for (k, v) in map {
                t.raw_set(k.as_str(), json_to_lua(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

fn date_table(lua: &Lua, t: i64) -> mlua::Result<Table> {
    let at = time::OffsetDateTime::from_unix_timestamp(t)
        .map_err(|e| mlua::Error::runtime(format!("host.date: {t} is not a time ({e})")))?;
    let table = lua.create_table()?;
    table.raw_set("year", at.year())?;
    table.raw_set("month", u8::from(at.month()))?;
    table.raw_set("day", at.day())?;
    table.raw_set("hour", at.hour())?;
    table.raw_set("min", at.minute())?;
    table.raw_set("sec", at.second())?;
    // ISO weekday: 1 = Monday.
    table.raw_set("wday", at.weekday().number_from_monday())?;
    table.raw_set("yday", at.ordinal())?;
    Ok(table)
}

fn iso(t: i64) -> mlua::Result<String> {
    let at = time::OffsetDateTime::from_unix_timestamp(t)
        .map_err(|e| mlua::Error::runtime(format!("host.iso: {t} is not a time ({e})")))?;
    at.format(&time::format_description::well_known::Rfc3339)
        .map_err(mlua::Error::runtime)
}

impl Script {
    /// Loads `source` (the content of `path`) into a fresh sandbox and runs
    /// its top level under the budget. Refuses binary chunks.
    pub fn load(
        path: &Path,
        source: &[u8],
        host: &HostApi,
        limits: Limits,
    ) -> Result<Script, ScriptError> {
        let shown = path.display().to_string();
        if source.len() > MAX_SOURCE_BYTES {
            return Err(ScriptError::new(
                path,
                format!(
                    "{shown}: {} bytes is more than the {MAX_SOURCE_BYTES} a script may have",
                    source.len()
                ),
            ));
        }
        if source.starts_with(b"\x1bLua") {
            return Err(ScriptError::new(
                path,
                format!(
                    "{shown}:1: a precompiled (binary) Lua chunk; only Lua source text is accepted"
                ),
            ));
        }
        let fail = |e: mlua::Error| {
            ScriptError::new(
                path,
                format!("{shown}: cannot set up the script sandbox: {e}"),
            )
        };
        let lua = Lua::new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8,
            LuaOptions::default(),
        )
        .map_err(fail)?;
        let budget = Arc::new(Budget {
            state: Mutex::new(BudgetState {
                wall: limits.wall,
                memory_bytes: limits.memory_bytes,
                limit: limits.instructions,
                file: shown.clone(),
                ..Default::default()
            }),
        });
        let script = Script {
            lua,
            budget,
            path: path.to_path_buf(),
            limits,
            sha256: crate::pki::fingerprint(source),
            calls: Mutex::new(()),
        };
        script.prepare(host).map_err(fail)?;
        script.install_hook().map_err(fail)?;
        script
            .lua
            .set_memory_limit(limits.memory_bytes)
            .map_err(fail)?;

        let chunk = script
            .lua
            .load(source)
            .set_name(format!("@{shown}"))
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| script.error(e, "loading"))?;
        script.run("running the file", |_| chunk.call::<()>(()))?;
        Ok(script)
    }

    fn prepare(&self, host: &HostApi) -> mlua::Result<()> {
        let lua = &self.lua;
        let raw = lua.create_table()?;
        for (k, v) in &host.data {
            raw.raw_set(k.as_str(), json_to_lua(lua, v)?)?;
        }
        let file = self.path.display().to_string();
        let role = host.role.clone();
        raw.raw_set("script", file.clone())?;
        raw.raw_set("role", role.clone())?;
        raw.raw_set("DAY", 86_400)?;
        raw.raw_set("HOUR", 3_600)?;
        raw.raw_set(
            "now",
            lua.create_function(|_, ()| Ok(time::OffsetDateTime::now_utc().unix_timestamp()))?,
        )?;
        raw.raw_set(
            "date",
            lua.create_function(|lua, t: Option<i64>| {
                date_table(
                    lua,
                    t.unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp()),
                )
            })?,
        )?;
        raw.raw_set(
            "iso",
            lua.create_function(|_, t: Option<i64>| {
                iso(t.unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp()))
            })?,
        )?;
        let log_file = file.clone();
        let log_role = role.clone();
        let log = lua.create_function(move |_, (level, message): (String, String)| {
            match level.as_str() {
                "warn" => tracing::warn!(script = %log_file, role = %log_role, "{message}"),
                "error" => tracing::error!(script = %log_file, role = %log_role, "{message}"),
                _ => tracing::info!(script = %log_file, role = %log_role, "{message}"),
            }
            Ok(())
        })?;
        raw.raw_set("log", {
            let log = log.clone();
            lua.create_function(move |_, message: String| log.call::<()>(("info", message)))?
        })?;
        raw.raw_set("warn", {
            let log = log.clone();
            lua.create_function(move |_, message: String| log.call::<()>(("warn", message)))?
        })?;

        let budget = self.budget.clone();
        let is_fatal =
            lua.create_function(move |_, ()| Ok(budget.state.lock().unwrap().fatal.is_some()))?;
        let budget = self.budget.clone();
        let mark_fatal = lua.create_function(move |lua, ()| {
            // Where the script called pcall: the first frame up the stack
            // that is the script's own.
            let caller = script_caller(lua);
            let mut s = budget.state.lock().unwrap();
            if s.fatal.is_none() {
                let at = match caller.as_ref().or(s.last_seen.as_ref()) {
                    Some((src, line)) => format!("{src}:{line}"),
                    None => s.file.clone(),
                };
                s.fatal = Some(memory_message(&at, s.memory_bytes));
            }
            Ok(())
        })?;
        let lib = self.bounded_library()?;
        lua.load(PRELUDE)
            .set_name("=sandbox")
            .set_mode(ChunkMode::Text)
            .call::<()>((raw, is_fatal, mark_fatal, log, lib))?;
        Ok(())
    }

    /// The host's side of the library functions that would otherwise run in C
    /// out of the hook's sight (see PRELUDE): the pattern functions, and
    /// `charge`/`alloc` for the work of the others.
    fn bounded_library(&self) -> mlua::Result<Table> {
        let lua = &self.lua;
        let lib = lua.create_table()?;
        let budget = self.budget.clone();
        lib.raw_set(
            "charge",
            lua.create_function(move |lua, steps: f64| budget.charge(lua, whole_steps(steps)))?,
        )?;
        let budget = self.budget.clone();
        let memory_bytes = self.limits.memory_bytes;
        lib.raw_set(
            "alloc",
            lua.create_function(move |lua, (s, n, sep): (Value, Value, Value)| {
                // The size string.rep(s, n, sep) will have (its own checks
                // refuse bad arguments).
                let len = |v: &Value| match v {
                    Value::String(s) => s.as_bytes().len() as f64,
                    Value::Integer(_) | Value::Number(_) => 24.0,
                    _ => 0.0,
                };
                let times = match n {
                    Value::Integer(n) => n as f64,
                    Value::Number(n) => n,
                    _ => 0.0,
                };
                let bytes = (len(&s) + len(&sep)) * times.max(0.0);
                if bytes > memory_bytes as f64 {
                    let at = script_caller(lua);
                    return Err(budget.fail(lua, |s| {
                        let at = match at.or_else(|| s.last_seen.clone()) {
                            Some((src, line)) => format!("{src}:{line}"),
                            None => s.file.clone(),
                        };
                        memory_message(&at, s.memory_bytes)
                    }));
                }
                budget.charge(lua, whole_steps(bytes / 1024.0))
            })?,
        )?;
        for (name, is_find) in [("find", true), ("match", false)] {
            let budget = self.budget.clone();
            lib.raw_set(
                name,
                lua.create_function(move |lua, args: MultiValue| {
                    let args: Vec<Value> = args.into_iter().collect();
                    let meter = |steps| budget.charge(lua, steps);
                    reply(&budget, lua, pattern::find(lua, &args, is_find, &meter))
                })?,
            )?;
        }
        let budget = self.budget.clone();
        lib.raw_set(
            "gsub",
            lua.create_function(move |lua, args: MultiValue| {
                let args: Vec<Value> = args.into_iter().collect();
                let meter = |steps| budget.charge(lua, steps);
                reply(
                    &budget,
                    lua,
                    pattern::gsub(lua, &args, &meter, memory_bytes),
                )
            })?,
        )?;
        let budget = self.budget.clone();
        lib.raw_set(
            "gmatch",
            lua.create_function(move |lua, args: MultiValue| {
                let args: Vec<Value> = args.into_iter().collect();
                let state = match pattern::GMatch::new(lua, &args) {
                    Ok(state) => state,
                    Err(e) => return reply(&budget, lua, Err(e)),
                };
                let state = Mutex::new(state);
                let budget_for_next = budget.clone();
                let next = lua.create_function(move |lua, ()| {
                    let meter = |steps| budget_for_next.charge(lua, steps);
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    reply(&budget_for_next, lua, state.next(lua, &meter))
                })?;
                reply(
                    &budget,
                    lua,
                    Ok(MultiValue::from_vec(vec![Value::Function(next)])),
                )
            })?,
        )?;
        Ok(lib)
    }

    fn install_hook(&self) -> mlua::Result<()> {
        let budget = self.budget.clone();
        self.lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_STEP),
            move |lua, debug| hook(&budget, lua, debug),
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes the state holds now.
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    /// The global function `name`, if the script defines one.
    pub fn function(&self, name: &str) -> Option<Function> {
        match self.lua.globals().raw_get::<Value>(name) {
            Ok(Value::Function(f)) => Some(f),
            _ => None,
        }
    }

    /// Refuses a script that does not define the function its role calls;
    /// `signature` is how the error names it, e.g. `parse(raw)`.
    pub fn require_function(
        &self,
        path: &Path,
        role: &str,
        signature: &str,
    ) -> Result<(), ScriptError> {
        let name = signature.split('(').next().unwrap_or(signature);
        if self.function(name).is_some() {
            return Ok(());
        }
        Err(ScriptError::new(
            path,
            format!(
                "{}: a {role} script must define function {signature}",
                path.display()
            ),
        ))
    }

    /// A global value of the script (raw, no metamethods run).
    pub fn global(&self, name: &str) -> Value {
        self.lua
            .globals()
            .raw_get::<Value>(name)
            .unwrap_or(Value::Nil)
    }

    /// "file:line" where the global function `name` is defined.
    pub fn where_defined(&self, name: &str) -> String {
        let shown = self.path.display();
        match self.function(name).and_then(|f| f.info().line_defined) {
            Some(line) => format!("{shown}:{line}"),
            None => shown.to_string(),
        }
    }

    /// Calls the script's global function `name` under the budget: `args`
    /// builds the arguments and `read` turns the results into what the host
    /// wants (a message on a wrong type, which is reported with the place the
    /// function is defined).
    pub fn call<R>(
        &self,
        name: &str,
        args: impl FnOnce(&Lua) -> mlua::Result<MultiValue>,
        read: impl FnOnce(MultiValue) -> Result<R, String>,
    ) -> Result<R, ScriptError> {
        let Some(f) = self.function(name) else {
            return Err(ScriptError::new(
                &self.path,
                format!(
                    "{}: the script defines no function {name}",
                    self.path.display()
                ),
            ));
        };
        let results = self.run(name, |lua| {
            let args = args(lua)?;
            f.call::<MultiValue>(args)
        })?;
        read(results).map_err(|why| {
            ScriptError::new(
                &self.path,
                format!("{}: function {name} {why}", self.where_defined(name)),
            )
        })
    }

    /// Runs `body` with the budget armed.
    fn run<T>(
        &self,
        what: &str,
        body: impl FnOnce(&Lua) -> mlua::Result<T>,
    ) -> Result<T, ScriptError> {
        let _one = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let was_strict = {
            let mut s = self.budget.state.lock().unwrap();
            let was_strict = s.strict;
            s.active = true;
            s.used = 0;
            s.fatal = None;
            s.strict = false;
            s.last_seen = None;
            s.deadline = Some(Instant::now() + self.limits.wall);
            was_strict
        };
        if was_strict {
            if let Err(e) = self.install_hook() {
                self.disarm();
                return Err(self.error(e, what));
            }
        }
        let result = body(&self.lua);
        let fatal = self.disarm();
        match (result, fatal) {
            (_, Some(message)) => Err(ScriptError::new(&self.path, message)),
            (Ok(v), None) => Ok(v),
            (Err(e), None) => Err(self.error(e, what)),
        }
    }

    fn disarm(&self) -> Option<String> {
        let mut s = self.budget.state.lock().unwrap();
        s.active = false;
        s.deadline = None;
        s.fatal.take()
    }

    /// Turns an mlua error into a message with the file and, where known, the line.
    fn error(&self, e: mlua::Error, what: &str) -> ScriptError {
        let shown = self.path.display().to_string();
        let message = describe(&e);
        let message = if message.starts_with(&shown) || message.contains(".lua:") {
            message
        } else if matches!(root(&e), mlua::Error::MemoryError(_)) {
            let at = self
                .budget
                .state
                .lock()
                .unwrap()
                .last_seen
                .as_ref()
                .map(|(src, line)| format!("{src}:{line}"))
                .unwrap_or_else(|| shown.clone());
            memory_message(&at, self.limits.memory_bytes)
        } else {
            format!("{shown}: {what}: {message}")
        };
        ScriptError::new(&self.path, message)
    }
}

/// A step count from Lua (a float: `n * log(n)`, a size over 64) as a whole number.
fn whole_steps(steps: f64) -> u64 {
    if steps.is_nan() || steps <= 0.0 {
        0
    } else if steps >= u64::MAX as f64 {
        u64::MAX
    } else {
        steps as u64
    }
}

/// What a bounded library function hands back to its Lua wrapper (see
/// PRELUDE's `unwrap`): `nil, results...` on success, or an error message
/// (with the script's file and line) to raise. A call that is over its budget
/// (or out of memory) fails as such.
fn reply(
    budget: &Arc<Budget>,
    lua: &Lua,
    result: Result<MultiValue, pattern::Failure>,
) -> mlua::Result<MultiValue> {
    let message = match result {
        Ok(mut values) => {
            values.push_front(Value::Nil);
            return Ok(values);
        }
        Err(pattern::Failure::Script(message)) => match script_caller(lua) {
            Some((src, line)) => format!("{src}:{line}: {message}"),
            None => message,
        },
        Err(pattern::Failure::Lua(e)) => {
            if budget.state.lock().unwrap().fatal.is_some() {
                return Err(e);
            }
            if matches!(root(&e), mlua::Error::MemoryError(_)) {
                let at = script_caller(lua);
                return Err(budget.fail(lua, |s| {
                    let at = match at.or_else(|| s.last_seen.clone()) {
                        Some((src, line)) => format!("{src}:{line}"),
                        None => s.file.clone(),
                    };
                    memory_message(&at, s.memory_bytes)
                }));
            }
            describe(&e)
        }
    };
    Ok(MultiValue::from_vec(vec![Value::String(
        lua.create_string(message)?,
    )]))
}

fn memory_message(at: &str, limit: usize) -> String {
    format!(
        "{at}: over the memory limit of {} KiB for this script (near this line)",
        limit / 1024
    )
}

fn root(e: &mlua::Error) -> &mlua::Error {
    match e {
        mlua::Error::CallbackError { cause, .. } => root(cause),
        mlua::Error::WithContext { cause, .. } => root(cause),
        other => other,
    }
}

/// The message of an mlua error without its Rust-side decoration (and
/// without the traceback: the operator reads the first line).
fn describe(e: &mlua::Error) -> String {
    let text = describe_all(e);
    match text.split_once("\nstack traceback:") {
        Some((head, _)) => head.to_string(),
        None => text,
    }
}

fn describe_all(e: &mlua::Error) -> String {
    match root(e) {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::FromLuaConversionError { from, to, message } => match message {
            Some(m) => format!("a {from} where a {to} was expected ({m})"),
            None => format!("a {from} where a {to} was expected"),
        },
        other => other.to_string(),
    }
}

/// Lua's name for the type of a value.
pub fn type_name(v: &Value) -> &'static str {
    v.type_name()
}
