//! The bounded library: the host's side of the `string`, `table` and `utf8`
//! functions that would loop in C out of the budget hook's sight (their Lua
//! wrappers are in `prelude.lua`). The pattern functions run the metered port
//! in [`super::pattern`]; `charge` and `alloc` charge the work of the others
//! to the running call before it is done.

use std::sync::{Arc, Mutex};

use mlua::{Lua, MultiValue, Table, Value};

use super::budget::{memory_message, script_caller, Budget};
use super::pattern;
use super::sandbox::{describe, root};

/// The host's side of the library functions that would otherwise run in C
/// out of the hook's sight (see `prelude.lua`): the pattern functions, and
/// `charge`/`alloc` for the work of the others.
pub(super) fn bounded_library(
    lua: &Lua,
    shared: &Arc<Budget>,
    memory_bytes: usize,
) -> mlua::Result<Table> {
    let lib = lua.create_table()?;
    let budget = shared.clone();
    lib.raw_set(
        "charge",
        lua.create_function(move |lua, steps: f64| budget.charge(lua, whole_steps(steps)))?,
    )?;
    let budget = shared.clone();
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
        let budget = shared.clone();
        lib.raw_set(
            name,
            lua.create_function(move |lua, args: MultiValue| {
                let args: Vec<Value> = args.into_iter().collect();
                let meter = |steps| budget.charge(lua, steps);
                reply(&budget, lua, pattern::find(lua, &args, is_find, &meter))
            })?,
        )?;
    }
    let budget = shared.clone();
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
    let budget = shared.clone();
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
/// `prelude.lua`'s `unwrap`): `nil, results...` on success, or an error message
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
