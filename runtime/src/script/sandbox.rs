//! One loaded script: a Lua 5.4 state that holds only `string`, `table`,
//! `math`, `utf8`, the safe part of the base library and a read-only `host`
//! table, and that runs every call under an instruction budget, a wall-clock
//! deadline and a memory limit.
//!
//! The budget (instruction hook, deadline, memory limit) is in
//! [`super::budget`]; the library functions replaced so that they charge it
//! are in [`super::stdlib`] (Rust side) and `prelude.lua` (Lua side).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value};

use super::budget::{hook, memory_message, script_caller, Budget, BudgetState, HOOK_STEP};
use super::stdlib;

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

/// The sandbox set-up, run once per state before the script: wraps `pcall`
/// and `xpcall`, removes what a script must not have, protects the string
/// metatable, replaces the library functions that loop in C (see
/// [`super::stdlib`]) and builds the read-only `host` table.
const PRELUDE: &str = include_str!("prelude.lua");

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
        let lib = stdlib::bounded_library(lua, &self.budget, self.limits.memory_bytes)?;
        lua.load(PRELUDE)
            .set_name("=sandbox")
            .set_mode(ChunkMode::Text)
            .call::<()>((raw, is_fatal, mark_fatal, log, lib))?;
        Ok(())
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

pub(super) fn root(e: &mlua::Error) -> &mlua::Error {
    match e {
        mlua::Error::CallbackError { cause, .. } => root(cause),
        mlua::Error::WithContext { cause, .. } => root(cause),
        other => other,
    }
}

/// The message of an mlua error without its Rust-side decoration (and
/// without the traceback: the operator reads the first line).
pub(super) fn describe(e: &mlua::Error) -> String {
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
