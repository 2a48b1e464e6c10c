-- The sandbox set-up, run once per state before the script (see sandbox.rs).
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
