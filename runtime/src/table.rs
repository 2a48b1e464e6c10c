//! Small CSV tables with a header row, as factories hand them over (plans,
//! contract lists): quoted fields, `#` comments and blank lines allowed, and
//! every error naming the file, the line and the column.

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

/// Splits one CSV line; `""` inside quotes is a quote.
pub fn split_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    fields.push(current);
    fields.into_iter().map(|f| f.trim().to_string()).collect()
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
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_start_matches('\u{feff}')))
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let (header_line, header) = lines.next().ok_or_else(|| {
            anyhow::anyhow!("{file}: the file is empty (expected the header {expected})")
        })?;
        let columns = split_line(header);
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
        for (row, (line, text)) in lines.enumerate() {
            let fields = split_line(text);
            if fields.len() != columns.len() {
                anyhow::bail!(
                    "{file} row {} (line {line}): {} fields, but the header has {}",
                    row + 1,
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
}
