//! The script sandbox against every bad input of issue 7: each is refused (at
//! load) or fails its call with a message naming the file and the line, and
//! the state stays usable for the next call.

use std::path::Path;
use std::time::Duration;

use certline::script::{HostApi, Limits, Script, ScriptError};
use mlua::{MultiValue, Value};

const FILE: &str = "factory/line.lua";

fn limits() -> Limits {
    Limits {
        instructions: 200_000,
        wall: Duration::from_millis(2000),
        memory_bytes: 4 << 20,
    }
}

fn load(src: &str) -> Result<Script, ScriptError> {
    Script::load(
        Path::new(FILE),
        src.as_bytes(),
        &HostApi {
            role: "test".into(),
            ..Default::default()
        },
        limits(),
    )
}

/// Calls `f()` and returns its first result as text (or the error).
fn call(script: &Script, f: &str) -> Result<String, ScriptError> {
    script.call(
        f,
        |_| Ok(MultiValue::new()),
        |r| {
            Ok(match r.into_iter().next() {
                Some(Value::String(s)) => s.to_string_lossy(),
                Some(v) => format!("{v:?}"),
                None => "nothing".into(),
            })
        },
    )
}

/// A script with a good `ok()` and a bad `bad()`: the bad call fails with a
/// message that names the file (and `line`, when given), and `ok()` still works.
fn bad_call(body: &str, line: Option<u32>, words: &str) -> String {
    let src = format!("function ok() return 'fine' end\nfunction bad()\n{body}\nend\n");
    let script = load(&src).unwrap_or_else(|e| panic!("load failed: {e}"));
    let err = call(&script, "bad").expect_err(&format!("the bad call must fail: {body}"));
    assert!(err.message.contains(FILE), "no file in {:?}", err.message);
    if let Some(line) = line {
        assert_eq!(err.line, Some(line), "wrong line in {:?}", err.message);
    }
    assert!(
        err.message.contains(words),
        "{:?} does not say {words:?}",
        err.message
    );
    // The state keeps serving.
    assert_eq!(call(&script, "ok").unwrap(), "fine");
    err.message
}

fn bad_load(src: &str, line: Option<u32>, words: &str) -> String {
    let err = load(src).expect_err("the file must be refused");
    assert!(err.message.contains(FILE), "no file in {:?}", err.message);
    if let Some(line) = line {
        assert_eq!(err.line, Some(line), "wrong line in {:?}", err.message);
    }
    assert!(
        err.message.contains(words),
        "{:?} does not say {words:?}",
        err.message
    );
    err.message
}

#[test]
fn a_good_script_runs_and_sees_the_host_helpers() {
    let s = load(
        "function f() return string.format('%s %d %s', host.role, host.date(0).year, host.iso(86400)) end",
    )
    .unwrap();
    assert_eq!(call(&s, "f").unwrap(), "test 1970 1970-01-02T00:00:00Z");
}

#[test]
fn syntax_error_names_file_and_line() {
    bad_load(
        "local x = 1\nfunction f(\n  return 1\nend\n",
        Some(3),
        "expected",
    );
}

#[test]
fn runtime_error_names_file_and_line() {
    bad_call(
        "local t = nil\nreturn t.field",
        Some(4),
        "attempt to index a nil value",
    );
}

#[test]
fn runtime_error_at_load_is_refused() {
    bad_load("local a = 1\nerror('boom')\n", Some(2), "boom");
}

#[test]
fn infinite_loop_is_stopped() {
    bad_call("while true do end", Some(3), "instruction budget");
}

#[test]
fn infinite_loop_at_load_is_refused() {
    bad_load(
        "local n = 0\nwhile true do n = n + 1 end\n",
        Some(2),
        "instruction budget",
    );
}

#[test]
fn infinite_loop_inside_pcall_is_stopped() {
    let m = bad_call(
        "while true do pcall(function() while true do end end) end",
        Some(3),
        "instruction budget",
    );
    assert!(!m.contains("fine"));
    // xpcall with a handler that tries to carry on, nested pcalls, and a
    // script that returns normally after swallowing the error.
    bad_call(
        "local ok = xpcall(function() while true do end end, function() return 'swallowed' end)\nreturn 'escaped'",
        None,
        "instruction budget",
    );
    bad_call(
        "for i = 1, 10 do pcall(pcall, pcall, function() while true do end end) end\nreturn 'escaped'",
        None,
        "instruction budget",
    );
}

#[test]
fn memory_bomb_is_stopped() {
    bad_call(
        "local t = {}\nwhile true do t[#t + 1] = string.rep('x', 1024) .. #t end",
        None,
        "memory limit",
    );
    bad_call(
        "return string.rep('x', 64 * 1024 * 1024)",
        None,
        "memory limit",
    );
}

#[test]
fn memory_bomb_inside_pcall_is_stopped() {
    bad_call(
        "local ok = pcall(function()\nlocal t = {}\nwhile true do t[#t + 1] = string.rep('y', 4096) .. #t end\nend)\nreturn 'escaped'",
        None,
        "memory limit",
    );
    bad_call(
        "while true do pcall(string.rep, 'x', 64 * 1024 * 1024) end",
        None,
        "memory limit",
    );
}

#[test]
fn looping_coroutine_is_stopped() {
    // The coroutine library is not part of the sandbox.
    bad_call(
        "local co = coroutine.create(function() while true do end end)\ncoroutine.resume(co)",
        Some(3),
        "coroutine",
    );
}

#[test]
fn wrong_return_type_names_the_function() {
    let s = load("local x = 1\nfunction f()\n  return 42\nend\n").unwrap();
    let err = s
        .call(
            "f",
            |_| Ok(MultiValue::new()),
            |r| match r.into_iter().next() {
                Some(Value::String(s)) => Ok(s.to_string_lossy()),
                Some(v) => Err(format!("returned a {}; expected a string", v.type_name())),
                None => Err("returned nothing; expected a string".into()),
            },
        )
        .unwrap_err();
    assert_eq!(err.line, Some(2), "{}", err.message);
    assert!(
        err.message
            .contains("factory/line.lua:2: function f returned a integer"),
        "{}",
        err.message
    );
}

#[test]
fn no_io() {
    bad_call("return io.open('/etc/passwd')", Some(3), "global 'io'");
}

#[test]
fn no_os_execute() {
    bad_call("return os.execute('id')", Some(3), "global 'os'");
}

#[test]
fn no_require_of_c_modules() {
    bad_call("return require('socket.core')", Some(3), "global 'require'");
    bad_call(
        "return package.loadlib('libc.so.6', 'system')",
        Some(3),
        "global 'package'",
    );
}

#[test]
fn no_loading_code_at_all() {
    bad_call("return load('\\27Lua\\84\\0')", Some(3), "global 'load'");
    bad_call(
        "return loadfile('/etc/passwd')",
        Some(3),
        "global 'loadfile'",
    );
    bad_call("return dofile('/etc/passwd')", Some(3), "global 'dofile'");
}

#[test]
fn binary_chunk_file_is_refused() {
    let mut bytes = b"\x1bLua\x54\x00".to_vec();
    bytes.extend_from_slice(&[0u8; 40]);
    let err = Script::load(Path::new(FILE), &bytes, &HostApi::default(), limits()).unwrap_err();
    assert!(
        err.message.contains(FILE) && err.message.contains("binary"),
        "{}",
        err.message
    );
}

#[test]
fn no_string_dump() {
    bad_call("return string.dump(ok)", Some(3), "dump");
    // Not through the string metatable either.
    bad_call("return ('x').dump(ok)", Some(3), "dump");
}

#[test]
fn no_debug_library() {
    bad_call("return debug.getregistry()", Some(3), "global 'debug'");
}

#[test]
fn no_collectgarbage_or_rawset() {
    bad_call("collectgarbage('stop')", Some(3), "collectgarbage");
    bad_call("rawset(host, 'log', print)", Some(3), "rawset");
}

#[test]
fn host_api_is_read_only() {
    bad_call("setmetatable(host, {})", Some(3), "protected metatable");
    bad_call("host.now = function() return 0 end", Some(3), "read-only");
    bad_call("host.models = nil", Some(3), "read-only");
    bad_call("setmetatable('', {})", Some(3), "table expected");
    bad_call(
        "getmetatable('').__index = {}",
        Some(3),
        "attempt to index a string",
    );
    // The metatables are out of reach: getmetatable gives a string.
    let s =
        load("function f() return type(getmetatable(host)) .. ' ' .. type(getmetatable('')) end")
            .unwrap();
    assert_eq!(call(&s, "f").unwrap(), "string string");
}

#[test]
fn no_gc_finalizers() {
    // A finalizer would run outside any call (even while the state closes).
    bad_call(
        "setmetatable({}, { __gc = function() while true do end end })",
        Some(3),
        "__gc",
    );
    // Adding __gc after setmetatable does not mark the object in Lua 5.4;
    // the state still closes at once.
    let s = load(
        "function arm() local mt = {} setmetatable({}, mt) mt.__gc = function() while true do end end return 'armed' end",
    )
    .unwrap();
    assert_eq!(call(&s, "arm").unwrap(), "armed");
    drop(s);
}

#[test]
fn budget_resets_between_calls() {
    let s = load("function work() local n = 0 for i = 1, 100000 do n = n + i end return tostring(n) end\nfunction spin() while true do end end").unwrap();
    for _ in 0..5 {
        assert!(call(&s, "spin").is_err());
        assert_eq!(call(&s, "work").unwrap(), "5000050000");
    }
}
