//! Plain tables for a terminal: columns aligned with spaces, a header row, nothing else (no
//! borders or colours), so they read well and `grep`/`awk` still work on them.

/// `rows` under `headers`, each column as wide as its widest cell, two spaces apart; the last
/// column is not padded. Every line ends with a newline.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// A duration in milliseconds as a person reads it: `850ms`, `12.3s`, `3m 05s`, `2h 03m`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let secs = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// An RFC 3339 timestamp as `YYYY-MM-DD HH:MM:SS` in UTC (the text itself if it is not one).
pub fn timestamp(text: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(text).map_or_else(
        |_| text.to_owned(),
        |t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let text = render(
            &["ID", "STATE", "RESULT"],
            &[
                vec!["a".into(), "completed".into(), "passed".into()],
                vec!["bbbb".into(), "queued".into(), "-".into()],
            ],
        );
        assert_eq!(
            text,
            "ID    STATE      RESULT\n\
             a     completed  passed\n\
             bbbb  queued     -\n"
        );
    }

    #[test]
    fn durations_and_times_read_plainly() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_345), "12.3s");
        assert_eq!(duration(185_000), "3m 05s");
        assert_eq!(duration(7_380_000), "2h 03m");
        assert_eq!(
            timestamp("2026-12-04T10:51:17.123456+01:00"),
            "2026-12-04 09:51:17"
        );
        assert_eq!(timestamp("garbage"), "garbage");
    }
}
