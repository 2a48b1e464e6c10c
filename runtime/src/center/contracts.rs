//! The contract list: which devices are under a maintenance contract, when.
//!
//! A CSV file with the header `devices,contract,from,to`: `devices` is one id
//! (`3012-000001`) or a range of one model (`3012-000100..3012-000199`, serials
//! of one width compared in order); `from` and `to` are dates (YYYY-MM-DD, `to`
//! may be empty for open-ended). Loading is all or nothing; errors name the
//! row and the field.

use std::path::Path;

use anyhow::Context;
use time::Date;

use crate::pki::id::DeviceId;
use crate::table::Table;

#[derive(Debug, Clone)]
pub struct Contract {
    pub model: String,
    /// Inclusive serial range of one width.
    pub first: String,
    pub last: String,
    pub reference: String,
    pub from: Date,
    pub to: Option<Date>,
}

impl Contract {
    fn covers(&self, id: &DeviceId, on: Date) -> bool {
        let serial = id.serial();
        id.model() == self.model
            && serial.len() == self.first.len()
            && self.first.as_str() <= serial
            && serial <= self.last.as_str()
            && self.from <= on
            && self.to.is_none_or(|to| on <= to)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Contracts {
    list: Vec<Contract>,
}

fn parse_date(text: &str) -> Result<Date, String> {
    Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| format!("{text:?} is not a date (YYYY-MM-DD)"))
}

impl Contracts {
    pub fn load(path: &Path) -> anyhow::Result<Contracts> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the contract list {}", path.display()))?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(file: &str, text: &str) -> anyhow::Result<Contracts> {
        let table = Table::parse(file, text, &["devices", "contract", "from"], &["to"])?;
        let mut list = Vec::new();
        for row in table.rows() {
            let devices = row.get("devices");
            let (first, last) = devices.split_once("..").unwrap_or((devices, devices));
            let first = DeviceId::parse(first).map_err(|e| row.error(file, "devices", e))?;
            let last = DeviceId::parse(last).map_err(|e| row.error(file, "devices", e))?;
            if first.model() != last.model() {
                return Err(row.error(file, "devices", "a range must stay within one model code"));
            }
            if first.serial().len() != last.serial().len() || first.serial() > last.serial() {
                return Err(row.error(
                    file,
                    "devices",
                    format!(
                        "{first}..{last} is not a range of serials of one width, first to last"
                    ),
                ));
            }
            let reference = row.get("contract");
            if reference.is_empty() {
                return Err(row.error(file, "contract", "a contract reference is required"));
            }
            let from = parse_date(row.get("from")).map_err(|e| row.error(file, "from", e))?;
            let to = match row.get("to") {
                "" => None,
                text => Some(parse_date(text).map_err(|e| row.error(file, "to", e))?),
            };
            if to.is_some_and(|to| to < from) {
                return Err(row.error(file, "to", "the contract ends before it starts"));
            }
            list.push(Contract {
                model: first.model().to_string(),
                first: first.serial().to_string(),
                last: last.serial().to_string(),
                reference: reference.to_string(),
                from,
                to,
            });
        }
        Ok(Contracts { list })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The contract covering `id` on `on`, if any.
    pub fn find(&self, id: &DeviceId, on: Date) -> Option<&Contract> {
        self.list.iter().find(|c| c.covers(id, on))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_ranges_and_dates() {
        let contracts = Contracts::parse(
            "c.csv",
            "devices,contract,from,to\n3012-000001,C-1,2026-01-01,\n3012-000100..3012-000199,C-2,2026-01-01,2026-06-30\n",
        )
        .unwrap();
        let day = |s| parse_date(s).unwrap();
        let id = |s| DeviceId::parse(s).unwrap();
        assert_eq!(
            contracts
                .find(&id("3012-000001"), day("2026-11-25"))
                .unwrap()
                .reference,
            "C-1"
        );
        assert_eq!(
            contracts
                .find(&id("3012-000150"), day("2026-03-01"))
                .unwrap()
                .reference,
            "C-2"
        );
        assert!(
            contracts
                .find(&id("3012-000150"), day("2026-07-01"))
                .is_none(),
            "expired"
        );
        assert!(contracts
            .find(&id("3012-000200"), day("2026-03-01"))
            .is_none());
        assert!(
            contracts
                .find(&id("3012-00150"), day("2026-03-01"))
                .is_none(),
            "other width"
        );
        assert!(
            contracts
                .find(&id("3012-000001"), day("2025-12-31"))
                .is_none(),
            "not yet"
        );
    }

    #[test]
    fn errors_name_row_and_field() {
        let err = |text: &str| Contracts::parse("c.csv", text).unwrap_err().to_string();
        assert!(err("devices,contract,from\n3012-1,C,2026-13-01\n")
            .contains("row 1 (line 2), field from"));
        assert!(
            err("devices,contract,from\n3012-1,C,2026-01-01\nbad,C,2026-01-01\n")
                .contains("row 2 (line 3), field devices")
        );
        assert!(
            err("devices,contract,from\n3012-9..3012-1,C,2026-01-01\n").contains("field devices")
        );
        assert!(err("devices,contract,from\n3012-1..4000-2,C,2026-01-01\n").contains("one model"));
        assert!(
            err("devices,contract,from,to\n3012-1,C,2026-02-01,2026-01-01\n").contains("field to")
        );
        assert!(err("devices,contract,from\n3012-1,,2026-01-01\n").contains("field contract"));
        assert!(err("devices,price,from\n").contains("unknown column"));
    }

    // Property runs (issue 12's fuzzing matrix): any contract list reads
    // whole or is refused with an error naming a row or a column, never a
    // panic; a list that reads gives the same contracts when read again.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn cell() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9A-Z]{1,9}-[0-9A-Z]{0,21}",
                "[0-9A-Z]{1,4}-[0-9]{1,6}\\.\\.[0-9A-Z]{1,4}-[0-9]{1,6}",
                "20[0-9]{2}-[01][0-9]-[0-3][0-9]",
                "C-[0-9]{1,4}",
                "(\\PC|[,\"\n]){0,12}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            #[test]
            fn contract_lists_read_whole_or_are_refused(
                rows in prop::collection::vec(prop::collection::vec(cell(), 3..5), 0..6),
            ) {
                let mut text = String::from("devices,contract,from,to\n");
                for row in &rows {
                    text.push_str(&row.join(","));
                    text.push('\n');
                }
                match Contracts::parse("c.csv", &text) {
                    Ok(contracts) => {
                        let again = Contracts::parse("c.csv", &text).unwrap();
                        prop_assert_eq!(contracts.len(), again.len());
                        prop_assert!(contracts.len() <= rows.len());
                    }
                    Err(err) => {
                        let err = format!("{err:#}");
                        prop_assert!(err.contains("c.csv"), "{}", err);
                    }
                }
            }
        }
    }
}
