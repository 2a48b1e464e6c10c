-- Line workflow of the example factory: how a scanned barcode becomes a
-- device id, and what the line does for each model. Edited while the line
-- runs: the next scan uses the new version; a broken edit is refused and
-- the previous version keeps running. The host API is in scripts/README.md.

-- AIM symbology identifiers the scanners may prepend ("]" + code + modifier).
local SYMBOLOGIES = {
  C = "Code 128", d = "Data Matrix", Q = "QR Code", E = "EAN/UPC", I = "Interleaved 2 of 5",
}

-- Splits "]C1rest" into ("]C1", "rest"); a scan without a prefix is kept whole.
local function strip_aim(raw)
  local prefix, rest = raw:match("^(%][%a][%w])(.*)$")
  if prefix and SYMBOLOGIES[prefix:sub(2, 2)] then
    return prefix, rest
  end
  return nil, raw
end

-- GS1 mod-10 check digit over the digits of a numeric serial.
local function check_digit(digits)
  local sum, weight = 0, 3
  for i = #digits, 1, -1 do
    sum = sum + tonumber(digits:sub(i, i)) * weight
    weight = 4 - weight
  end
  return (10 - sum % 10) % 10
end

-- Rating plate: MODEL-SERIAL, or MODEL-SERIAL-C with a check digit C.
local function plate(text)
  local model, serial, check = text:match("^(%w+)%-(%d+)%-(%d)$")
  if model then
    if check_digit(serial) ~= tonumber(check) then
      return nil, string.format("check digit %s does not match serial %s (expected %d); rescan the plate",
        check, serial, check_digit(serial))
    end
    return { model = model, serial = serial, format = "plate+check" }
  end
  model, serial = text:match("^(%w+)%-(%w+)$")
  if model then
    return { model = model, serial = serial, format = "plate" }
  end
  return nil
end

-- Check sheet (the paper traveller): CS;M=<model>;S=<serial>;QC=<OK|NG>[;...]
local function check_sheet(text)
  if text:sub(1, 3) ~= "CS;" then return nil end
  local fields = {}
  for key, value in text:gmatch("(%u+)=([^;]*)") do fields[key] = value end
  if not fields.M or not fields.S then
    return nil, "check sheet without M= (model) or S= (serial)"
  end
  if fields.QC ~= "OK" then
    -- The third value is the refusal code: the line advises per code
    -- (a QC fail: take the device off the line, not "rescan the plate").
    return nil, "check sheet says QC=" .. tostring(fields.QC) .. "; the device has not passed its quality check", "qc_failed"
  end
  -- Fields beyond model, serial, format and symbology (the lot) reach the
  -- line's result for the audit.
  return { model = fields.M, serial = fields.S, format = "check-sheet", lot = fields.LOT }
end

function parse(raw)
  local symbology, text = strip_aim(raw)
  text = text:upper():gsub("^%s+", ""):gsub("%s+$", "")
  local scan, why, code = check_sheet(text)
  if not scan and not why then scan, why = plate(text) end
  if not scan then
    return nil, why or ("not a rating plate or check sheet: " .. text), code
  end
  scan.symbology = symbology
  return scan
end

-- Models that need the operator's confirmation before the write.
local CONFIRM = {
  A123 = "Is the meter in service mode (display shows SVC)? Press OK to write its identity.",
}

function workflow(scan)
  local model = host.models[scan.model]
  if model and model.certificate == false then
    return { { step = "refuse", code = "no_certificate",
               message = scan.model .. " (" .. (model.description or "?") .. ") carries no identity certificate",
               next = "pass the device on; nothing to write" } }
  end
  local steps = {}
  if scan.format == "check-sheet" then
    steps[#steps + 1] = { step = "message", text = "scanned from the check sheet: make sure the plate says " .. scan.id }
  end
  if CONFIRM[scan.model] then
    steps[#steps + 1] = { step = "confirm", prompt = CONFIRM[scan.model] }
  end
  steps[#steps + 1] = "provision"
  return steps
end

-- The self-check: every edit must still pass these before it serves.
checks = {
  { scan = "3012-123456", id = "3012-123456", steps = "provision" },
  { scan = "]C13012-123456-5", id = "3012-123456" },
  { scan = "3012-123456-4" },                                   -- wrong check digit
  { scan = "CS;M=A123;S=654321;QC=OK", id = "A123-654321", steps = "message,confirm,provision" },
  { scan = "CS;M=A123;S=654321;QC=NG", code = "qc_failed" },
  { scan = "K7-1001", id = "K7-1001", steps = "refuse" },
  { scan = "hello" },
}
