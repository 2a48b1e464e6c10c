//! Production plans: CSV (`date,model,first_serial,count`) or JSON (the same
//! fields, or an explicit `serials` list), parsed whole before anything is
//! stored, so an import is all rows or none. How many ids a plan may hold is
//! capped (per row, per plan and per day, see `[plan]` in station.toml) and
//! checked before a row is expanded. Errors name the file, the row and the
//! field.
//!
//! The drop folder (`DIR/plans/`) that a serving station watches is
//! [`drop`]: it hands each dropped file to the same reader. This file is one
//! job (a plan from its text to the stock); it is over 600 lines only because
//! its tests and property runs live beside it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context;

use super::config::{day_text, parse_day, StationConfig};
use crate::pki::id::{check_model, DeviceId, SERIAL_MAX};
use crate::store::stock::{PlanRow, Stock, StockError};
pub use crate::wire::station::ImportReport;

pub mod drop;
pub use drop::drop_folder;

/// Most serials one plan row may expand to.
pub const MAX_COUNT: u64 = 100_000;

const CSV_COLUMNS: [&str; 4] = ["date", "model", "first_serial", "count"];

/// Where a plan row came from, for error messages: the file's line (CSV) or
/// the row's index (JSON, 1-based).
#[derive(Debug, Clone)]
struct Origin {
    row: usize,
    line: Option<usize>,
}

impl Origin {
    fn describe(&self, file: &str) -> String {
        match self.line {
            Some(line) => format!("{file} row {} (line {line})", self.row),
            None => format!("{file} row {}", self.row),
        }
    }
}

/// One row as written in the file, before expansion.
struct RawRow {
    origin: Origin,
    date: String,
    model: String,
    serials: SerialSpec,
}

enum SerialSpec {
    Range { first: String, count: String },
    List(Vec<String>),
}

fn field_error(
    file: &str,
    origin: &Origin,
    field: &str,
    message: impl std::fmt::Display,
) -> anyhow::Error {
    anyhow::anyhow!("{}, field {field}: {message}", origin.describe(file))
}

fn parse_csv(file: &str, text: &str) -> anyhow::Result<Vec<RawRow>> {
    let table = crate::table::Table::parse(file, text, &CSV_COLUMNS, &[])?;
    Ok(table
        .rows()
        .map(|row| RawRow {
            date: row.get("date").to_string(),
            model: row.get("model").to_string(),
            serials: SerialSpec::Range {
                first: row.get("first_serial").to_string(),
                count: row.get("count").to_string(),
            },
            origin: Origin {
                row: row.row,
                line: Some(row.line),
            },
        })
        .collect())
}

fn parse_json(file: &str, text: &str) -> anyhow::Result<Vec<RawRow>> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{file}: not valid JSON: {e}"))?;
    let list = match value {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Object(mut object) => match object.remove("plan") {
            Some(serde_json::Value::Array(list)) if object.is_empty() => list,
            _ => anyhow::bail!(
                "{file}: a JSON plan is a list of rows, or an object with just a \"plan\" list"
            ),
        },
        _ => anyhow::bail!("{file}: a JSON plan is a list of rows"),
    };
    let mut rows = Vec::new();
    for (i, item) in list.into_iter().enumerate() {
        let origin = Origin {
            row: i + 1,
            line: None,
        };
        let serde_json::Value::Object(object) = item else {
            anyhow::bail!(
                "{}: a row is an object with date, model and first_serial+count or serials",
                origin.describe(file)
            );
        };
        for key in object.keys() {
            if !["date", "model", "first_serial", "count", "serials"].contains(&key.as_str()) {
                return Err(field_error(
                    file,
                    &origin,
                    key,
                    "unknown field (a row has date, model, and first_serial with count, or serials)",
                ));
            }
        }
        let text_field = |name: &str| -> anyhow::Result<String> {
            match object.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.trim().to_string()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(_) => Err(field_error(file, &origin, name, "must be a string")),
                None => Err(field_error(file, &origin, name, "is missing")),
            }
        };
        let date = text_field("date")?;
        let model = text_field("model")?;
        let serials = match (
            object.get("serials"),
            object.get("first_serial"),
            object.get("count"),
        ) {
            (Some(list), None, None) => {
                let serde_json::Value::Array(list) = list else {
                    return Err(field_error(
                        file,
                        &origin,
                        "serials",
                        "must be a list of serials",
                    ));
                };
                let mut out = Vec::new();
                for (n, s) in list.iter().enumerate() {
                    match s {
                        serde_json::Value::String(s) => out.push(s.trim().to_string()),
                        _ => {
                            return Err(field_error(
                                file,
                                &origin,
                                "serials",
                                format!("entry {} must be a string", n + 1),
                            ))
                        }
                    }
                }
                SerialSpec::List(out)
            }
            (None, Some(_), Some(_)) => SerialSpec::Range {
                first: text_field("first_serial")?,
                count: text_field("count")?,
            },
            (Some(_), _, _) => {
                return Err(field_error(
                    file,
                    &origin,
                    "serials",
                    "give either serials or first_serial with count, not both",
                ))
            }
            (None, None, _) => {
                return Err(field_error(
                    file,
                    &origin,
                    "first_serial",
                    "is missing (or give serials)",
                ))
            }
            (None, Some(_), None) => return Err(field_error(file, &origin, "count", "is missing")),
        };
        rows.push(RawRow {
            origin,
            date,
            model,
            serials,
        });
    }
    Ok(rows)
}

/// Serials counting up from `first`, keeping its width: the trailing digits
/// count, a leading letter prefix stays. A serial is at most
/// [`SERIAL_MAX`] characters, so the count never runs past what a `u128` holds.
fn expand(first: &str, count: u64) -> Result<Vec<String>, String> {
    if first.len() > SERIAL_MAX {
        return Err(format!(
            "{first:?} is longer than {SERIAL_MAX} characters, the longest serial"
        ));
    }
    let digits_at = first
        .rfind(|c: char| !c.is_ascii_digit())
        .map(|i| i + 1)
        .unwrap_or(0);
    let (prefix, digits) = first.split_at(digits_at);
    if digits.is_empty() {
        if count == 1 {
            return Ok(vec![first.to_string()]);
        }
        return Err(format!(
            "{first:?} does not end in digits, so it cannot count up (list the serials instead)"
        ));
    }
    let width = digits.len();
    let start: u128 = digits
        .parse()
        .map_err(|_| format!("{first:?} has too many digits to count up"))?;
    let past = || format!("counting {count} up from {first:?} runs past {width} digits");
    let last = count
        .checked_sub(1)
        .and_then(|more| start.checked_add(u128::from(more)))
        .ok_or_else(past)?;
    if last.to_string().len() > width {
        return Err(past());
    }
    Ok((start..=last)
        .map(|n| format!("{prefix}{n:0width$}"))
        .collect())
}

/// Checks and expands every row; nothing is stored.
fn expand_rows(
    file: &str,
    raw: Vec<RawRow>,
    config: &StationConfig,
) -> anyhow::Result<Vec<PlanRow>> {
    let limits = &config.plan;
    let mut rows = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut per_day: HashMap<time::Date, u64> = HashMap::new();
    for r in raw {
        let day = parse_day(&r.date).map_err(|e| field_error(file, &r.origin, "date", e))?;
        check_model(&r.model).map_err(|e| field_error(file, &r.origin, "model", e))?;
        if config.model(&r.model).is_none() {
            let known: Vec<&str> = config.models.keys().map(String::as_str).collect();
            return Err(field_error(
                file,
                &r.origin,
                "model",
                format!(
                    "unknown model code {} (this station knows {}); add it under [models] in station.toml",
                    r.model,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            ));
        }
        // How many ids the row holds, checked against the caps before the
        // row is expanded: a plan that would hold too many is refused
        // without making them.
        let (field, adds) = match &r.serials {
            SerialSpec::Range { count, .. } => {
                let count: i64 = count.parse().map_err(|_| {
                    field_error(
                        file,
                        &r.origin,
                        "count",
                        format!("{count:?} is not a whole number"),
                    )
                })?;
                if count < 1 || count as u64 > MAX_COUNT {
                    return Err(field_error(
                        file,
                        &r.origin,
                        "count",
                        format!("{count} is not a count from 1 to {MAX_COUNT}"),
                    ));
                }
                ("count", count as u64)
            }
            SerialSpec::List(list) => {
                if list.is_empty() {
                    return Err(field_error(file, &r.origin, "serials", "the list is empty"));
                }
                ("serials", list.len() as u64)
            }
        };
        let in_plan = rows.len() as u64 + adds;
        if in_plan > limits.max_ids_per_plan {
            return Err(field_error(
                file,
                &r.origin,
                field,
                format!(
                    "the plan would hold {in_plan} ids, over the limit of {} a plan (plan.max_ids_per_plan in station.toml); split it. Nothing was imported",
                    limits.max_ids_per_plan
                ),
            ));
        }
        let on_day = per_day.entry(day).or_default();
        *on_day += adds;
        if *on_day > limits.max_ids_per_day {
            return Err(field_error(
                file,
                &r.origin,
                field,
                format!(
                    "the plan would hold {} ids for {}, over the limit of {} a day (plan.max_ids_per_day in station.toml). Nothing was imported",
                    *on_day,
                    day_text(day),
                    limits.max_ids_per_day
                ),
            ));
        }
        let (serials, field) = match &r.serials {
            SerialSpec::Range { first, .. } => {
                let serials = expand(first, adds)
                    .map_err(|e| field_error(file, &r.origin, "first_serial", e))?;
                (serials, "first_serial")
            }
            SerialSpec::List(list) => (list.clone(), "serials"),
        };
        for serial in serials {
            let id = DeviceId::new(&r.model, &serial)
                .map_err(|e| field_error(file, &r.origin, field, e))?;
            let id = id.to_string();
            if let Some(first_row) = seen.insert(id.clone(), r.origin.row) {
                return Err(field_error(
                    file,
                    &r.origin,
                    field,
                    format!("device id {id} is already planned in row {first_row} of this file (duplicate serial)"),
                ));
            }
            rows.push(PlanRow {
                id,
                day: day_text(day),
                model: r.model.clone(),
                serial,
                source: file.to_string(),
                row: r.origin.row as i64,
                discarded: false,
                rework: false,
            });
        }
    }
    if rows.is_empty() {
        anyhow::bail!("{file}: the plan has no rows");
    }
    Ok(rows)
}

/// Reads and checks a plan file (CSV or JSON, by extension or content).
pub fn read(path: &Path, config: &StationConfig) -> anyhow::Result<Vec<PlanRow>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read plan {file}"))?;
    parse(&file, &text, config)
}

/// Checks a plan given as text; `file` names it in errors and decides the
/// format by its extension (else by the content).
fn parse(file: &str, text: &str, config: &StationConfig) -> anyhow::Result<Vec<PlanRow>> {
    let ext = Path::new(file)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let looks_json = matches!(text.trim_start().chars().next(), Some('[' | '{'));
    let raw = match ext.as_str() {
        "json" => parse_json(file, text)?,
        "csv" => parse_csv(file, text)?,
        _ if looks_json => parse_json(file, text)?,
        _ => parse_csv(file, text)?,
    };
    expand_rows(file, raw, config)
}

/// Imports a plan file: all rows or none.
pub fn import(
    path: &Path,
    config: &StationConfig,
    stock: &mut Stock,
    actor: &str,
) -> anyhow::Result<ImportReport> {
    let rows = read(path, config)?;
    store(&path.display().to_string(), rows, config, stock, actor)
}

/// Stores checked rows: all or none.
fn store(
    file: &str,
    rows: Vec<PlanRow>,
    config: &StationConfig,
    stock: &mut Stock,
    actor: &str,
) -> anyhow::Result<ImportReport> {
    let file = file.to_string();
    let change = stock.import_plan(&rows, actor, &file).map_err(|err| {
        match err.downcast::<StockError>() {
            Ok(StockError::PlannedElsewhere {
                index,
                id,
                other_day,
                other_source,
                other_row,
            }) if index < rows.len() => anyhow::anyhow!(
                "{file} row {}: device id {id} is already planned for {other_day} ({other_source} row {other_row}); a serial is built once, so re-import {other_day}'s plan without it to move it. Nothing was imported",
                rows[index].row
            ),
            Ok(other) => anyhow::anyhow!("{file}: {other}; nothing was imported"),
            Err(other) => other.context(format!("{file}: nothing was imported")),
        }
    })?;
    let mut days: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for row in &rows {
        *days
            .entry(row.day.clone())
            .or_default()
            .entry(row.model.clone())
            .or_default() += 1;
    }
    let mut notes = Vec::new();
    let mut without: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &rows {
        if !config.carries_certificate(&row.model) {
            *without.entry(row.model.as_str()).or_default() += 1;
        }
    }
    for (model, n) in without {
        notes.push(format!(
            "model {model} carries no certificate: its {n} id(s) are kept in the plan and skipped by the fetch"
        ));
    }
    Ok(ImportReport {
        file,
        ids: rows.len(),
        days,
        change,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::station::config::ModelConfig;

    fn config() -> StationConfig {
        let mut c = StationConfig::new("s", "https://127.0.0.1:1");
        for (m, cert) in [("3012", true), ("X9", false)] {
            c.models.insert(
                m.into(),
                ModelConfig {
                    certificate: cert,
                    profile: Default::default(),
                    keygen: Default::default(),
                },
            );
        }
        c
    }

    fn check(text: &str, ext: &str) -> anyhow::Result<Vec<PlanRow>> {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(format!("plan.{ext}"));
        std::fs::write(&path, text).unwrap();
        read(&path, &config())
    }

    #[test]
    fn csv_counts_up_keeping_width() {
        let rows = check(
            "date,model,first_serial,count\n2030-01-15,3012,000098,3\n",
            "csv",
        )
        .unwrap();
        let ids: Vec<_> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["3012-000098", "3012-000099", "3012-000100"]);
        assert_eq!(expand("AB09", 2).unwrap(), ["AB09", "AB10"]);
        assert!(expand("99", 2).is_err());
    }

    #[test]
    fn json_with_list_and_range() {
        let rows = check(
            r#"[{"date":"2030-01-15","model":"3012","serials":["A1","B2"]},
               {"date":"2030-01-15","model":"X9","first_serial":"1","count":2}]"#,
            "json",
        )
        .unwrap();
        assert_eq!(rows.len(), 4);
    }

    #[test]
    fn errors_name_file_row_and_field() {
        let e = check(
            "date,model,first_serial,count\n2030-13-01,3012,1,1\n",
            "csv",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("row 1 (line 2), field date"), "{e}");
        let e = check("date,model,first_serial,count,colour\n", "csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown column \"colour\""), "{e}");
        let e = check(
            "date,model,first_serial,count\n2030-01-01,3012,1,-4\n",
            "csv",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("field count"), "{e}");
        let e = check(
            "date,model,first_serial,count\n2030-01-01,3012,1,2\n2030-01-01,3012,2,1\n",
            "csv",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("row 2 (line 3), field first_serial") && e.contains("duplicate"),
            "{e}"
        );
        let e = check("date,model,first_serial,count\n2030-01-01,ZZZ,1,1\n", "csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown model code ZZZ"), "{e}");
        let e = check(
            r#"[{"date":"2030-01-01","model":"3012","first_serial":"1","count":1,"shift":2}]"#,
            "json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("row 1, field shift"), "{e}");
    }

    #[test]
    fn counting_past_what_a_number_holds_is_refused() {
        let max = u128::MAX.to_string();
        let e = expand(&max, 2).unwrap_err();
        assert!(
            e.contains("longer than 20") || e.contains("runs past"),
            "{e}"
        );
        let e = check(
            &format!("date,model,first_serial,count\n2030-01-15,3012,{max},2\n"),
            "csv",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("row 1 (line 2), field first_serial"), "{e}");
        // Twenty digits is the longest serial, and it counts up to its end.
        let last = "9".repeat(20);
        assert_eq!(expand(&last, 1).unwrap(), std::slice::from_ref(&last));
        assert!(expand(&last, 2)
            .unwrap_err()
            .contains("runs past 20 digits"));
        assert!(expand(&format!("{last}0"), 1)
            .unwrap_err()
            .contains("longer than 20"));
    }

    #[test]
    fn caps_per_plan_and_per_day_are_checked_before_expanding() {
        let mut config = config();
        config.plan.max_ids_per_plan = 10;
        config.plan.max_ids_per_day = 6;
        let read = |text: &str| {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("plan.csv");
            std::fs::write(&path, text).unwrap();
            read(&path, &config)
        };
        let header = "date,model,first_serial,count";
        // Two days of five, then one more id: over the plan's cap at row 3.
        let e = read(&format!(
            "{header}\n2030-01-14,3012,1,5\n2030-01-15,3012,101,5\n2030-01-16,3012,201,1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("row 3 (line 4), field count") && e.contains("max_ids_per_plan"),
            "{e}"
        );
        // Four and three on one day: over the day's cap at row 2.
        let e = read(&format!(
            "{header}\n2030-01-14,3012,1,4\n2030-01-14,3012,101,3\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("row 2 (line 3), field count") && e.contains("max_ids_per_day"),
            "{e}"
        );
        // Exactly at both caps is fine.
        let rows = read(&format!(
            "{header}\n2030-01-14,3012,1,6\n2030-01-15,3012,101,4\n"
        ))
        .unwrap();
        assert_eq!(rows.len(), 10);
        // The defaults.
        let limits = crate::station::config::PlanLimits::default();
        assert_eq!(
            (limits.max_ids_per_plan, limits.max_ids_per_day),
            (200_000, 100_000)
        );
    }

    /// Property tests of the plan readers (a short run in the normal test
    /// command): whatever the file holds, reading it never panics, and a plan
    /// that reads is complete: every row's ids, nothing more, nothing less.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn date() -> impl Strategy<Value = String> {
            prop_oneof!["2030-01-1[4-6]", "2030-0[0-9]-3[0-9]", "[0-9-]{0,12}"]
        }
        fn model() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("3012".to_string()),
                Just("X9".to_string()),
                "[A-Za-z0-9-]{0,9}"
            ]
        }
        fn first_serial() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9]{1,7}",
                "[A-Z]{1,3}[0-9]{1,5}",
                "[0-9]{18,40}",
                "[A-Za-z0-9 ,\"]{0,24}"
            ]
        }
        fn count() -> impl Strategy<Value = String> {
            prop_oneof!["[0-9]{1,3}", "-?[0-9]{1,7}", "[0-9]{20,40}", ".{0,4}"]
        }
        fn row() -> impl Strategy<Value = (String, String, String, String)> {
            (date(), model(), first_serial(), count())
        }

        /// A station with small caps, so plans run into them.
        fn capped() -> StationConfig {
            let mut c = config();
            c.plan.max_ids_per_plan = 400;
            c.plan.max_ids_per_day = 250;
            c
        }

        fn read_text(text: &str, ext: &str) -> anyhow::Result<Vec<PlanRow>> {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join(format!("plan.{ext}"));
            std::fs::write(&path, text).unwrap();
            read(&path, &capped())
        }

        /// A plan that reads holds exactly the ids its rows ask for.
        fn complete(rows: &[(String, String, String, String)], read: &[PlanRow]) {
            let asked: u64 = rows
                .iter()
                .map(|r| r.3.trim().parse::<u64>().unwrap())
                .sum();
            assert_eq!(read.len() as u64, asked);
            for (n, r) in rows.iter().enumerate() {
                let made = read.iter().filter(|p| p.row == n as i64 + 1).count();
                assert_eq!(
                    made as u64,
                    r.3.trim().parse::<u64>().unwrap(),
                    "row {}",
                    n + 1
                );
            }
            let ids: std::collections::HashSet<&str> = read.iter().map(|p| p.id.as_str()).collect();
            assert_eq!(ids.len(), read.len(), "an id twice");
            assert!(read.len() as u64 <= capped().plan.max_ids_per_plan);
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn csv_plans_read_whole_or_not_at_all(rows in prop::collection::vec(row(), 0..5)) {
                let mut text = String::from("date,model,first_serial,count\n");
                for (d, m, f, c) in &rows {
                    let f = if f.contains([',', '"']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.clone() };
                    text.push_str(&format!("{d},{m},{f},{c}\n"));
                }
                if let Ok(read) = read_text(&text, "csv") {
                    complete(&rows, &read);
                }
            }

            #[test]
            fn json_plans_read_whole_or_not_at_all(rows in prop::collection::vec(row(), 0..5), numbers in any::<bool>()) {
                let list: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(d, m, f, c)| match (numbers, c.parse::<i64>()) {
                        (true, Ok(n)) => serde_json::json!({"date": d, "model": m, "first_serial": f, "count": n}),
                        _ => serde_json::json!({"date": d, "model": m, "first_serial": f, "count": c}),
                    })
                    .collect();
                let text = serde_json::Value::Array(list).to_string();
                if let Ok(read) = read_text(&text, "json") {
                    complete(&rows, &read);
                }
            }

            #[test]
            fn any_text_never_panics(text in "(\\PC|[,\"\n\\[\\]{}:]){0,160}", json in any::<bool>()) {
                let _ = read_text(&text, if json { "json" } else { "csv" });
            }
        }
    }
}
