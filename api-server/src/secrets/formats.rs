//! Import and export of an environment's secrets as dotenv, JSON or YAML files.
//!
//! [`parse`] returns the entries in file order with the line each one starts on, so that the
//! caller can validate key names and point at the offending line. Values are secrets: a
//! [`ParseError`] never quotes input text other than key names, and [`Entry`] redacts its value
//! in `Debug`.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::str::FromStr;

use secrecy::SecretString;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
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
pub fn parse(format: Format, input: &str) -> Result<Vec<Entry>, ParseError> {
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    match format {
        Format::Dotenv => parse_dotenv(input),
        Format::Json => parse_json(input),
        Format::Yaml => parse_yaml(input),
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

fn parse_dotenv(input: &str) -> Result<Vec<Entry>, ParseError> {
    let mut cursor = DotenvCursor {
        src: input,
        pos: 0,
        line: 1,
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
        if let Some(rest) = key.strip_prefix("export") {
            if rest.starts_with([' ', '\t']) {
                key = rest.trim_start();
            }
        }
        let key = key.to_owned();
        self.pos += eq + 1;
        let value_start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        let value = match self.peek() {
            Some(b'\'') => secret(&self.single_quoted(line)?),
            Some(b'"') => secret(&self.double_quoted(line)?),
            _ => {
                self.pos = end;
                secret(unquoted(&self.src[value_start..end]))
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
fn parse_json(input: &str) -> Result<Vec<Entry>, ParseError> {
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
                secret(&value)
            }
            Some(b'n') => return Err(not_scalar(value_line, &key, "null")),
            Some(b'[') => return Err(not_scalar(value_line, &key, "an array")),
            Some(b'{') => return Err(not_scalar(value_line, &key, "an object")),
            // Numbers and booleans: their JSON text, exactly as written.
            _ => secret(token),
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

/// A value as first read: strings are kept, numbers and booleans are re-read as written.
enum YamlValue {
    Str(SecretString),
    NumberOrBool,
}

/// Three passes over the document, all through serde_yaml: a syntax check (whose message is
/// dropped, as it may quote the input), a typed read of the top-level mapping, and, only when
/// a value is a number or boolean, a read of those values' text as written (`1.10` stays
/// `1.10`, `0x1F` stays `0x1F`).
fn parse_yaml(input: &str) -> Result<Vec<Entry>, ParseError> {
    if let Err(err) = serde_yaml::from_str::<IgnoredAny>(input) {
        let location = err.location();
        return Err(ParseError {
            line: location.as_ref().map(|l| l.line()),
            message: match location {
                Some(l) => format!("invalid YAML at column {}", l.column()),
                None => "invalid YAML (expected one document holding a mapping)".to_owned(),
            },
        });
    }

    let problem = Cell::new(None);
    let items = YamlDocument { problem: &problem }
        .deserialize(serde_yaml::Deserializer::from_str(input))
        .map_err(|err| ParseError {
            line: err.location().map(|l| l.line()),
            message: problem.take().unwrap_or_else(|| {
                "expected a mapping of KEY: value pairs with string keys and scalar values"
                    .to_owned()
            }),
        })?;

    let wanted: Vec<bool> = items
        .iter()
        .map(|(_, v)| matches!(v, YamlValue::NumberOrBool))
        .collect();
    let mut texts = if wanted.contains(&true) {
        YamlTexts { wanted: &wanted }
            .deserialize(serde_yaml::Deserializer::from_str(input))
            .map_err(|err| ParseError {
                line: err.location().map(|l| l.line()),
                message: "invalid YAML".to_owned(),
            })?
    } else {
        Vec::new()
    }
    .into_iter();

    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    let lines = yaml_key_lines(input, &keys);
    let mut entries = Vec::with_capacity(items.len());
    for (i, (key, value)) in items.into_iter().enumerate() {
        let value = match value {
            YamlValue::Str(value) => value,
            YamlValue::NumberOrBool => texts.next().flatten().ok_or_else(|| ParseError {
                line: None,
                message: "invalid YAML".to_owned(),
            })?,
        };
        let line = lines.as_ref().and_then(|lines| lines.get(i).copied());
        entries.push(Entry { key, value, line });
    }
    Ok(entries)
}

/// The top level: a mapping (or an empty document).
struct YamlDocument<'p> {
    problem: &'p Cell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for YamlDocument<'_> {
    type Value = Vec<(String, YamlValue)>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for YamlDocument<'_> {
    type Value = Vec<(String, YamlValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key_seed(YamlKey {
            problem: self.problem,
            seen: &seen,
        })? {
            let value = map.next_value_seed(YamlScalar {
                problem: self.problem,
                key: &key,
            })?;
            seen.insert(key.clone());
            items.push((key, value));
        }
        Ok(items)
    }
}

/// Errors raised inside a visitor get the position of the YAML node being visited; the
/// message travels beside the error because serde_yaml's own text may quote the input.
fn yaml_problem<E: de::Error>(problem: &Cell<Option<String>>, message: String) -> E {
    problem.set(Some(message));
    E::custom("invalid entry")
}

struct YamlKey<'p> {
    problem: &'p Cell<Option<String>>,
    seen: &'p HashSet<String>,
}

impl<'de> DeserializeSeed<'de> for YamlKey<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl YamlKey<'_> {
    fn not_a_string<E: de::Error>(&self, key: impl fmt::Display) -> E {
        yaml_problem(
            self.problem,
            format!("key `{key}` is not a string; put it in quotes"),
        )
    }
}

impl<'de> Visitor<'de> for YamlKey<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if key.is_empty() {
            Err(yaml_problem(self.problem, "empty key".to_owned()))
        } else if self.seen.contains(key) {
            Err(yaml_problem(self.problem, duplicate_key_message(key, None)))
        } else {
            Ok(key.to_owned())
        }
    }

    fn visit_bool<E: de::Error>(self, key: bool) -> Result<String, E> {
        Err(self.not_a_string(key))
    }

    fn visit_i64<E: de::Error>(self, key: i64) -> Result<String, E> {
        Err(self.not_a_string(key))
    }

    fn visit_u64<E: de::Error>(self, key: u64) -> Result<String, E> {
        Err(self.not_a_string(key))
    }

    fn visit_f64<E: de::Error>(self, key: f64) -> Result<String, E> {
        Err(self.not_a_string(key))
    }

    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(yaml_problem(self.problem, "a key is null".to_owned()))
    }
}

struct YamlScalar<'p> {
    problem: &'p Cell<Option<String>>,
    key: &'p str,
}

impl<'de> DeserializeSeed<'de> for YamlScalar<'_> {
    type Value = YamlValue;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<YamlValue, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl YamlScalar<'_> {
    fn not_scalar<E: de::Error>(&self, what: &str) -> E {
        let key = self.key;
        yaml_problem(
            self.problem,
            format!("the value of `{key}` is {what}; expected a string, number or boolean"),
        )
    }
}

impl<'de> Visitor<'de> for YamlScalar<'_> {
    type Value = YamlValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<YamlValue, E> {
        Ok(YamlValue::Str(secret(value)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<YamlValue, E> {
        Ok(YamlValue::NumberOrBool)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<YamlValue, E> {
        Ok(YamlValue::NumberOrBool)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<YamlValue, E> {
        Ok(YamlValue::NumberOrBool)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<YamlValue, E> {
        Ok(YamlValue::NumberOrBool)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<YamlValue, E> {
        Ok(YamlValue::NumberOrBool)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<YamlValue, E> {
        Ok(YamlValue::NumberOrBool)
    }

    fn visit_unit<E: de::Error>(self) -> Result<YamlValue, E> {
        Err(self.not_scalar("null"))
    }

    fn visit_none<E: de::Error>(self) -> Result<YamlValue, E> {
        Err(self.not_scalar("null"))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<YamlValue, A::Error> {
        Err(self.not_scalar("a sequence"))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<YamlValue, A::Error> {
        Err(self.not_scalar("a mapping"))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<YamlValue, A::Error> {
        Err(self.not_scalar("a tagged value"))
    }
}

/// The second read: the text of the values marked in `wanted` (by position), as written.
struct YamlTexts<'w> {
    wanted: &'w [bool],
}

impl<'de> DeserializeSeed<'de> for YamlTexts<'_> {
    type Value = Vec<Option<SecretString>>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for YamlTexts<'_> {
    type Value = Vec<Option<SecretString>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut texts = Vec::new();
        let mut index = 0;
        while map.next_key::<IgnoredAny>()?.is_some() {
            if self.wanted.get(index).copied().unwrap_or(false) {
                texts.push(Some(map.next_value_seed(YamlText)?));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            index += 1;
        }
        Ok(texts)
    }
}

/// A scalar's text as written (serde_yaml's `deserialize_str` does not resolve plain scalars).
struct YamlText;

impl<'de> DeserializeSeed<'de> for YamlText {
    type Value = SecretString;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for YamlText {
    type Value = SecretString;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<SecretString, E> {
        Ok(secret(value))
    }
}

/// The lines of the top-level keys when the document has the usual layout, where every line
/// starting in column 0 (other than comments, directives and document markers) starts an
/// entry. Any other layout (flow style, explicit keys, anchors on keys) gets no lines.
fn yaml_key_lines(input: &str, keys: &[&str]) -> Option<Vec<usize>> {
    let mut lines = Vec::with_capacity(keys.len());
    for (index, text) in input.lines().enumerate() {
        let starts_entry = text.starts_with(|c: char| !matches!(c, ' ' | '\t' | '#' | '%'))
            && !text.starts_with("---")
            && !text.starts_with("...");
        if !starts_entry {
            continue;
        }
        let key = keys.get(lines.len())?;
        // Quoted keys are taken on trust; plain ones must read as the key serde_yaml found.
        if !text.starts_with(['"', '\'']) && plain_yaml_key(text) != Some(key) {
            return None;
        }
        lines.push(index + 1);
    }
    (lines.len() == keys.len()).then_some(lines)
}

/// The text before the first `:` that is followed by a blank or the end of the line.
fn plain_yaml_key(line: &str) -> Option<&str> {
    line.match_indices(':')
        .map(|(i, _)| i)
        .find(|&i| matches!(line.as_bytes().get(i + 1), None | Some(b' ' | b'\t')))
        .map(|i| line[..i].trim_end())
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use secrecy::ExposeSecret;

    use super::*;

    const SECRET: &str = "s3cr3t-VALUE-9f";

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
        // Flow style: entries without lines rather than wrong ones.
        assert_eq!(lines(Format::Yaml, "{A: 1, B: 2}"), [None, None]);
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
