//! Import and export of an environment's secrets as dotenv, JSON or YAML files.
//!
//! [`parse`] returns the entries in file order with the line each one starts on, so that the
//! caller can validate key names and point at the offending line. Values are secrets: a
//! [`ParseError`] never quotes input text other than key names, and [`Entry`] redacts its value
//! in `Debug`.
//!
//! Files come from any user, so reading one costs no more than its size: every value is
//! checked against a size limit as soon as it is read (the first one over it ends the read),
//! and YAML anchors and aliases, which let a small file stand for huge values, are refused.
//! The decoded values together are at most half as large again as the file (YAML's `\L` and
//! `\P` escapes are the only ones that grow, two bytes of the file for three of the value).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::str::FromStr;

use saphyr_parser::{Event, Parser, ScalarStyle, StrInput, Tag};
use secrecy::SecretString;
use serde::de::IgnoredAny;
use zeroize::Zeroizing;

/// A file format for importing and exporting an environment's secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `KEY="value"` lines, as read by docker compose, python-dotenv and dotenvy (without
    /// variable expansion: values are taken literally).
    Dotenv,
    /// A JSON object of `"KEY": "value"` pairs.
    Json,
    /// A YAML mapping of `KEY: value` pairs.
    Yaml,
}

impl Format {
    /// Every format, in the order they are documented.
    pub const ALL: [Format; 3] = [Format::Dotenv, Format::Json, Format::Yaml];

    /// The canonical name, as accepted by [`FromStr`] and shown by [`fmt::Display`].
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Dotenv => "dotenv",
            Format::Json => "json",
            Format::Yaml => "yaml",
        }
    }

    /// The `Content-Type` of an exported file.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Dotenv => "text/plain; charset=utf-8",
            Format::Json => "application/json",
            Format::Yaml => "application/yaml",
        }
    }

    /// The usual file name extension (without the dot), for `Content-Disposition`.
    pub fn file_extension(self) -> &'static str {
        match self {
            Format::Dotenv => "env",
            Format::Json => "json",
            Format::Yaml => "yaml",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = UnknownFormat;

    /// Accepts `dotenv` or `env`, `json`, `yaml` or `yml`, in any ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "dotenv" | "env" => Ok(Format::Dotenv),
            "json" => Ok(Format::Json),
            "yaml" | "yml" => Ok(Format::Yaml),
            _ => Err(UnknownFormat { name: s.to_owned() }),
        }
    }
}

/// A format name that [`Format::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format `{name}`; expected `dotenv`, `json` or `yaml`")]
pub struct UnknownFormat {
    pub name: String,
}

/// One secret read from a file.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key as written; only checked to be non-empty and unique within the file.
    pub key: String,
    pub value: SecretString,
    /// The 1-based line where the entry starts, when known.
    pub line: Option<usize>,
}

/// Why a file could not be read. The message names keys and positions, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: Option<usize>,
    pub message: String,
}

impl ParseError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        Self {
            line: Some(line),
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ParseError {}

/// Reads the entries of a file, in file order. A leading UTF-8 byte order mark is ignored.
///
/// A value longer than `max_value_bytes` (in UTF-8, once unescaped) is an error naming its key
/// and line; reading stops there, before any later entry is read.
pub fn parse(
    format: Format,
    input: &str,
    max_value_bytes: usize,
) -> Result<Vec<Entry>, ParseError> {
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    match format {
        Format::Dotenv => parse_dotenv(input, max_value_bytes),
        Format::Json => parse_json(input, max_value_bytes),
        Format::Yaml => parse_yaml(input, max_value_bytes),
    }
}

/// Writes `(key, value)` pairs in the given order. Every value is quoted, so that
/// `parse(format, &render(format, entries))` gives back exactly the same pairs.
pub fn render(format: Format, entries: &[(&str, &str)]) -> String {
    let size: usize = entries.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    // Sized up front: every reallocation would leave a copy of the values in freed memory.
    let mut out = String::with_capacity(size + size / 8 + 4);
    match format {
        Format::Dotenv => {
            for (key, value) in entries {
                out.push_str(key);
                out.push_str("=\"");
                escape_dotenv(&mut out, value);
                out.push_str("\"\n");
            }
        }
        Format::Json if entries.is_empty() => out.push_str("{}\n"),
        Format::Json => {
            out.push_str("{\n");
            for (i, (key, value)) in entries.iter().enumerate() {
                out.push_str("  ");
                escape_json(&mut out, key);
                out.push_str(": ");
                escape_json(&mut out, value);
                out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
            }
            out.push_str("}\n");
        }
        Format::Yaml if entries.is_empty() => out.push_str("{}\n"),
        Format::Yaml => {
            for (key, value) in entries {
                if is_plain_yaml_key(key) {
                    out.push_str(key);
                } else {
                    escape_yaml(&mut out, key);
                }
                out.push_str(": ");
                escape_yaml(&mut out, value);
                out.push('\n');
            }
        }
    }
    out
}

/// Copies a value into a `SecretString` of exactly its size (converting a `String` instead
/// could reallocate and leave a copy behind); intermediate buffers are `Zeroizing`.
fn secret(value: &str) -> SecretString {
    SecretString::from(value)
}

/// Like [`secret`], wiping the parser's own copy when it made one.
fn secret_from_cow(value: Cow<'_, str>) -> SecretString {
    match value {
        Cow::Borrowed(value) => secret(value),
        Cow::Owned(value) => secret(&Zeroizing::new(value)),
    }
}

/// Refuses a value of more than `max` bytes, before it is copied anywhere.
fn check_value_size(key: &str, line: usize, len: usize, max: usize) -> Result<(), ParseError> {
    if len <= max {
        return Ok(());
    }
    let limit = if max >= 1024 && max.is_multiple_of(1024) {
        format!("{} KiB", max / 1024)
    } else {
        format!("{max} bytes")
    };
    Err(ParseError::at(
        line,
        format!("the value of `{key}` is over {limit}"),
    ))
}

/// Rejects empty keys and a key seen before (naming the second occurrence's line).
fn check_keys(entries: &[Entry]) -> Result<(), ParseError> {
    let mut seen: HashMap<&str, Option<usize>> = HashMap::with_capacity(entries.len());
    for entry in entries {
        if entry.key.is_empty() {
            return Err(ParseError {
                line: entry.line,
                message: "empty key".to_owned(),
            });
        }
        if let Some(first) = seen.insert(&entry.key, entry.line) {
            return Err(ParseError {
                line: entry.line,
                message: duplicate_key_message(&entry.key, first),
            });
        }
    }
    Ok(())
}

fn duplicate_key_message(key: &str, first_line: Option<usize>) -> String {
    match first_line {
        Some(first) => format!("duplicate key `{key}` (first defined on line {first})"),
        None => format!("duplicate key `{key}`"),
    }
}

// ---------------------------------------------------------------------------------------------
// dotenv

fn parse_dotenv(input: &str, max_value_bytes: usize) -> Result<Vec<Entry>, ParseError> {
    let mut cursor = DotenvCursor {
        src: input,
        pos: 0,
        line: 1,
        max_value_bytes,
    };
    let mut entries = Vec::new();
    while let Some(entry) = cursor.next_entry()? {
        entries.push(entry);
    }
    check_keys(&entries)?;
    Ok(entries)
}

/// A position in a dotenv file. `pos` only ever stops on ASCII delimiters or the end, so
/// slicing at it is always on a character boundary.
struct DotenvCursor<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
    max_value_bytes: usize,
}

impl DotenvCursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + offset).copied()
    }

    /// Skips spaces and tabs; `\r` too, so that `\r\n` endings look like `\n`.
    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r')) {
            self.pos += 1;
        }
    }

    /// The index of the `\n` ending the current line, or the end of the input.
    fn line_end(&self) -> usize {
        self.src[self.pos..]
            .find('\n')
            .map_or(self.src.len(), |i| self.pos + i)
    }

    fn next_entry(&mut self) -> Result<Option<Entry>, ParseError> {
        loop {
            self.skip_blanks();
            match self.peek() {
                None => return Ok(None),
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                }
                Some(b'#') => self.pos = self.line_end(),
                Some(_) => break,
            }
        }
        let line = self.line;
        let end = self.line_end();
        let text = &self.src[self.pos..end];
        let Some(eq) = text.find('=') else {
            return Err(ParseError::at(line, "expected `KEY=value`"));
        };
        let mut key = text[..eq].trim();
        if let Some(rest) = key.strip_prefix("export")
            && rest.starts_with([' ', '\t'])
        {
            key = rest.trim_start();
        }
        let key = key.to_owned();
        self.pos += eq + 1;
        let value_start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        let max = self.max_value_bytes;
        let check = |value: &str| check_value_size(&key, line, value.len(), max);
        let value = match self.peek() {
            Some(b'\'') => {
                let value = self.single_quoted(line)?;
                check(&value)?;
                secret(&value)
            }
            Some(b'"') => {
                let value = self.double_quoted(line)?;
                check(&value)?;
                secret(&value)
            }
            _ => {
                self.pos = end;
                let value = unquoted(&self.src[value_start..end]);
                check(value)?;
                secret(value)
            }
        };
        Ok(Some(Entry {
            key,
            value,
            line: Some(line),
        }))
    }

    /// `'…'`: everything up to the next `'`, literally, across lines.
    fn single_quoted(&mut self, line: usize) -> Result<Zeroizing<String>, ParseError> {
        self.pos += 1;
        let rest = &self.src[self.pos..];
        let Some(close) = rest.find('\'') else {
            return Err(ParseError::at(line, "unterminated single-quoted value"));
        };
        let raw = &rest[..close];
        let mut value = Zeroizing::new(String::with_capacity(raw.len()));
        for (i, part) in raw.split("\r\n").enumerate() {
            if i > 0 {
                value.push('\n');
            }
            value.push_str(part);
        }
        self.line += raw.bytes().filter(|&b| b == b'\n').count();
        self.pos += close + 1;
        self.after_closing_quote()?;
        Ok(value)
    }

    /// `"…"`: escapes `\n \r \t \" \\ \$`; any other backslash is kept; may span lines.
    fn double_quoted(&mut self, line: usize) -> Result<Zeroizing<String>, ParseError> {
        let unterminated = || ParseError::at(line, "unterminated double-quoted value");
        self.pos += 1;
        let mut value = Zeroizing::new(String::new());
        // Start of the run of plain text not yet copied into `value`.
        let mut run = self.pos;
        loop {
            match self.peek() {
                None => return Err(unterminated()),
                Some(b'"') => {
                    value.push_str(&self.src[run..self.pos]);
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    value.push_str(&self.src[run..self.pos]);
                    let unescaped = match self.peek_at(1) {
                        None => return Err(unterminated()),
                        Some(b'n') => Some('\n'),
                        Some(b'r') => Some('\r'),
                        Some(b't') => Some('\t'),
                        Some(b'"') => Some('"'),
                        Some(b'\\') => Some('\\'),
                        Some(b'$') => Some('$'),
                        Some(_) => None,
                    };
                    match unescaped {
                        Some(c) => {
                            value.push(c);
                            self.pos += 2;
                        }
                        // Kept as written; the next character is read as usual.
                        None => {
                            value.push('\\');
                            self.pos += 1;
                        }
                    }
                    run = self.pos;
                }
                Some(b'\r') if self.peek_at(1) == Some(b'\n') => {
                    value.push_str(&self.src[run..self.pos]);
                    self.pos += 1;
                    run = self.pos;
                }
                Some(b'\n') => {
                    self.line += 1;
                    self.pos += 1;
                }
                Some(_) => self.pos += 1,
            }
        }
        self.after_closing_quote()?;
        Ok(value)
    }

    /// After a closing quote only blanks and a comment may follow on the line.
    fn after_closing_quote(&mut self) -> Result<(), ParseError> {
        self.skip_blanks();
        match self.peek() {
            None | Some(b'\n') => Ok(()),
            Some(b'#') => {
                self.pos = self.line_end();
                Ok(())
            }
            Some(_) => Err(ParseError::at(
                self.line,
                "unexpected text after the closing quote (only a `# comment` may follow)",
            )),
        }
    }
}

/// An unquoted value ends at a `#` preceded by a blank (an inline comment) and is trimmed;
/// `KEY=#fff` keeps its `#`.
fn unquoted(text: &str) -> &str {
    let bytes = text.as_bytes();
    let comment = (1..bytes.len())
        .find(|&i| bytes[i] == b'#' && matches!(bytes[i - 1], b' ' | b'\t'))
        .unwrap_or(bytes.len());
    text[..comment].trim()
}

fn escape_dotenv(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Not needed by our parser, but stops tools that expand variables from doing so.
            '$' => out.push_str("\\$"),
            c => out.push(c),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

/// serde_json checks the syntax; a small scanner over the (then valid) text finds the top-level
/// entries, which gives file order, lines, duplicate keys and numbers exactly as written.
fn parse_json(input: &str, max_value_bytes: usize) -> Result<Vec<Entry>, ParseError> {
    if let Err(err) = serde_json::from_str::<IgnoredAny>(input) {
        // serde_json's message may quote the input: only its position is used.
        let message = match err.classify() {
            serde_json::error::Category::Eof => "JSON ends unexpectedly".to_owned(),
            _ => format!("invalid JSON at column {}", err.column()),
        };
        return Err(ParseError {
            line: Some(err.line()),
            message,
        });
    }
    let mut scan = JsonScanner {
        src: input,
        pos: 0,
        line: 1,
    };
    scan.skip_whitespace();
    if scan.peek() != Some(b'{') {
        return Err(ParseError::at(
            scan.line,
            "expected a JSON object of \"KEY\": value pairs",
        ));
    }
    scan.pos += 1;
    let mut entries = Vec::new();
    loop {
        scan.skip_whitespace();
        match scan.peek() {
            Some(b'}') => break,
            Some(b',') => {
                scan.pos += 1;
                continue;
            }
            Some(b'"') => {}
            _ => return Err(scan.malformed()),
        }
        let line = scan.line;
        let key_token = scan.string()?;
        let key: String = serde_json::from_str(key_token).map_err(|_| scan.malformed())?;
        scan.skip_whitespace();
        if scan.peek() != Some(b':') {
            return Err(scan.malformed());
        }
        scan.pos += 1;
        scan.skip_whitespace();
        let value_line = scan.line;
        let token = scan.value()?;
        let value = match token.as_bytes().first() {
            Some(b'"') => {
                let value: Zeroizing<String> = serde_json::from_str(token)
                    .map(Zeroizing::new)
                    .map_err(|_| ParseError::at(value_line, "invalid JSON string"))?;
                check_value_size(&key, line, value.len(), max_value_bytes)?;
                secret(&value)
            }
            Some(b'n') => return Err(not_scalar(value_line, &key, "null")),
            Some(b'[') => return Err(not_scalar(value_line, &key, "an array")),
            Some(b'{') => return Err(not_scalar(value_line, &key, "an object")),
            // Numbers and booleans: their JSON text, exactly as written.
            _ => {
                check_value_size(&key, line, token.len(), max_value_bytes)?;
                secret(token)
            }
        };
        entries.push(Entry {
            key,
            value,
            line: Some(line),
        });
    }
    check_keys(&entries)?;
    Ok(entries)
}

fn not_scalar(line: usize, key: &str, what: &str) -> ParseError {
    ParseError::at(
        line,
        format!("the value of `{key}` is {what}; expected a string, number or boolean"),
    )
}

/// Walks JSON text that serde_json has already accepted.
struct JsonScanner<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> JsonScanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    /// Only reachable if serde_json and this scanner disagree about the syntax.
    fn malformed(&self) -> ParseError {
        ParseError::at(self.line, "invalid JSON")
    }

    fn skip_whitespace(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b'\n' => self.line += 1,
                b' ' | b'\t' | b'\r' => {}
                _ => break,
            }
            self.pos += 1;
        }
    }

    /// A string token, quotes included. Valid JSON strings hold no raw line breaks.
    fn string(&mut self) -> Result<&'a str, ParseError> {
        let start = self.pos;
        self.pos += 1;
        loop {
            match self.peek() {
                None => return Err(self.malformed()),
                Some(b'\\') => self.pos += 2,
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(&self.src[start..self.pos]);
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// Any value token: a string, a whole array or object, or a literal.
    fn value(&mut self) -> Result<&'a str, ParseError> {
        let start = self.pos;
        match self.peek() {
            None => return Err(self.malformed()),
            Some(b'"') => {
                self.string()?;
            }
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.peek() {
                        None => return Err(self.malformed()),
                        Some(b'"') => {
                            self.string()?;
                            continue;
                        }
                        Some(b'{' | b'[') => depth += 1,
                        Some(b'}' | b']') => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                break;
                            }
                        }
                        Some(b'\n') => self.line += 1,
                        Some(_) => {}
                    }
                    self.pos += 1;
                }
            }
            Some(_) => {
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                        break;
                    }
                    self.pos += 1;
                }
            }
        }
        Ok(&self.src[start..self.pos])
    }
}

fn escape_json(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------------
// YAML

/// What an import needs to know of a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum YamlScalar {
    /// `~`, `null`, an empty plain scalar, or `!!null`.
    Null,
    /// A string: quoted, block, plain text, or tagged `!!str`.
    Str,
    /// A plain (or `!!bool`, `!!int`, `!!float`) boolean or number. Kept as written, so that
    /// `1.10` stays `1.10` and `0x1F` stays `0x1F`.
    NumberOrBool,
    /// A core-schema tag whose text does not read as that type (`!!int abc`).
    Mismatch,
    /// Any tag outside the core schema (`!custom`).
    Tagged,
}

const NOT_A_YAML_MAPPING: &str =
    "expected a mapping of KEY: value pairs with string keys and scalar values";

/// Two reads of the document, event by event: a syntax check that keeps nothing, then the
/// entries. The first anchor or alias, the first value that is not a scalar and the first value
/// over `max_value_bytes` end the second read before any later entry is looked at.
///
/// Anchors and aliases are refused outright. An alias repeats its anchor's value, so a file of
/// a few hundred kilobytes could otherwise stand for gigabytes of values. Without them, the
/// decoded values together are at most half as large again as the file.
fn parse_yaml(input: &str, max_value_bytes: usize) -> Result<Vec<Entry>, ParseError> {
    let mut events = YamlEvents {
        parser: Parser::new_from_str(input),
    };
    // The parser holds one event at a time; an alias is only an id here, never a copy.
    loop {
        match events.next()?.0 {
            Event::StreamEnd => break,
            Event::Scalar(Cow::Owned(text), ..) => drop(Zeroizing::new(text)),
            _ => {}
        }
    }

    let mut events = YamlEvents {
        parser: Parser::new_from_str(input),
    };
    let mut entries = Vec::new();
    let mut documents = 0;
    loop {
        let (event, line) = events.next()?;
        match event {
            Event::StreamEnd => return Ok(entries),
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(ParseError::at(
                        line,
                        "invalid YAML (expected one document holding a mapping)",
                    ));
                }
            }
            Event::MappingStart(anchor, tag) => {
                refuse_anchor(anchor, line)?;
                if tag.is_some_and(|tag| !is_core_tag(&tag, "map")) {
                    return Err(ParseError::at(line, NOT_A_YAML_MAPPING));
                }
                entries = read_yaml_mapping(&mut events, max_value_bytes)?;
            }
            // An empty document, or one holding only `~`, has no entries.
            Event::Scalar(text, style, anchor, tag) => {
                refuse_anchor(anchor, line)?;
                if yaml_scalar(&text, style, tag.as_deref()) != YamlScalar::Null {
                    return Err(ParseError::at(line, NOT_A_YAML_MAPPING));
                }
            }
            Event::SequenceStart(anchor, _) => {
                refuse_anchor(anchor, line)?;
                return Err(ParseError::at(line, NOT_A_YAML_MAPPING));
            }
            Event::Alias(_) => return Err(alias_refused(line)),
            Event::StreamStart
            | Event::DocumentEnd
            | Event::Nothing
            | Event::SequenceEnd
            | Event::MappingEnd => {}
        }
    }
}

/// The entries of the top-level mapping, whose start has just been read.
fn read_yaml_mapping(
    events: &mut YamlEvents<'_>,
    max_value_bytes: usize,
) -> Result<Vec<Entry>, ParseError> {
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let (event, line) = events.next()?;
        let key = match event {
            Event::MappingEnd => return Ok(entries),
            Event::Scalar(text, style, anchor, tag) => {
                refuse_anchor(anchor, line)?;
                yaml_key(text, style, tag.as_deref(), line)?
            }
            Event::Alias(_) => return Err(alias_refused(line)),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                refuse_anchor(anchor, line)?;
                return Err(ParseError::at(line, NOT_A_YAML_MAPPING));
            }
            _ => return Err(ParseError::at(line, "invalid YAML")),
        };
        if !seen.insert(key.clone()) {
            return Err(ParseError::at(line, duplicate_key_message(&key, None)));
        }

        let (event, value_line) = events.next()?;
        let not_scalar = |what: &str| not_scalar(value_line, &key, what);
        let value = match event {
            Event::Scalar(text, style, anchor, tag) => {
                refuse_anchor(anchor, value_line)?;
                match yaml_scalar(&text, style, tag.as_deref()) {
                    YamlScalar::Str | YamlScalar::NumberOrBool => {}
                    YamlScalar::Null => return Err(not_scalar("null")),
                    YamlScalar::Tagged => return Err(not_scalar("a tagged value")),
                    YamlScalar::Mismatch => {
                        return Err(ParseError::at(
                            value_line,
                            format!("the value of `{key}` does not read as the type of its tag"),
                        ));
                    }
                }
                check_value_size(&key, line, text.len(), max_value_bytes)?;
                secret_from_cow(text)
            }
            Event::Alias(_) => return Err(alias_refused(value_line)),
            Event::SequenceStart(anchor, tag) => {
                refuse_anchor(anchor, value_line)?;
                let tagged = tag.is_some_and(|tag| !tag.is_yaml_core_schema());
                return Err(not_scalar(if tagged {
                    "a tagged value"
                } else {
                    "a sequence"
                }));
            }
            Event::MappingStart(anchor, tag) => {
                refuse_anchor(anchor, value_line)?;
                let tagged = tag.is_some_and(|tag| !tag.is_yaml_core_schema());
                return Err(not_scalar(if tagged {
                    "a tagged value"
                } else {
                    "a mapping"
                }));
            }
            _ => return Err(ParseError::at(value_line, "invalid YAML")),
        };
        entries.push(Entry {
            key,
            value,
            line: Some(line),
        });
    }
}

/// The parser's events with the line each starts on. A syntax error keeps only its position:
/// the parser's message may quote the input.
struct YamlEvents<'a> {
    parser: Parser<'a, StrInput<'a>>,
}

impl<'a> YamlEvents<'a> {
    fn next(&mut self) -> Result<(Event<'a>, usize), ParseError> {
        match self.parser.next_event() {
            Some(Ok((event, span))) => Ok((event, span.start.line())),
            Some(Err(err)) => Err(ParseError::at(
                err.marker().line(),
                format!("invalid YAML at column {}", err.marker().col() + 1),
            )),
            // Only after the end of the stream, which the callers never read past.
            None => Err(ParseError {
                line: None,
                message: "invalid YAML".to_owned(),
            }),
        }
    }
}

/// A node carrying an anchor (`&name`) ends the read before its content is used.
fn refuse_anchor(anchor_id: usize, line: usize) -> Result<(), ParseError> {
    if anchor_id == 0 {
        Ok(())
    } else {
        Err(ParseError::at(
            line,
            "YAML anchors (`&name`) are not supported; write each value out in full",
        ))
    }
}

fn alias_refused(line: usize) -> ParseError {
    ParseError::at(
        line,
        "YAML aliases (`*name`) are not supported; write each value out in full",
    )
}

/// A key must be a string: quoted, or plain text that does not read as null, a boolean or a
/// number (which would be another key for most YAML readers).
fn yaml_key(
    text: Cow<'_, str>,
    style: ScalarStyle,
    tag: Option<&Tag>,
    line: usize,
) -> Result<String, ParseError> {
    match yaml_scalar(&text, style, tag) {
        YamlScalar::Str if text.is_empty() => Err(ParseError::at(line, "empty key")),
        YamlScalar::Str => Ok(text.into_owned()),
        YamlScalar::Null => Err(ParseError::at(line, "a key is null")),
        YamlScalar::NumberOrBool => Err(ParseError::at(
            line,
            format!("key `{text}` is not a string; put it in quotes"),
        )),
        YamlScalar::Mismatch | YamlScalar::Tagged => Err(ParseError::at(line, NOT_A_YAML_MAPPING)),
    }
}

fn is_core_tag(tag: &Tag, suffix: &str) -> bool {
    tag.is_yaml_core_schema() && tag.suffix == suffix
}

/// Resolves a scalar as serde_yaml did (YAML 1.2 core schema, with YAML 1.1's `0o`/`0b`
/// integers), which is as much as an import needs: values are kept as written either way.
fn yaml_scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> YamlScalar {
    let Some(tag) = tag else {
        return if style != ScalarStyle::Plain {
            YamlScalar::Str
        } else if text.is_empty() || is_yaml_null(text) {
            YamlScalar::Null
        } else if is_yaml_bool(text) || is_yaml_int(text) || is_yaml_float(text) {
            YamlScalar::NumberOrBool
        } else {
            YamlScalar::Str
        };
    };
    if !tag.is_yaml_core_schema() {
        return YamlScalar::Tagged;
    }
    let (matches, kind) = match tag.suffix.as_str() {
        "null" => (text.is_empty() || is_yaml_null(text), YamlScalar::Null),
        "bool" => (is_yaml_bool(text), YamlScalar::NumberOrBool),
        "int" => (is_yaml_int(text), YamlScalar::NumberOrBool),
        "float" => (is_yaml_float(text), YamlScalar::NumberOrBool),
        // `!!str`, and core tags that mean nothing to an import (`!!binary`…): the text.
        _ => (true, YamlScalar::Str),
    };
    if matches { kind } else { YamlScalar::Mismatch }
}

fn is_yaml_null(text: &str) -> bool {
    matches!(text, "~" | "null" | "Null" | "NULL")
}

fn is_yaml_bool(text: &str) -> bool {
    matches!(text, "true" | "True" | "TRUE" | "false" | "False" | "FALSE")
}

/// Decimal, `0x`, `0o` or `0b` integers with an optional sign; `007` is a string.
fn is_yaml_int(text: &str) -> bool {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let radix_digits = [("0x", 16), ("0o", 8), ("0b", 2)]
        .into_iter()
        .find_map(|(prefix, radix)| unsigned.strip_prefix(prefix).map(|d| (d, radix)));
    let (digits, radix) = radix_digits.unwrap_or((unsigned, 10));
    let leading_zero = radix == 10 && digits.len() > 1 && digits.starts_with('0');
    // The sign of a `-0x…` belongs to the number: `0x-1` and `+-1` are strings.
    !leading_zero
        && !digits.is_empty()
        && digits.chars().all(|c| c.is_digit(radix))
        && (!negative || i128::from_str_radix(&format!("-{digits}"), radix).is_ok())
        && (negative || u128::from_str_radix(digits, radix).is_ok())
}

fn is_yaml_float(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let leading_zero_digits = unsigned.len() > 1
        && unsigned.starts_with('0')
        && unsigned.bytes().all(|b| b.is_ascii_digit());
    !leading_zero_digits
        && !unsigned.starts_with(['+', '-'])
        && unsigned.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Whether a key can be written without quotes and still read back as the same string
/// (also for YAML 1.1 readers, which take `yes`, `on` or `y` as booleans).
fn is_plain_yaml_key(key: &str) -> bool {
    let mut chars = key.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    let special = matches!(
        key.to_ascii_lowercase().as_str(),
        "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
    );
    well_formed && !special
}

/// A YAML double-quoted scalar. Line breaks and every character YAML does not allow raw
/// (or that libyaml takes as a line break) are escaped.
fn escape_yaml(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use secrecy::ExposeSecret;

    use super::*;

    const SECRET: &str = "s3cr3t-VALUE-9f";

    /// Most tests are about syntax and read without a size limit; the limit has tests of its own.
    fn parse(format: Format, input: &str) -> Result<Vec<Entry>, ParseError> {
        super::parse(format, input, usize::MAX)
    }

    /// Like `error`, with a size limit.
    fn error_within(limit: usize, format: Format, input: &str) -> ParseError {
        let Err(err) = super::parse(format, input, limit) else {
            panic!("{format} input should not parse");
        };
        assert!(!err.to_string().contains(SECRET), "{err}");
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        err
    }

    fn pairs(format: Format, input: &str) -> Vec<(String, String)> {
        parse(format, input)
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.value.expose_secret().to_owned()))
            .collect()
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.to_owned(), value.to_owned())
    }

    fn lines(format: Format, input: &str) -> Vec<Option<usize>> {
        parse(format, input)
            .unwrap()
            .into_iter()
            .map(|e| e.line)
            .collect()
    }

    /// Parses input that must fail, and checks the error does not leak [`SECRET`].
    fn error(format: Format, input: &str) -> ParseError {
        let Err(err) = parse(format, input) else {
            panic!("{format} input should not parse");
        };
        assert!(!err.to_string().contains(SECRET), "{err}");
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        err
    }

    #[test]
    fn format_names_parse_case_insensitively_and_display_canonically() {
        for (name, format) in [
            ("dotenv", Format::Dotenv),
            ("env", Format::Dotenv),
            ("json", Format::Json),
            ("yaml", Format::Yaml),
            ("yml", Format::Yaml),
            ("JSON", Format::Json),
        ] {
            assert_eq!(name.parse::<Format>().unwrap(), format);
        }
        for format in Format::ALL {
            assert_eq!(format.to_string().parse::<Format>().unwrap(), format);
        }
        assert_eq!(Format::Dotenv.to_string(), "dotenv");
        assert_eq!(
            "toml".parse::<Format>().unwrap_err().to_string(),
            "unknown format `toml`; expected `dotenv`, `json` or `yaml`"
        );
    }

    #[test]
    fn each_format_has_a_content_type() {
        assert_eq!(Format::Dotenv.content_type(), "text/plain; charset=utf-8");
        assert_eq!(Format::Json.content_type(), "application/json");
        assert_eq!(Format::Yaml.content_type(), "application/yaml");
    }

    #[test]
    fn dotenv_skips_blank_lines_and_comments() {
        let input = "\n# a comment\n   # indented comment\n\nA=1\n\t\n#B=2\nC=3";
        assert_eq!(
            pairs(Format::Dotenv, input),
            [pair("A", "1"), pair("C", "3")]
        );
        assert_eq!(lines(Format::Dotenv, input), [Some(5), Some(8)]);
    }

    #[test]
    fn dotenv_accepts_an_export_prefix_and_spaces_around_the_equals_sign() {
        let input = "export A=1\nexport\tB = 2\n  C  =  3  \nexporter=4\nexport=5\n";
        assert_eq!(
            pairs(Format::Dotenv, input),
            [
                pair("A", "1"),
                pair("B", "2"),
                pair("C", "3"),
                pair("exporter", "4"),
                pair("export", "5")
            ]
        );
    }

    #[test]
    fn an_unquoted_value_is_trimmed_and_ends_at_an_inline_comment() {
        let input = "A=  hello world  \nB=value # comment\nC=a#b\nD=#fff\nE=\nF= # only a comment\nG=x\t# tab comment\nH=it's \"fine\"\n";
        assert_eq!(
            pairs(Format::Dotenv, input),
            [
                pair("A", "hello world"),
                pair("B", "value"),
                pair("C", "a#b"),
                pair("D", "#fff"),
                pair("E", ""),
                pair("F", ""),
                pair("G", "x"),
                pair("H", "it's \"fine\""),
            ]
        );
    }

    #[test]
    fn a_single_quoted_value_is_literal_and_spans_lines() {
        let input = "A='a \\n $HOME \"q\" # not a comment'\nB='line 1\nline 2'  # comment\nC=3\n";
        assert_eq!(
            pairs(Format::Dotenv, input),
            [
                pair("A", "a \\n $HOME \"q\" # not a comment"),
                pair("B", "line 1\nline 2"),
                pair("C", "3"),
            ]
        );
        assert_eq!(lines(Format::Dotenv, input), [Some(1), Some(2), Some(4)]);
    }

    #[test]
    fn a_double_quoted_value_spans_lines_and_unescapes() {
        let input = "A=\"1\\n2\\r3\\t4\\\"5\\\\6\\$7\"\nB=\"first\nsecond\n\"\nC=\" padded \"\n";
        assert_eq!(
            pairs(Format::Dotenv, input),
            [
                pair("A", "1\n2\r3\t4\"5\\6$7"),
                pair("B", "first\nsecond\n"),
                pair("C", " padded "),
            ]
        );
        assert_eq!(lines(Format::Dotenv, input), [Some(1), Some(2), Some(5)]);
    }

    #[test]
    fn an_unknown_escape_is_kept_as_written() {
        assert_eq!(
            pairs(Format::Dotenv, "A=\"\\q \\' \\u00e9 \\\nend\""),
            [pair("A", "\\q \\' \\u00e9 \\\nend")]
        );
    }

    #[test]
    fn only_a_comment_may_follow_a_closing_quote() {
        assert_eq!(
            pairs(Format::Dotenv, "A=\"x\"   # fine\nB='y'\t\n"),
            [pair("A", "x"), pair("B", "y")]
        );
        let err = error(Format::Dotenv, &format!("A=1\nB=\"x\nx\"{SECRET}\n"));
        assert_eq!(err.line, Some(3));
        let err = error(Format::Dotenv, &format!("B='x' {SECRET}"));
        assert_eq!(err.line, Some(1));
        assert!(
            err.to_string()
                .starts_with("line 1: unexpected text after the closing quote")
        );
    }

    #[test]
    fn an_unterminated_quote_names_the_line_where_the_value_started() {
        let err = error(Format::Dotenv, &format!("A=1\n\nB=\"{SECRET}\nC=3\n"));
        assert_eq!(err.line, Some(3));
        assert_eq!(err.to_string(), "line 3: unterminated double-quoted value");
        let err = error(Format::Dotenv, &format!("A='{SECRET}\n"));
        assert_eq!(err.to_string(), "line 1: unterminated single-quoted value");
        let err = error(Format::Dotenv, "A=\"ends with a backslash\\");
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn a_line_without_an_equals_sign_is_an_error_naming_its_line() {
        let err = error(Format::Dotenv, &format!("A=1\n{SECRET}\n"));
        assert_eq!(err.to_string(), "line 2: expected `KEY=value`");
    }

    #[test]
    fn a_bom_and_crlf_line_endings_are_accepted() {
        let input = "\u{feff}# c\r\nA=1\r\nB=\"x\r\ny\"\r\nC='p\r\nq'\r\n\r\nD=4";
        assert_eq!(
            pairs(Format::Dotenv, input),
            [
                pair("A", "1"),
                pair("B", "x\ny"),
                pair("C", "p\nq"),
                pair("D", "4")
            ]
        );
        assert_eq!(
            lines(Format::Dotenv, input),
            [Some(2), Some(3), Some(5), Some(8)]
        );
        assert_eq!(
            pairs(Format::Json, "\u{feff}{\"A\": \"1\"}"),
            [pair("A", "1")]
        );
        assert_eq!(pairs(Format::Yaml, "\u{feff}A: '1'\r\n"), [pair("A", "1")]);
    }

    #[test]
    fn a_missing_key_is_an_error() {
        let err = error(Format::Dotenv, &format!("A=1\n = {SECRET}"));
        assert_eq!(err.to_string(), "line 2: empty key");
        let err = error(Format::Json, &format!("{{\n\"\": \"{SECRET}\"}}"));
        assert_eq!(err.to_string(), "line 2: empty key");
        let err = error(Format::Yaml, &format!("A: 1\n\"\": {SECRET}\n"));
        assert_eq!(err.to_string(), "line 2: empty key");
    }

    #[test]
    fn a_duplicate_key_names_the_key_and_the_second_line() {
        let err = error(Format::Dotenv, &format!("A=1\nB=2\nA={SECRET}\n"));
        assert_eq!(
            err.to_string(),
            "line 3: duplicate key `A` (first defined on line 1)"
        );
        let err = error(
            Format::Json,
            &format!("{{\"A\": \"1\",\n\"A\": \"{SECRET}\"}}"),
        );
        assert_eq!(
            err.to_string(),
            "line 2: duplicate key `A` (first defined on line 1)"
        );
        let err = error(Format::Yaml, &format!("A: 1\nB: 2\nA: {SECRET}\n"));
        assert_eq!(err.to_string(), "line 3: duplicate key `A`");
    }

    #[test]
    fn an_empty_file_has_no_entries() {
        assert!(parse(Format::Dotenv, "").unwrap().is_empty());
        assert!(
            parse(Format::Dotenv, "# only comments\n\n")
                .unwrap()
                .is_empty()
        );
        assert!(parse(Format::Json, " {} ").unwrap().is_empty());
        assert!(parse(Format::Yaml, "").unwrap().is_empty());
        assert!(parse(Format::Yaml, "# only comments\n").unwrap().is_empty());
        assert!(parse(Format::Yaml, "{}").unwrap().is_empty());
    }

    #[test]
    fn json_strings_are_unescaped_and_numbers_and_booleans_kept_as_written() {
        let input = r#"{
            "S": "a\"b\\c\nd\u00e9",
            "I": 5,
            "F": 1.10,
            "E": -1e3,
            "BIG": 123456789012345678901234567890,
            "T": true,
            "N": false
        }"#;
        assert_eq!(
            pairs(Format::Json, input),
            [
                pair("S", "a\"b\\c\ndé"),
                pair("I", "5"),
                pair("F", "1.10"),
                pair("E", "-1e3"),
                pair("BIG", "123456789012345678901234567890"),
                pair("T", "true"),
                pair("N", "false"),
            ]
        );
    }

    #[test]
    fn json_entries_keep_file_order_and_their_lines() {
        let input = "{\n  \"Z\": \"1\",\n  \"A\": {\"nested\": 1} ,\n\n  \"M\"\n  :\n  2\n}";
        let entries = parse(Format::Json, "{\"Z\": 1, \"A\": 2,\n \"M\": \"3\"}").unwrap();
        let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["Z", "A", "M"]);
        assert_eq!(
            lines(Format::Json, "{\"Z\": 1, \"A\": 2,\n \"M\": \"3\"}"),
            [Some(1), Some(1), Some(2)]
        );
        // An object value is an error at the line where it starts.
        assert_eq!(error(Format::Json, input).line, Some(3));
    }

    #[test]
    fn json_null_arrays_and_objects_are_errors_naming_the_key() {
        let err = error(
            Format::Json,
            &format!("{{\"OK\": \"{SECRET}\",\n\"A\": null}}"),
        );
        assert_eq!(
            err.to_string(),
            "line 2: the value of `A` is null; expected a string, number or boolean"
        );
        let err = error(Format::Json, &format!("{{\n\n\"B\": [\"{SECRET}\"]}}"));
        assert_eq!(
            err.to_string(),
            "line 3: the value of `B` is an array; expected a string, number or boolean"
        );
        let err = error(Format::Json, &format!("{{\"C\": {{\"x\": \"{SECRET}\"}}}}"));
        assert!(err.to_string().contains("the value of `C` is an object"));
    }

    #[test]
    fn json_that_is_not_an_object_is_an_error() {
        for input in [
            format!("\"{SECRET}\""),
            format!("[\"{SECRET}\"]"),
            "5".to_owned(),
        ] {
            let err = error(Format::Json, &input);
            assert_eq!(
                err.to_string(),
                "line 1: expected a JSON object of \"KEY\": value pairs"
            );
        }
    }

    #[test]
    fn json_syntax_errors_report_the_position_but_not_the_input() {
        let err = error(
            Format::Json,
            &format!("{{\n\"A\": \"1\",\n\"B\": {SECRET}\n}}"),
        );
        assert_eq!(err.line, Some(3));
        assert!(
            err.to_string()
                .starts_with("line 3: invalid JSON at column")
        );
        let err = error(Format::Json, &format!("{{\"A\": \"{SECRET}"));
        assert_eq!(err.to_string(), "line 1: JSON ends unexpectedly");
        error(Format::Json, &format!("{{\"A\": \"1\"}} {SECRET}"));
        error(Format::Json, &format!("{{\"A\": \"1\"}} \"{SECRET}\""));
        error(Format::Json, "");
    }

    #[test]
    fn yaml_strings_are_kept_and_numbers_and_booleans_taken_as_written() {
        let input = "S: plain text\nQ: \"5\"\nI: 5\nF: 1.10\nH: 0x1F\nT: True\nB: false\n\
                     L: |\n  line 1\n  line 2\nE: ''\n";
        assert_eq!(
            pairs(Format::Yaml, input),
            [
                pair("S", "plain text"),
                pair("Q", "5"),
                pair("I", "5"),
                pair("F", "1.10"),
                pair("H", "0x1F"),
                pair("T", "True"),
                pair("B", "false"),
                pair("L", "line 1\nline 2\n"),
                pair("E", ""),
            ]
        );
    }

    #[test]
    fn yaml_entries_keep_file_order_and_their_lines() {
        let input = "# header\n---\nZ: 1\nA: |\n  x\n  y\n\n\"Q K\": 2\nM: >\n  folded\n...\n";
        let entries = parse(Format::Yaml, input).unwrap();
        let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["Z", "A", "Q K", "M"]);
        assert_eq!(
            lines(Format::Yaml, input),
            [Some(3), Some(4), Some(8), Some(9)]
        );
        // Flow style too: the parser reports where each key is.
        assert_eq!(lines(Format::Yaml, "{A: 1,\n B: 2}"), [Some(1), Some(2)]);
    }

    #[test]
    fn yaml_null_sequences_and_mappings_are_errors_naming_the_key() {
        let err = error(Format::Yaml, &format!("OK: {SECRET}\nA:\n"));
        assert_eq!(
            err.to_string(),
            "line 2: the value of `A` is null; expected a string, number or boolean"
        );
        let err = error(Format::Yaml, &format!("OK: 1\nB: ~\nC: {SECRET}\n"));
        assert!(err.to_string().contains("the value of `B` is null"));
        let err = error(Format::Yaml, &format!("OK: 1\nL:\n  - {SECRET}\n"));
        assert_eq!(err.line, Some(3));
        assert!(err.to_string().contains("the value of `L` is a sequence"));
        let err = error(Format::Yaml, &format!("M: {{x: {SECRET}}}\n"));
        assert_eq!(
            err.to_string(),
            "line 1: the value of `M` is a mapping; expected a string, number or boolean"
        );
        let err = error(Format::Yaml, &format!("T: !custom {SECRET}\n"));
        assert!(
            err.to_string()
                .contains("the value of `T` is a tagged value")
        );
    }

    #[test]
    fn yaml_keys_must_be_strings() {
        let err = error(Format::Yaml, &format!("A: 1\n5: {SECRET}\n"));
        assert_eq!(
            err.to_string(),
            "line 2: key `5` is not a string; put it in quotes"
        );
        let err = error(Format::Yaml, &format!("true: {SECRET}\n"));
        assert!(err.to_string().contains("key `true` is not a string"));
        let err = error(Format::Yaml, &format!("~: {SECRET}\n"));
        assert_eq!(err.to_string(), "line 1: a key is null");
        assert_eq!(pairs(Format::Yaml, "\"5\": x\n"), [pair("5", "x")]);
    }

    #[test]
    fn yaml_that_is_not_a_mapping_is_an_error() {
        for input in [
            format!("- {SECRET}\n"),
            format!("{SECRET}\n"),
            "5".to_owned(),
        ] {
            let err = error(Format::Yaml, &input);
            assert_eq!(
                err.message,
                "expected a mapping of KEY: value pairs with string keys and scalar values"
            );
        }
    }

    #[test]
    fn yaml_syntax_errors_report_the_position_but_not_the_input() {
        let err = error(Format::Yaml, &format!("A: 1\nB: \"{SECRET}\n"));
        assert!(err.message.starts_with("invalid YAML"), "{err}");
        let err = error(Format::Yaml, &format!("A: 1\nB: [{SECRET}\n"));
        assert!(err.message.starts_with("invalid YAML"), "{err}");
        let err = error(Format::Yaml, &format!("A: 1\n  {SECRET}: x\n"));
        assert_eq!(err.line, Some(2));
        let err = error(Format::Yaml, &format!("A: 1\n---\nB: {SECRET}\n"));
        assert!(err.message.starts_with("invalid YAML"), "{err}");
    }

    #[test]
    fn a_value_over_the_limit_is_refused_in_every_format_naming_its_key_and_line() {
        let long = "123456789";
        for (format, input) in [
            (Format::Dotenv, format!("A=12345678\nB={long}\n")),
            (Format::Dotenv, format!("A=12345678\nB='{long}'\n")),
            (Format::Dotenv, format!("A=12345678\nB=\"{long}\"\n")),
            (
                Format::Json,
                format!("{{\"A\": \"12345678\",\n\"B\": \"{long}\"}}"),
            ),
            (Format::Json, format!("{{\"A\": 12345678,\n\"B\": {long}}}")),
            (Format::Yaml, format!("A: '12345678'\nB: {long}\n")),
            (Format::Yaml, format!("A: 12345678\nB: \"{long}\"\n")),
            (Format::Yaml, format!("A: 12345678\nB: |\n  {long}\n")),
        ] {
            let err = error_within(8, format, &input);
            assert_eq!(
                err.to_string(),
                "line 2: the value of `B` is over 8 bytes",
                "{format}: {input}"
            );
        }
        // The message names the key, never the value.
        error_within(8, Format::Dotenv, &format!("A=\"{SECRET}\""));
        error_within(8, Format::Json, &format!("{{\"A\": \"{SECRET}\"}}"));
        error_within(8, Format::Yaml, &format!("A: {SECRET}"));
        // The production limit reads in KiB.
        let err = error_within(
            64 * 1024,
            Format::Dotenv,
            &format!("BIG={}", "x".repeat(64 * 1024 + 1)),
        );
        assert_eq!(err.to_string(), "line 1: the value of `BIG` is over 64 KiB");
    }

    #[test]
    fn the_limit_counts_the_bytes_of_the_value_once_unescaped() {
        // Escaped, the text is longer than the limit; the values are exactly 8 bytes.
        for (format, input) in [
            (Format::Dotenv, "A=\"\\n\\n\\t\\t\\\\\\\\\\$\\$\"\n"),
            (
                Format::Json,
                "{\"A\": \"\\u0041\\u0042\\n\\n\\t\\t\\\\\\\\\"}",
            ),
            (Format::Yaml, "A: \"\\x41\\x42\\n\\n\\t\\t\\\\\\\\\"\n"),
            (Format::Yaml, "A: \"éééé\"\n"),
        ] {
            let entries = super::parse(format, input, 8).unwrap();
            assert_eq!(
                entries[0].value.expose_secret().len(),
                8,
                "{format}: {input}"
            );
        }
        // `é` is two bytes: five of them are over 8.
        let err = error_within(8, Format::Yaml, "A: ééééé\n");
        assert_eq!(err.to_string(), "line 1: the value of `A` is over 8 bytes");
    }

    #[test]
    fn reading_stops_at_the_first_value_over_the_limit() {
        // What follows the oversized value would be an error of its own: it is never reached.
        for (format, input) in [
            (Format::Dotenv, "A=123456789\nB=2\nB=\"unterminated\n"),
            (
                Format::Json,
                "{\"A\": \"123456789\",\n\"B\": [1],\n\"A\": \"1\"}",
            ),
            (Format::Yaml, "A: 123456789\nB: [1]\nA: x\n"),
            (
                Format::Yaml,
                "A: 123456789\nB: &anchor 1\nC: [1]\nD: *anchor\n",
            ),
        ] {
            let err = error_within(8, format, input);
            assert_eq!(
                err.to_string(),
                "line 1: the value of `A` is over 8 bytes",
                "{format}"
            );
        }
    }

    #[test]
    fn yaml_anchors_and_aliases_are_refused_naming_the_line() {
        let err = error(Format::Yaml, &format!("A: 1\nB: &v {SECRET}\nC: *v\n"));
        assert_eq!(
            err.to_string(),
            "line 2: YAML anchors (`&name`) are not supported; write each value out in full"
        );
        // Anchors anywhere: on a key, a mapping, the document, a quoted or empty value.
        for (input, line) in [
            (format!("&k A: {SECRET}\n"), 1),
            (format!("A: 1\nM: &m {{x: {SECRET}}}\n"), 2),
            (format!("&top\nA: {SECRET}\n"), 1),
            (format!("A: 1\nB: &v \"{SECRET}\"\n"), 2),
            ("A: &v\nB: 1\n".to_owned(), 1),
        ] {
            let err = error(Format::Yaml, &input);
            assert_eq!(err.line, Some(line), "{input}");
            assert!(err.message.starts_with("YAML anchors"), "{input}: {err}");
        }
        // An alias of an anchor that was never defined is not valid YAML.
        let err = error(Format::Yaml, "A: 1\nB: *nowhere\n");
        assert!(err.message.starts_with("invalid YAML"), "{err}");
    }

    #[test]
    fn a_yaml_alias_bomb_is_refused_at_its_anchor() {
        // The shape of a file whose aliases would each repeat a large value.
        let mut input = format!("x: &a \"{}\"\n", SECRET.repeat(64));
        for i in 0..2000 {
            input.push_str(&format!("k{i}: *a\n"));
        }
        let err = error_within(64 * 1024, Format::Yaml, &input);
        assert_eq!(err.line, Some(1));
        assert!(err.message.starts_with("YAML anchors"), "{err}");
    }

    #[test]
    fn yaml_core_schema_tags_are_honoured_and_others_refused() {
        assert_eq!(
            pairs(
                Format::Yaml,
                "A: !!str 5\nB: !!int 0x1F\n!!str 7: x\nC: !!binary aGk=\n"
            ),
            [
                pair("A", "5"),
                pair("B", "0x1F"),
                pair("7", "x"),
                pair("C", "aGk=")
            ]
        );
        let err = error(Format::Yaml, &format!("OK: {SECRET}\nC: !!int abc\n"));
        assert_eq!(
            err.to_string(),
            "line 2: the value of `C` does not read as the type of its tag"
        );
        let err = error(Format::Yaml, &format!("N: !!null {SECRET}\n"));
        assert_eq!(err.line, Some(1));
        let err = error(Format::Yaml, &format!("S: !custom [{SECRET}]\n"));
        assert!(
            err.to_string()
                .contains("the value of `S` is a tagged value")
        );
        let err = error(Format::Yaml, "!!int 5: x\n");
        assert_eq!(
            err.to_string(),
            "line 1: key `5` is not a string; put it in quotes"
        );
    }

    #[test]
    fn entry_debug_does_not_show_the_value() {
        let entries = parse(Format::Dotenv, &format!("API_KEY={SECRET}")).unwrap();
        let debug = format!("{entries:?}");
        assert!(debug.contains("API_KEY"), "{debug}");
        assert!(!debug.contains(SECRET), "{debug}");
    }

    fn tricky_values() -> Vec<String> {
        let mut values: Vec<String> = [
            "",
            " ",
            "  leading and trailing  ",
            "plain",
            "\"double\" and 'single' quotes",
            "'",
            "\"",
            "# not a comment",
            "value # with hash",
            "a=b=c",
            "back\\slash\\",
            "\\n is not a newline",
            "$HOME and $",
            "${X} ${env.Y} $${Z}",
            "line 1\nline 2\n",
            "crlf 1\r\ncrlf 2\r\n",
            "\r",
            "tab\there",
            "unicode: é ü 漢字 🔑 \u{2028} \u{85} \u{feff}",
            "control \u{0} \u{1} \u{7f} \u{9f}",
            "true",
            "5",
            "1.10",
            "null",
            "~",
            "- item",
            "key: value",
            "{\"json\": [1, 2]}",
            "-----BEGIN KEY-----\nMIIB\n-----END KEY-----\n",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        values.push("x\"\\$\n".repeat(64 * 1024 / 4));
        values
    }

    fn assert_round_trip(format: Format) {
        let values = tricky_values();
        let keys: Vec<String> = (0..values.len()).map(|i| format!("KEY_{i:02}")).collect();
        let input: Vec<(&str, &str)> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let rendered = render(format, &input);
        let parsed = parse(format, &rendered).unwrap();
        assert_eq!(parsed.len(), input.len());
        for (entry, (key, value)) in parsed.iter().zip(&input) {
            assert_eq!(entry.key, *key);
            assert!(
                entry.value.expose_secret() == *value,
                "{format}: {key} does not round-trip"
            );
        }
    }

    #[test]
    fn dotenv_round_trips_any_value() {
        assert_round_trip(Format::Dotenv);
    }

    #[test]
    fn json_round_trips_any_value() {
        assert_round_trip(Format::Json);
    }

    #[test]
    fn yaml_round_trips_any_value() {
        assert_round_trip(Format::Yaml);
    }

    #[test]
    fn yaml_keys_that_read_as_other_types_are_quoted() {
        let entries = [("null", "a"), ("TRUE", "b"), ("yes", "c"), ("KEY", "d")];
        let rendered = render(Format::Yaml, &entries);
        assert_eq!(
            rendered,
            "\"null\": \"a\"\n\"TRUE\": \"b\"\n\"yes\": \"c\"\nKEY: \"d\"\n"
        );
        let parsed = pairs(Format::Yaml, &rendered);
        assert_eq!(
            parsed,
            [
                pair("null", "a"),
                pair("TRUE", "b"),
                pair("yes", "c"),
                pair("KEY", "d")
            ]
        );
    }

    #[test]
    fn render_writes_each_format_in_the_given_order() {
        let entries = [("B", "two words"), ("A", "$x \"q\"\n")];
        assert_eq!(
            render(Format::Dotenv, &entries),
            "B=\"two words\"\nA=\"\\$x \\\"q\\\"\\n\"\n"
        );
        assert_eq!(
            render(Format::Json, &entries),
            "{\n  \"B\": \"two words\",\n  \"A\": \"$x \\\"q\\\"\\n\"\n}\n"
        );
        assert_eq!(
            render(Format::Yaml, &entries),
            "B: \"two words\"\nA: \"$x \\\"q\\\"\\n\"\n"
        );
        for format in Format::ALL {
            assert!(parse(format, &render(format, &[])).unwrap().is_empty());
        }
    }

    #[test]
    fn rendered_lines_match_parsed_lines() {
        let entries = [("A", "1"), ("B", "2\n3"), ("C", "4")];
        for format in Format::ALL {
            let expected = match format {
                Format::Json => [Some(2), Some(3), Some(4)],
                _ => [Some(1), Some(2), Some(3)],
            };
            assert_eq!(
                lines(format, &render(format, &entries)),
                expected,
                "{format}"
            );
        }
    }
}
