-- Retention policy of the example factory: what becomes of a pack once its
-- certificate is written into the device. The station asks decide(pack) for
-- each newly written pack and, every minute, for each flagged one.
--   "flag"   keep the pack, marked written (time and line)
--   "delete" wipe its key from the station's database (file and WAL)
--   "keep"   leave it as it is (a flagged pack not old enough yet)

-- Meters: their key never needs to leave the device again, delete at once.
local DELETE_AT_ONCE = { A123 = true }
-- Everything else: kept flagged for this many days (for rework), then deleted.
local KEEP_DAYS = 30

function decide(pack)
  if DELETE_AT_ONCE[pack.model] then
    return "delete"
  end
  if not pack.flagged then
    return "flag"
  end
  if pack.age_days >= KEEP_DAYS then
    return "delete"
  end
  return "keep"
end

-- The self-check: every edit must still pass these before it serves.
checks = {
  { pack = { model = "A123", age_days = 0 }, expect = "delete" },
  { pack = { model = "3012", age_days = 0 }, expect = "flag" },
  { pack = { model = "3012", age_days = 29, flagged = true }, expect = "keep" },
  { pack = { model = "3012", age_days = 30, flagged = true }, expect = "delete" },
}
