//! Everything `coffer` writes for people and scripts: aligned tables and colours on a terminal,
//! tab-separated lines without colour when piped, JSON with `--json`; notes and warnings on
//! stderr. Nothing else writes to stdout.

use std::io::{self, IsTerminal as _, Write as _};

use serde::Serialize;

/// How to write to stdout.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`: one JSON document per command.
    pub json: bool,
    /// stdout is a terminal.
    pub tty: bool,
    /// Colours on stdout.
    pub color: bool,
}

/// A colour (or emphasis) for a table cell or a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Bold,
    Dim,
    Red,
    Green,
    Yellow,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Self::Plain => "",
            Self::Bold => "\x1b[1m",
            Self::Dim => "\x1b[2m",
            Self::Red => "\x1b[31m",
            Self::Green => "\x1b[32m",
            Self::Yellow => "\x1b[33m",
        }
    }
}

/// One cell of a table.
#[derive(Debug, Clone)]
pub struct Cell {
    pub text: String,
    pub style: Style,
}

impl Cell {
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            style: Style::Plain,
        }
    }

    pub fn styled(text: impl Into<String>, style: Style) -> Self {
        Self {
            text: text.into(),
            style,
        }
    }
}

/// Colours are for terminals, and off when `NO_COLOR` is set (to anything but the empty
/// string, as no-color.org says) or the terminal is `dumb`.
fn colors_wanted(tty: bool) -> bool {
    tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

impl Output {
    pub fn new(json: bool) -> Self {
        let tty = io::stdout().is_terminal();
        Self {
            json,
            tty,
            color: colors_wanted(tty),
        }
    }

    /// Writes `value` as pretty JSON and a newline.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> io::Result<()> {
        let mut out = io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::other)?;
        writeln!(out)?;
        out.flush()
    }

    /// A line for people.
    pub fn line(&self, text: &str) -> io::Result<()> {
        self.styled_line(text, Style::Plain)
    }

    /// A line for people, coloured on a terminal.
    pub fn styled_line(&self, text: &str, style: Style) -> io::Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "{}", self.paint(text, style))
    }

    /// Bytes exactly as they are (a secret's value, an exported file); on a terminal a
    /// newline follows when they do not end with one, so the prompt starts on its own line.
    pub fn raw(&self, bytes: &[u8]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(bytes)?;
        if self.tty && !bytes.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// A table: on a terminal, a bold header and columns aligned; piped, one tab-separated
    /// line per row and no header, for `cut` and `awk` (`--json` is the stable format).
    pub fn table(&self, header: &[&str], rows: &[Vec<Cell>]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        if !self.tty {
            for row in rows {
                let line: Vec<&str> = row.iter().map(|c| c.text.as_str()).collect();
                writeln!(out, "{}", line.join("\t"))?;
            }
            return out.flush();
        }
        let columns = header.len();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.text.chars().count());
            }
        }
        let header_cells: Vec<Cell> = header
            .iter()
            .map(|h| Cell::styled(*h, Style::Bold))
            .collect();
        for row in std::iter::once(&header_cells).chain(rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                let last = i + 1 == row.len().min(columns);
                let pad = widths[i].saturating_sub(cell.text.chars().count());
                line.push_str(&self.paint(&cell.text, cell.style));
                if !last {
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        out.flush()
    }

    fn paint(&self, text: &str, style: Style) -> String {
        if self.color && style != Style::Plain {
            format!("{}{text}\x1b[0m", style.code())
        } else {
            text.to_owned()
        }
    }
}

fn stderr_line(label: &str, style: Style, text: &str) {
    let mut err = io::stderr().lock();
    let label = if colors_wanted(io::stderr().is_terminal()) {
        format!("{}{label}\x1b[0m", style.code())
    } else {
        label.to_owned()
    };
    // Nothing sensible is left to do when stderr itself is gone.
    let _ = writeln!(err, "{label}{text}");
}

/// A warning on stderr: something is off, but the command goes on.
pub fn warn(text: &str) {
    stderr_line("warning: ", Style::Yellow, text);
}

/// A note on stderr: what `coffer` is doing, for the person watching.
pub fn note(text: &str) {
    stderr_line("", Style::Dim, text);
}

/// The error a command ended with, on stderr (as JSON with `--json`).
pub fn error(text: &str, code: &str, exit: u8, json: bool) {
    if json {
        let document = serde_json::json!({
            "error": { "code": code, "message": text, "exit_code": exit }
        });
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "{document}");
    } else {
        stderr_line("error: ", Style::Red, text);
    }
}

/// A file size for people: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    #[allow(clippy::cast_precision_loss)] // a size shown to one decimal
    let f = n as f64;
    if f < KIB {
        format!("{n} B")
    } else if f < KIB * KIB {
        format!("{:.1} KiB", f / KIB)
    } else {
        format!("{:.1} MiB", f / (KIB * KIB))
    }
}

/// A time for people, UTC, to the second: `2026-11-30 12:00:05`.
pub fn time(t: coffer_client::ids::Timestamp) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.to_datetime()
        .format(&format)
        .unwrap_or_else(|_| t.millis().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
    }

    #[test]
    fn times_are_shown_in_utc_to_the_second() {
        let t = coffer_client::ids::Timestamp(1_700_000_000_123);
        assert_eq!(time(t), "2023-11-14 22:13:20");
    }
}
