//! Plain-text tables with aligned columns, for `feral status` and `feral workers`, and
//! the number formats their cells use.

use feral_common::text::printable;

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table built row by row and rendered with two spaces between columns. Headers and cells
/// (class names, job names, hostnames) are kept [`printable`].
#[derive(Debug)]
pub struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[(&str, Align)]) -> Self {
        let headers = headers.iter().map(|(name, align)| (printable(name).into_owned(), *align)).collect();
        Self { headers, rows: Vec::new() }
    }

    /// Adds a row; missing cells render empty, extra cells are ignored.
    pub fn push(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(|cell| printable(&cell).into_owned()).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines, each without trailing spaces, ending with a newline.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = self
            .headers
            .iter()
            .enumerate()
            .map(|(column, (header, _))| {
                let cells = self.rows.iter().filter_map(|row| row.get(column));
                cells.map(|cell| cell.chars().count()).chain([header.chars().count()]).max().unwrap_or(0)
            })
            .collect();
        let header_cells: Vec<String> = self.headers.iter().map(|(header, _)| header.clone()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header_cells).chain(&self.rows) {
            let mut line = String::new();
            for (column, ((_, align), width)) in self.headers.iter().zip(&widths).enumerate() {
                let cell = row.get(column).map(String::as_str).unwrap_or("");
                if column > 0 {
                    line.push_str("  ");
                }
                let padding = " ".repeat(width.saturating_sub(cell.chars().count()));
                match align {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&padding);
                    }
                    Align::Right => {
                        line.push_str(&padding);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A fraction in [0, 1] as a percentage with one decimal.
pub fn percent(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

pub fn f1(value: f64) -> String {
    format!("{value:.3}")
}

/// A count with thousands separated by commas: `41,230`.
pub fn count(value: u64) -> String {
    let mut groups = Vec::new();
    let mut rest = value;
    while rest >= 1000 {
        groups.push(format!("{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.push(rest.to_string());
    groups.reverse();
    groups.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_separate_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(41_230), "41,230");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(1_000_005), "1,000,005", "inner groups keep their zeros");
    }

    #[test]
    fn columns_are_aligned_and_lines_have_no_trailing_spaces() {
        let mut table = Table::new(&[("NAME", Align::Left), ("COUNT", Align::Right), ("NOTE", Align::Left)]);
        table.push(vec!["alpha".into(), "7".into(), "".into()]);
        table.push(vec!["b".into(), "1234567".into(), "long note".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["NAME     COUNT  NOTE", "alpha        7", "b      1234567  long note"]);
        assert!(!table.is_empty());
    }

    #[test]
    fn control_and_bidi_characters_in_headers_and_cells_are_escaped() {
        let mut table = Table::new(&[("\u{1b}[2J", Align::Left), ("惊讶", Align::Right)]);
        table.push(vec!["\u{202e}evil".into(), "é".into()]);
        let text = table.render();
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'), "{text:?}");
        assert_eq!(text, "\\u{1b}[2J     惊讶\n\\u{202e}evil   é\n", "widths count the escapes");
    }

    #[test]
    fn header_only_table_renders_the_header() {
        let table = Table::new(&[("ID", Align::Left), ("STATE", Align::Left)]);
        assert!(table.is_empty());
        assert_eq!(table.render(), "ID  STATE\n");
    }
}
