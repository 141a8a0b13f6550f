//! Medians of repeated runs and the Markdown table the benchmark prints.

use std::fmt::Write as _;

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A table with a header row, printed as Markdown with aligned columns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as Markdown.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let cell = |row: &[String], i: usize| row.get(i).cloned().unwrap_or_default();
        let widths: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([self.header[i].chars().count(), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();
        let mut out = String::new();
        let line = |out: &mut String, row: &[String]| {
            out.push('|');
            for (i, w) in widths.iter().enumerate() {
                let _ = write!(out, " {:<w$} |", cell(row, i));
            }
            out.push('\n');
        };
        line(&mut out, &self.header);
        out.push('|');
        for w in &widths {
            let _ = write!(out, "{}|", "-".repeat(w + 2));
        }
        out.push('\n');
        for r in &self.rows {
            line(&mut out, r);
        }
        out
    }
}

/// `x` with `digits` decimals, or "-".
pub fn fixed(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "-".into(),
    }
}

/// A rate in millions, e.g. "5.71 M".
pub fn mega(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{:.2} M", x / 1e6),
        _ => "-".into(),
    }
}

/// `ours / reference` as "0.93x", or "-".
pub fn ratio(ours: Option<f64>, reference: Option<f64>) -> String {
    match (ours, reference) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(["a", "long name"]);
        t.row(vec!["12345".into(), "x".into()]);
        t.row(vec!["1".into()]);
        assert_eq!(
            t.render(),
            "| a     | long name |\n|-------|-----------|\n| 12345 | x         |\n| 1     |           |\n"
        );
        assert_eq!(ratio(Some(1.0), Some(2.0)), "0.50x");
        assert_eq!(ratio(Some(1.0), None), "-");
        assert_eq!(mega(Some(5_710_000.0)), "5.71 M");
    }
}
