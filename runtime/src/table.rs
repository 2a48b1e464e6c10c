//! Small CSV tables with a header row, as factories hand them over (plans,
//! contract lists), read with the `csv` crate: quoted fields (with commas,
//! quotes or newlines inside), `#` comments and blank lines allowed, and every
//! error naming the file, the line and the column.

use std::collections::HashMap;

/// One data row: its 1-based row number and file line, and its fields by column.
pub struct Row<'a> {
    pub row: usize,
    pub line: usize,
    fields: Vec<String>,
    index: &'a HashMap<String, usize>,
}

impl Row<'_> {
    /// The field of a column (empty when an optional column is absent).
    pub fn get(&self, column: &str) -> &str {
        self.index
            .get(column)
            .map(|i| self.fields[*i].as_str())
            .unwrap_or("")
    }

    /// "FILE row R (line L), field F: message"
    pub fn error(
        &self,
        file: &str,
        column: &str,
        message: impl std::fmt::Display,
    ) -> anyhow::Error {
        anyhow::anyhow!(
            "{file} row {} (line {}), field {column}: {message}",
            self.row,
            self.line
        )
    }
}

/// Where a record really starts, as (byte, line): the csv reader's position
/// can point at the blank lines and `#` comments it skipped before it.
fn record_start(text: &str, mut byte: usize, mut line: usize) -> (usize, usize) {
    while let Some(rest) = text.get(byte..) {
        let skip = if rest.starts_with('#') {
            rest.find('\n').map_or(rest.len(), |i| i + 1)
        } else if rest.starts_with("\r\n") {
            2
        } else if rest.starts_with('\n') {
            1
        } else {
            0
        };
        if skip == 0 || byte + skip >= text.len() {
            break;
        }
        byte += skip;
        line += 1;
    }
    (byte, line)
}

/// A parsed table: the column index and the rows' fields.
#[derive(Debug)]
pub struct Table {
    index: HashMap<String, usize>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    /// Parses `text`; `required` columns must be in the header, `optional`
    /// ones may be; any other column is an error.
    pub fn parse(
        file: &str,
        text: &str,
        required: &[&str],
        optional: &[&str],
    ) -> anyhow::Result<Table> {
        let expected = required.join(",");
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut records = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(text.as_bytes())
            .into_records()
            .filter_map(|record| match record {
                Ok(record) => {
                    let at = record.position().expect("a read record has a position");
                    let (byte, line) = record_start(text, at.byte() as usize, at.line() as usize);
                    // Blank lines, and comments indented with white space.
                    let blank = record.iter().all(str::is_empty) && record.len() == 1;
                    let comment = text[byte..].trim_start().starts_with('#');
                    (!blank && !comment)
                        .then(|| Ok((line, record.iter().map(str::to_string).collect())))
                }
                Err(e) => Some(Err(e)),
            });
        let next = |records: &mut dyn Iterator<Item = Result<(usize, Vec<String>), csv::Error>>| {
            records.next().transpose().map_err(|e| {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                anyhow::anyhow!("{file} line {line}: not readable as CSV: {e}")
            })
        };
        let (header_line, columns) = next(&mut records)?.ok_or_else(|| {
            anyhow::anyhow!("{file}: the file is empty (expected the header {expected})")
        })?;
        let mut index = HashMap::new();
        for (i, column) in columns.iter().enumerate() {
            let name = column.to_ascii_lowercase();
            if !required.contains(&name.as_str()) && !optional.contains(&name.as_str()) {
                anyhow::bail!("{file} line {header_line}: unknown column {column:?} (the header is {expected})");
            }
            if index.insert(name, i).is_some() {
                anyhow::bail!("{file} line {header_line}: column {column:?} appears twice");
            }
        }
        if let Some(missing) = required.iter().find(|c| !index.contains_key(**c)) {
            anyhow::bail!(
                "{file} line {header_line}: missing column {missing:?} (the header is {expected})"
            );
        }
        let mut rows = Vec::new();
        while let Some((line, fields)) = next(&mut records)? {
            if fields.len() != columns.len() {
                anyhow::bail!(
                    "{file} row {} (line {line}): {} fields, but the header has {}",
                    rows.len() + 1,
                    fields.len(),
                    columns.len()
                );
            }
            rows.push((line, fields));
        }
        Ok(Table { index, rows })
    }

    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().enumerate().map(|(i, (line, fields))| Row {
            row: i + 1,
            line: *line,
            fields: fields.clone(),
            index: &self.index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_file_line_and_column() {
        let table = Table::parse("t.csv", "# c\na,b\n1,\"x,y\"\n", &["a"], &["b"]).unwrap();
        let rows: Vec<_> = table.rows().collect();
        assert_eq!((rows[0].get("a"), rows[0].get("b")), ("1", "x,y"));
        assert_eq!(rows[0].line, 3);
        let err = rows[0].error("t.csv", "a", "bad").to_string();
        assert_eq!(err, "t.csv row 1 (line 3), field a: bad");
        assert!(Table::parse("t.csv", "a,c\n", &["a"], &[])
            .unwrap_err()
            .to_string()
            .contains("unknown column \"c\""));
        assert!(Table::parse("t.csv", "b\n", &["a"], &["b"])
            .unwrap_err()
            .to_string()
            .contains("missing column \"a\""));
        assert!(Table::parse("t.csv", "a\n1,2\n", &["a"], &[])
            .unwrap_err()
            .to_string()
            .contains("2 fields"));
    }

    #[test]
    fn a_quoted_newline_stays_in_its_field() {
        let text = "\u{feff}a,b\n  # indented comment\n\n1,\"two\nlines\"\n3,4\n";
        let table = Table::parse("t.csv", text, &["a", "b"], &[]).unwrap();
        let rows: Vec<_> = table.rows().collect();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].get("a"), rows[0].get("b")), ("1", "two\nlines"));
        assert_eq!((rows[0].row, rows[0].line), (1, 4));
        assert_eq!((rows[1].get("a"), rows[1].row, rows[1].line), ("3", 2, 6));
        assert_eq!(
            rows[1].error("t.csv", "b", "bad").to_string(),
            "t.csv row 2 (line 6), field b: bad"
        );
    }
}
