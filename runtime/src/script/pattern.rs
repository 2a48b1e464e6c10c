//! Lua 5.4's pattern matching (`string.find`, `match`, `gmatch`, `gsub`), ported
//! from `lstrlib.c` so that it runs under the script's budget.
//!
//! Lua's own matcher is C: the instruction hook never fires inside it, and a
//! backtracking pattern (`(.-);(.-);(.-)…` against a scan of 400 `;`) runs for
//! minutes. This port behaves as Lua's (same syntax, same results, same
//! errors) and calls [`Meter::tick`] every [`TICK`] matching steps, which
//! charges the steps to the call's instruction budget and checks its deadline.
//!
//! It stays one file over 600 lines because it is one job: a line-by-line
//! port of one C file, whose matcher, captures and the four functions built
//! on them share state and are read side by side with `lstrlib.c`.

use mlua::{Function, Lua, MultiValue, Table, Value};

/// Steps between two budget checks.
pub const TICK: u64 = 1024;

const ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";
const MAX_CAPTURES: usize = 32;
/// Nesting of `match` calls (Lua's MAXCCALLS for patterns).
const MAX_DEPTH: u32 = 200;
const CAP_UNFINISHED: isize = -1;
const CAP_POSITION: isize = -2;

/// What a pattern function does when its budget runs out: `tick(steps)`
/// charges the steps and fails the call once it is over budget.
pub type Meter<'a> = &'a dyn Fn(u64) -> mlua::Result<()>;

/// A failure inside a pattern function.
pub enum Failure {
    /// A mistake of the script (a malformed pattern, a bad argument): raised
    /// in the script as a string error at the caller's line.
    Script(String),
    /// An error from Lua code the function called (a `gsub` replacement
    /// function), or the budget: raised as it is.
    Lua(mlua::Error),
}

impl From<mlua::Error> for Failure {
    fn from(e: mlua::Error) -> Self {
        Failure::Lua(e)
    }
}

type Res<T> = Result<T, Failure>;

fn script<T>(message: impl Into<String>) -> Res<T> {
    Err(Failure::Script(message.into()))
}

struct MatchState<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    depth: u32,
    level: usize,
    capture: [(usize, isize); MAX_CAPTURES],
    steps: u64,
    meter: Meter<'a>,
}

impl<'a> MatchState<'a> {
    fn new(src: &'a [u8], pat: &'a [u8], meter: Meter<'a>) -> Self {
        MatchState {
            src,
            pat,
            depth: MAX_DEPTH,
            level: 0,
            capture: [(0, 0); MAX_CAPTURES],
            steps: 0,
            meter,
        }
    }

    fn reprep(&mut self) {
        self.level = 0;
        self.depth = MAX_DEPTH;
    }

    fn step(&mut self) -> Res<()> {
        self.steps += 1;
        if self.steps >= TICK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Res<()> {
        let steps = std::mem::take(&mut self.steps);
        if steps > 0 {
            (self.meter)(steps)?;
        }
        Ok(())
    }

    /// The pattern byte at `i` (0 past the end, as C's terminating NUL).
    fn p(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    /// The subject byte at `i` (0 past the end).
    fn s(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    fn check_capture(&self, l: u8) -> Res<usize> {
        let l = i32::from(l) - i32::from(b'1');
        if l < 0 || l as usize >= self.level || self.capture[l as usize].1 == CAP_UNFINISHED {
            return script(format!("invalid capture index %{}", l + 1));
        }
        Ok(l as usize)
    }

    fn capture_to_close(&self) -> Res<usize> {
        (0..self.level)
            .rev()
            .find(|&l| self.capture[l].1 == CAP_UNFINISHED)
            .map_or_else(|| script("invalid pattern capture"), Ok)
    }

    fn class_end(&self, mut p: usize) -> Res<usize> {
        let c = self.p(p);
        p += 1;
        match c {
            ESC => {
                if p >= self.pat.len() {
                    return script("malformed pattern (ends with '%')");
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.p(p) == b'^' {
                    p += 1;
                }
                loop {
                    if p >= self.pat.len() {
                        return script("malformed pattern (missing ']')");
                    }
                    let c = self.p(p);
                    p += 1;
                    if c == ESC && p < self.pat.len() {
                        p += 1;
                    }
                    if self.p(p) == b']' {
                        break;
                    }
                }
                Ok(p + 1)
            }
            _ => Ok(p),
        }
    }

    fn match_bracket_class(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.p(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                break;
            }
            if self.p(p) == ESC {
                p += 1;
                if match_class(c, self.p(p)) {
                    return sig;
                }
            } else if self.p(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.p(p - 2) <= c && c <= self.p(p) {
                    return sig;
                }
            } else if self.p(p) == c {
                return sig;
            }
        }
        !sig
    }

    fn single_match(&self, s: usize, p: usize, ep: usize) -> bool {
        if s >= self.src.len() {
            return false;
        }
        let c = self.src[s];
        match self.p(p) {
            b'.' => true,
            ESC => match_class(c, self.p(p + 1)),
            b'[' => self.match_bracket_class(c, p, ep - 1),
            pc => pc == c,
        }
    }

    fn match_balance(&mut self, s: usize, p: usize) -> Res<Option<usize>> {
        if p + 1 >= self.pat.len() {
            return script("malformed pattern (missing arguments to '%b')");
        }
        if s >= self.src.len() || self.src[s] != self.p(p) {
            return Ok(None);
        }
        let (b, e) = (self.p(p), self.p(p + 1));
        let mut cont = 1;
        let mut s = s + 1;
        while s < self.src.len() {
            self.step()?;
            let c = self.src[s];
            if c == e {
                cont -= 1;
                if cont == 0 {
                    return Ok(Some(s + 1));
                }
            } else if c == b {
                cont += 1;
            }
            s += 1;
        }
        Ok(None)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Res<Option<usize>> {
        let mut i = 0;
        while self.single_match(s + i, p, ep) {
            self.step()?;
            i += 1;
        }
        loop {
            if let Some(res) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(res));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Res<Option<usize>> {
        loop {
            if let Some(res) = self.do_match(s, ep + 1)? {
                return Ok(Some(res));
            }
            if self.single_match(s, p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: isize) -> Res<Option<usize>> {
        if self.level >= MAX_CAPTURES {
            return script("too many captures");
        }
        self.capture[self.level] = (s, what);
        self.level += 1;
        let res = self.do_match(s, p)?;
        if res.is_none() {
            self.level -= 1;
        }
        Ok(res)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Res<Option<usize>> {
        let l = self.capture_to_close()?;
        self.capture[l].1 = (s - self.capture[l].0) as isize;
        let res = self.do_match(s, p)?;
        if res.is_none() {
            self.capture[l].1 = CAP_UNFINISHED;
        }
        Ok(res)
    }

    fn match_capture(&self, s: usize, l: u8) -> Res<Option<usize>> {
        let l = self.check_capture(l)?;
        let (init, len) = self.capture[l];
        let len = len as usize;
        if self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    /// Lua's `match`: where a match of `pat[p..]` at `src[s..]` ends.
    fn do_match(&mut self, s: usize, p: usize) -> Res<Option<usize>> {
        if self.depth == 0 {
            return script("pattern too complex");
        }
        self.depth -= 1;
        let result = self.match_body(s, p);
        self.depth += 1;
        result
    }

    fn match_body(&mut self, mut s: usize, mut p: usize) -> Res<Option<usize>> {
        loop {
            self.step()?;
            if p >= self.pat.len() {
                return Ok(Some(s));
            }
            match self.p(p) {
                b'(' => {
                    return if self.p(p + 1) == b')' {
                        self.start_capture(s, p + 2, CAP_POSITION)
                    } else {
                        self.start_capture(s, p + 1, CAP_UNFINISHED)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                ESC if self.p(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(e) => {
                        s = e;
                        p += 4;
                        continue;
                    }
                    None => return Ok(None),
                },
                ESC if self.p(p + 1) == b'f' => {
                    p += 2;
                    if self.p(p) != b'[' {
                        return script("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    if !self.match_bracket_class(previous, p, ep - 1)
                        && self.match_bracket_class(self.s(s), p, ep - 1)
                    {
                        p = ep;
                        continue;
                    }
                    return Ok(None);
                }
                ESC if self.p(p + 1).is_ascii_digit() => {
                    match self.match_capture(s, self.p(p + 1))? {
                        Some(e) => {
                            s = e;
                            p += 2;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let next = self.p(ep);
                    if !self.single_match(s, p, ep) {
                        if next == b'*' || next == b'?' || next == b'-' {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match next {
                        b'?' => match self.do_match(s + 1, ep + 1)? {
                            Some(res) => return Ok(Some(res)),
                            None => {
                                p = ep + 1;
                                continue;
                            }
                        },
                        b'+' => return self.max_expand(s + 1, p, ep),
                        b'*' => return self.max_expand(s, p, ep),
                        b'-' => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }

    /// Capture `i` of a match `src[s..e]` (the whole match when there are none).
    fn capture_value(&self, lua: &Lua, i: usize, s: usize, e: usize) -> Res<Value> {
        if i >= self.level {
            if i != 0 {
                return script(format!("invalid capture index %{}", i + 1));
            }
            return Ok(Value::String(lua.create_string(&self.src[s..e])?));
        }
        let (init, len) = self.capture[i];
        match len {
            CAP_UNFINISHED => script("unfinished capture"),
            CAP_POSITION => Ok(Value::Integer(init as i64 + 1)),
            len => Ok(Value::String(
                lua.create_string(&self.src[init..init + len as usize])?,
            )),
        }
    }

    /// Every capture of a match (the whole match when the pattern has none
    /// and `whole` is set).
    fn captures(&self, lua: &Lua, s: usize, e: usize, whole: bool) -> Res<Vec<Value>> {
        let n = if self.level == 0 && whole {
            1
        } else {
            self.level
        };
        (0..n).map(|i| self.capture_value(lua, i, s, e)).collect()
    }
}

fn match_class(c: u8, cl: u8) -> bool {
    let res = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        _ => return cl == c,
    };
    if cl.is_ascii_uppercase() {
        !res
    } else {
        res
    }
}

/// Lua's `posrelatI`: a 1-based start position from a possibly negative one.
fn start_position(pos: i64, len: usize) -> usize {
    if pos > 0 {
        pos as usize
    } else if pos == 0 || pos.unsigned_abs() > len as u64 {
        1
    } else {
        (len as i64 + pos + 1) as usize
    }
}

/// A value as bytes (numbers are converted, as Lua does), or None.
fn to_bytes(lua: &Lua, v: Value) -> Res<Option<Vec<u8>>> {
    Ok(lua.coerce_string(v)?.map(|s| s.as_bytes().to_vec()))
}

/// Argument `i` (0-based) of function `name` as bytes.
fn string_arg(lua: &Lua, args: &[Value], i: usize, name: &str) -> Res<Vec<u8>> {
    match to_bytes(lua, arg(args, i))? {
        Some(bytes) => Ok(bytes),
        None => script(format!(
            "bad argument #{} to '{name}' (string expected, got {})",
            i + 1,
            type_of(args, i)
        )),
    }
}

/// Lua's name for the type of argument `i`, "no value" when it is absent.
fn type_of(args: &[Value], i: usize) -> &'static str {
    args.get(i).map_or("no value", |v| v.type_name())
}

/// Optional integer argument `i` (0-based) of function `name`.
fn int_arg(lua: &Lua, args: &[Value], i: usize, name: &str, default: i64) -> Res<i64> {
    let v = arg(args, i);
    if v.is_nil() {
        return Ok(default);
    }
    let n = i + 1;
    match lua.coerce_integer(v.clone())? {
        Some(i) => Ok(i),
        None if lua.coerce_number(v)?.is_some() => script(format!(
            "bad argument #{n} to '{name}' (number has no integer representation)"
        )),
        None => script(format!(
            "bad argument #{n} to '{name}' (number expected, got {})",
            type_of(args, i)
        )),
    }
}

fn arg(args: &[Value], i: usize) -> Value {
    args.get(i).cloned().unwrap_or(Value::Nil)
}

/// `string.find` (`find` = true) and `string.match`.
pub fn find(lua: &Lua, args: &[Value], find: bool, meter: Meter<'_>) -> Res<MultiValue> {
    let name = if find { "find" } else { "match" };
    let src = string_arg(lua, args, 0, name)?;
    let pat = string_arg(lua, args, 1, name)?;
    let init = start_position(int_arg(lua, args, 2, name, 1)?, src.len()) - 1;
    if init > src.len() {
        return Ok(MultiValue::from_vec(vec![Value::Nil]));
    }
    let plain = find && is_truthy(&arg(args, 3));
    if find && (plain || !pat.iter().any(|c| SPECIALS.contains(c))) {
        let mut ms = MatchState::new(&src, &pat, meter);
        // A plain search: charged per byte compared, like the matcher.
        let found = if pat.is_empty() {
            Some(init)
        } else {
            let mut hit = None;
            for (i, window) in src[init..].windows(pat.len()).enumerate() {
                ms.steps += pat.len() as u64;
                if ms.steps >= TICK {
                    ms.flush()?;
                }
                if window == pat.as_slice() {
                    hit = Some(init + i);
                    break;
                }
            }
            hit
        };
        ms.flush()?;
        return Ok(MultiValue::from_vec(match found {
            Some(at) => vec![
                Value::Integer(at as i64 + 1),
                Value::Integer((at + pat.len()) as i64),
            ],
            None => vec![Value::Nil],
        }));
    }
    let (anchor, body) = match pat.first() {
        Some(b'^') => (true, &pat[1..]),
        _ => (false, &pat[..]),
    };
    let mut ms = MatchState::new(&src, body, meter);
    let mut s1 = init;
    loop {
        ms.reprep();
        if let Some(e) = ms.do_match(s1, 0)? {
            ms.flush()?;
            let mut out = Vec::new();
            if find {
                out.push(Value::Integer(s1 as i64 + 1));
                out.push(Value::Integer(e as i64));
                out.extend(ms.captures(lua, s1, e, false)?);
            } else {
                out.extend(ms.captures(lua, s1, e, true)?);
            }
            return Ok(MultiValue::from_vec(out));
        }
        s1 += 1;
        if anchor || s1 > src.len() {
            break;
        }
    }
    ms.flush()?;
    Ok(MultiValue::from_vec(vec![Value::Nil]))
}

fn is_truthy(v: &Value) -> bool {
    !matches!(v, Value::Nil | Value::Boolean(false))
}

/// The state of one `string.gmatch` iteration.
pub struct GMatch {
    src: Vec<u8>,
    pat: Vec<u8>,
    pos: usize,
    last: Option<usize>,
}

impl GMatch {
    pub fn new(lua: &Lua, args: &[Value]) -> Res<GMatch> {
        let src = string_arg(lua, args, 0, "gmatch")?;
        let pat = string_arg(lua, args, 1, "gmatch")?;
        let mut init = start_position(int_arg(lua, args, 2, "gmatch", 1)?, src.len()) - 1;
        if init > src.len() {
            init = src.len() + 1;
        }
        Ok(GMatch {
            src,
            pat,
            pos: init,
            last: None,
        })
    }

    /// The next match's captures, or nothing at the end.
    pub fn next(&mut self, lua: &Lua, meter: Meter<'_>) -> Res<MultiValue> {
        let mut ms = MatchState::new(&self.src, &self.pat, meter);
        let mut src = self.pos;
        while src <= self.src.len() {
            ms.reprep();
            if let Some(e) = ms.do_match(src, 0)? {
                if Some(e) != self.last {
                    ms.flush()?;
                    let out = ms.captures(lua, src, e, true)?;
                    self.pos = e;
                    self.last = Some(e);
                    return Ok(MultiValue::from_vec(out));
                }
            }
            src += 1;
        }
        ms.flush()?;
        self.pos = src;
        Ok(MultiValue::new())
    }
}

/// `string.gsub`. `max_bytes` bounds the result (the state's memory limit).
pub fn gsub(lua: &Lua, args: &[Value], meter: Meter<'_>, max_bytes: usize) -> Res<MultiValue> {
    let src = string_arg(lua, args, 0, "gsub")?;
    let pat = string_arg(lua, args, 1, "gsub")?;
    let repl = arg(args, 2);
    enum Repl {
        Text(Vec<u8>),
        Table(Table),
        Call(Function),
    }
    let repl = match repl {
        Value::String(_) | Value::Integer(_) | Value::Number(_) => {
            Repl::Text(string_arg(lua, args, 2, "gsub")?)
        }
        Value::Table(t) => Repl::Table(t),
        Value::Function(f) => Repl::Call(f),
        _ => {
            return script(format!(
                "bad argument #3 to 'gsub' (string/function/table expected, got {})",
                type_of(args, 2)
            ))
        }
    };
    let max_n = int_arg(lua, args, 3, "gsub", src.len() as i64 + 1)?;
    let (anchor, body) = match pat.first() {
        Some(b'^') => (true, &pat[1..]),
        _ => (false, &pat[..]),
    };
    let mut out: Vec<u8> = Vec::new();
    let grow = |out: &mut Vec<u8>, bytes: &[u8]| -> Res<()> {
        if out.len() + bytes.len() > max_bytes {
            return script(format!(
                "gsub: the result would be over the memory limit of {} KiB for this script",
                max_bytes / 1024
            ));
        }
        out.extend_from_slice(bytes);
        Ok(())
    };
    let mut ms = MatchState::new(&src, body, meter);
    let mut s = 0;
    let mut last = None;
    let mut n = 0i64;
    let mut changed = false;
    while n < max_n {
        ms.reprep();
        match ms.do_match(s, 0)? {
            Some(e) if Some(e) != last => {
                n += 1;
                ms.flush()?;
                let whole = &src[s..e];
                let value = match &repl {
                    Repl::Text(text) => {
                        let mut piece = Vec::new();
                        let mut i = 0;
                        while i < text.len() {
                            let c = text[i];
                            i += 1;
                            if c != ESC {
                                piece.push(c);
                                continue;
                            }
                            let d = text.get(i).copied().unwrap_or(0);
                            i += 1;
                            if d == ESC {
                                piece.push(ESC);
                            } else if d == b'0' {
                                piece.extend_from_slice(whole);
                            } else if d.is_ascii_digit() {
                                match ms.capture_value(lua, usize::from(d - b'1'), s, e)? {
                                    Value::String(v) => piece.extend_from_slice(&v.as_bytes()),
                                    Value::Integer(v) => piece.extend(v.to_string().bytes()),
                                    _ => {}
                                }
                            } else {
                                return script("invalid use of '%' in replacement string");
                            }
                            if piece.len() > max_bytes {
                                break;
                            }
                        }
                        Some(piece)
                    }
                    Repl::Table(t) => {
                        let key = ms.capture_value(lua, 0, s, e)?;
                        replacement(lua, t.get::<Value>(key)?)?
                    }
                    Repl::Call(f) => {
                        let caps = ms.captures(lua, s, e, true)?;
                        let result: MultiValue = f.call(MultiValue::from_vec(caps))?;
                        replacement(lua, result.into_iter().next().unwrap_or(Value::Nil))?
                    }
                };
                match value {
                    Some(v) => {
                        changed = true;
                        grow(&mut out, &v)?;
                    }
                    None => grow(&mut out, whole)?,
                }
                s = e;
                last = Some(e);
            }
            _ if s < src.len() => {
                grow(&mut out, &src[s..s + 1])?;
                s += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    ms.flush()?;
    let result = if changed {
        grow(&mut out, &src[s..])?;
        Value::String(lua.create_string(&out)?)
    } else {
        arg(args, 0)
    };
    Ok(MultiValue::from_vec(vec![result, Value::Integer(n)]))
}

/// What a replacement table or function gave: false/nil keeps the match.
fn replacement(lua: &Lua, v: Value) -> Res<Option<Vec<u8>>> {
    match v {
        Value::Nil | Value::Boolean(false) => Ok(None),
        Value::String(_) | Value::Integer(_) | Value::Number(_) => to_bytes(lua, v),
        other => script(format!(
            "invalid replacement value (a {})",
            other.type_name()
        )),
    }
}
