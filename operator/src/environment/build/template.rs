//! The language of `spec.sync.templates`: small and strict, so that what a template does is
//! plain from reading it and nothing in it can run away.
//!
//! Text is copied as it is; `{{ … }}` is an action: one or more operands, each `.KEY` (the
//! value of the coffer-server key `KEY`) or a `"quoted string"` (escapes `\"`, `\\`, `\n`,
//! `\t`), concatenated, then optionally piped through functions: `b64enc`, `b64dec`, `toJson`
//! (the text as a JSON string literal, quotes included). Whitespace inside the braces is free.
//! Errors give byte offsets and the names in the template, never a value.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret as _, SecretString};
use zeroize::Zeroizing;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Action {
        operands: Vec<Operand>,
        functions: Vec<(usize, Function)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operand {
    /// `.KEY`, at this byte offset.
    Key {
        offset: usize,
        name: String,
    },
    Literal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    B64Enc,
    B64Dec,
    ToJson,
}

impl Function {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "b64enc" => Some(Self::B64Enc),
            "b64dec" => Some(Self::B64Dec),
            "toJson" => Some(Self::ToJson),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::B64Enc => "b64enc",
            Self::B64Dec => "b64dec",
            Self::ToJson => "toJson",
        }
    }
}

/// A template that cannot be parsed: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset in the template.
    pub offset: usize,
    pub problem: String,
}

/// A template that cannot be rendered with the values at hand. Holds no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// `.name` at `offset` names no key of the environment.
    UnknownKey { offset: usize, name: String },
    /// `function` at `offset` cannot take its input (not base64, not UTF-8 text).
    BadInput {
        offset: usize,
        function: &'static str,
        problem: &'static str,
    },
    /// The output, or a value computed on the way, would exceed the bytes allowed.
    TooLarge,
}

/// Whether `name` can be the name of a coffer-server key: `[A-Za-z_][A-Za-z0-9_.-]*`.
pub fn is_coffer_key(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses `text`.
pub fn parse(text: &str) -> Result<Template, SyntaxError> {
    let mut parts = Vec::new();
    let mut rest = 0;
    while let Some(found) = text[rest..].find("{{") {
        let open = rest + found;
        if open > rest {
            parts.push(Part::Text(text[rest..open].to_owned()));
        }
        let (part, end) = parse_action(text, open)?;
        parts.push(part);
        rest = end;
    }
    if rest < text.len() {
        parts.push(Part::Text(text[rest..].to_owned()));
    }
    Ok(Template { parts })
}

/// Parses the action that opens at `open` (`{{`); returns it and the offset after its `}}`.
fn parse_action(text: &str, open: usize) -> Result<(Part, usize), SyntaxError> {
    let bytes = text.as_bytes();
    let error = |offset: usize, problem: String| SyntaxError { offset, problem };
    let mut at = open + 2;
    let mut operands = Vec::new();
    let mut functions = Vec::new();
    loop {
        while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        match bytes.get(at) {
            None => return Err(error(open, "`{{` is not closed by `}}`".to_owned())),
            Some(b'}') if bytes.get(at + 1) == Some(&b'}') => {
                if operands.is_empty() {
                    return Err(error(
                        open,
                        "empty action: expected `.KEY` or a string".into(),
                    ));
                }
                let part = Part::Action {
                    operands,
                    functions,
                };
                return Ok((part, at + 2));
            }
            Some(b'|') => {
                if operands.is_empty() {
                    return Err(error(at, "`|` needs a value before it".to_owned()));
                }
                at += 1;
                while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
                    at += 1;
                }
                let start = at;
                while bytes.get(at).is_some_and(u8::is_ascii_alphanumeric) {
                    at += 1;
                }
                let name = &text[start..at];
                let Some(function) = Function::parse(name) else {
                    let problem = if name.is_empty() {
                        "expected a function name after `|`".to_owned()
                    } else {
                        format!("unknown function `{name}` (known: b64enc, b64dec, toJson)")
                    };
                    return Err(error(start, problem));
                };
                functions.push((start, function));
            }
            Some(_) if !functions.is_empty() => {
                return Err(error(
                    at,
                    "expected `|` or `}}` after a function".to_owned(),
                ));
            }
            Some(b'.') => {
                let start = at;
                at += 1;
                while bytes
                    .get(at)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                {
                    at += 1;
                }
                let name = &text[start + 1..at];
                if !is_coffer_key(name) {
                    return Err(error(
                        start,
                        "expected a key name after `.` (a letter or `_`, then letters, digits, \
                         `_`, `.` or `-`)"
                            .to_owned(),
                    ));
                }
                operands.push(Operand::Key {
                    offset: start,
                    name: name.to_owned(),
                });
            }
            Some(b'"') => {
                let start = at;
                at += 1;
                let mut literal = String::new();
                loop {
                    let Some(c) = text[at..].chars().next() else {
                        return Err(error(start, "the string is not closed by `\"`".to_owned()));
                    };
                    at += c.len_utf8();
                    match c {
                        '"' => break,
                        '\\' => {
                            let escaped = match bytes.get(at) {
                                Some(b'"') => '"',
                                Some(b'\\') => '\\',
                                Some(b'n') => '\n',
                                Some(b't') => '\t',
                                _ => {
                                    return Err(error(
                                        at - 1,
                                        "unknown escape (use \\\", \\\\, \\n or \\t)".to_owned(),
                                    ));
                                }
                            };
                            literal.push(escaped);
                            at += 1;
                        }
                        c => literal.push(c),
                    }
                }
                operands.push(Operand::Literal(literal));
            }
            Some(_) => {
                let c = text[at..].chars().next().unwrap_or_default();
                return Err(error(
                    at,
                    format!("unexpected {c:?}: expected `.KEY`, a string, `|` or `}}}}`"),
                ));
            }
        }
    }
}

impl Template {
    /// The template with `values` substituted, at most `max` bytes long; no value computed on
    /// the way is longer either, and each is checked before it is made.
    pub fn render(
        &self,
        values: &BTreeMap<String, SecretString>,
        max: usize,
    ) -> Result<Zeroizing<Vec<u8>>, RenderError> {
        let mut out = Zeroizing::new(Vec::new());
        for part in &self.parts {
            match part {
                Part::Text(text) => append(&mut out, text.as_bytes(), max)?,
                Part::Action {
                    operands,
                    functions,
                } => {
                    let mut value = Zeroizing::new(Vec::new());
                    for operand in operands {
                        let bytes = match operand {
                            Operand::Key { offset, name } => values
                                .get(name)
                                .ok_or_else(|| RenderError::UnknownKey {
                                    offset: *offset,
                                    name: name.clone(),
                                })?
                                .expose_secret()
                                .as_bytes(),
                            Operand::Literal(text) => text.as_bytes(),
                        };
                        append(&mut value, bytes, max)?;
                    }
                    for (offset, function) in functions {
                        value = apply(*function, *offset, &value, max)?;
                    }
                    append(&mut out, &value, max)?;
                }
            }
        }
        Ok(out)
    }
}

fn append(out: &mut Vec<u8>, bytes: &[u8], max: usize) -> Result<(), RenderError> {
    if out.len().saturating_add(bytes.len()) > max {
        return Err(RenderError::TooLarge);
    }
    out.extend_from_slice(bytes);
    Ok(())
}

fn apply(
    function: Function,
    offset: usize,
    input: &[u8],
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, RenderError> {
    let bad = |problem| RenderError::BadInput {
        offset,
        function: function.name(),
        problem,
    };
    match function {
        Function::B64Enc => {
            let len = base64::encoded_len(input.len(), true).ok_or(RenderError::TooLarge)?;
            if len > max {
                return Err(RenderError::TooLarge);
            }
            Ok(Zeroizing::new(STANDARD.encode(input).into_bytes()))
        }
        Function::B64Dec => {
            // The decoded form is shorter than its input, which is within `max` already.
            let trimmed = input.trim_ascii();
            let decoded = STANDARD
                .decode(trimmed)
                .map_err(|_| bad("the input is not base64"))?;
            Ok(Zeroizing::new(decoded))
        }
        Function::ToJson => {
            let text =
                std::str::from_utf8(input).map_err(|_| bad("the input is not UTF-8 text"))?;
            let len = 2 + text.chars().map(json_escaped_len).sum::<usize>();
            if len > max {
                return Err(RenderError::TooLarge);
            }
            let mut out = Zeroizing::new(String::with_capacity(len));
            out.push('"');
            for c in text.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c if u32::from(c) < 0x20 => {
                        out.push_str(&format!("\\u{:04x}", u32::from(c)));
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
            Ok(Zeroizing::new(std::mem::take(&mut *out).into_bytes()))
        }
    }
}

fn json_escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretString::from((*v).to_owned())))
            .collect()
    }

    fn render(template: &str, pairs: &[(&str, &str)]) -> Result<String, RenderError> {
        let out = parse(template).unwrap().render(&values(pairs), 1 << 20)?;
        Ok(String::from_utf8(out.to_vec()).unwrap())
    }

    #[test]
    fn keys_are_substituted_with_or_without_spaces_inside_the_braces() {
        let pairs = [("DB_USER", "app"), ("DB_PASSWORD", "pw"), ("tls.crt", "C")];
        assert_eq!(
            render(
                "postgres://{{ .DB_USER }}:{{.DB_PASSWORD}}@db:5432/app",
                &pairs
            )
            .unwrap(),
            "postgres://app:pw@db:5432/app"
        );
        assert_eq!(render("{{\n\t.tls.crt  }}", &pairs).unwrap(), "C");
        assert_eq!(
            render("no actions } { }}", &pairs).unwrap(),
            "no actions } { }}"
        );
        assert_eq!(render("", &pairs).unwrap(), "");
    }

    #[test]
    fn operands_concatenate_and_pipe_through_functions() {
        let pairs = [("USER", "bob"), ("PASS", "p\"w\\")];
        assert_eq!(
            render("{{ .USER \":\" .PASS | b64enc }}", &pairs).unwrap(),
            STANDARD.encode("bob:p\"w\\")
        );
        assert_eq!(
            render("{{ .PASS | toJson }}", &pairs).unwrap(),
            r#""p\"w\\""#
        );
        assert_eq!(
            render("{{ .E | b64dec }}", &[("E", " aGk= \n")]).unwrap(),
            "hi"
        );
        assert_eq!(
            render("{{ .USER | b64enc | b64dec | toJson }}", &pairs).unwrap(),
            "\"bob\""
        );
        assert_eq!(
            render(r#"{{ "{{" }} {{ "a\tb\n" | toJson }}"#, &[]).unwrap(),
            r#"{{ "a\tb\n""#
        );
        let control = render("{{ .C | toJson }}", &[("C", "\u{1}\u{8}é")]).unwrap();
        assert_eq!(control, "\"\\u0001\\bé\"");
        let parsed: String = serde_json::from_str(&control).unwrap();
        assert_eq!(parsed, "\u{1}\u{8}é");
    }

    #[test]
    fn syntax_errors_give_the_offset_and_the_problem() {
        let cases = [
            ("ab {{ .A ", 3, "not closed"),
            ("{{ }}", 0, "empty action"),
            ("{{ .A | nope }}", 8, "unknown function `nope`"),
            ("{{ .A | }}", 8, "expected a function name"),
            ("{{ | b64enc }}", 3, "needs a value"),
            ("{{ .A | b64enc .B }}", 15, "expected `|` or `}}`"),
            ("{{ .1A }}", 3, "expected a key name"),
            ("{{ . }}", 3, "expected a key name"),
            ("{{ A }}", 3, "unexpected 'A'"),
            ("{{ \"abc }}", 3, "not closed by `\"`"),
            ("{{ \"a\\q\" }}", 5, "unknown escape"),
            ("x {{ .A }} {{ .B", 11, "not closed"),
        ];
        for (template, offset, problem) in cases {
            let e = parse(template).unwrap_err();
            assert_eq!(e.offset, offset, "{template}: {e:?}");
            assert!(e.problem.contains(problem), "{template}: {e:?}");
        }
    }

    #[test]
    fn render_errors_name_the_reference_or_function_and_never_a_value() {
        let pairs = [("A", "s3cr3t-value"), ("BIN", "\u{0}")];
        assert_eq!(
            render("x{{ .A }}{{ .MISSING }}", &pairs),
            Err(RenderError::UnknownKey {
                offset: 12,
                name: "MISSING".into()
            })
        );
        let e = render("{{ .A | b64dec }}", &pairs).unwrap_err();
        assert_eq!(
            e,
            RenderError::BadInput {
                offset: 8,
                function: "b64dec",
                problem: "the input is not base64"
            }
        );
        assert!(!format!("{e:?}").contains("s3cr3t"));
        // /w== decodes to the byte 0xff: not UTF-8 text.
        assert_eq!(
            render("{{ \"/w==\" | b64dec | toJson }}", &pairs),
            Err(RenderError::BadInput {
                offset: 21,
                function: "toJson",
                problem: "the input is not UTF-8 text"
            })
        );
    }

    #[test]
    fn output_and_intermediate_values_are_bounded_before_they_are_made() {
        let t = |s: &str| parse(s).unwrap();
        let v = values(&[("A", "0123456789")]);
        assert_eq!(t("{{ .A }}").render(&v, 10).unwrap().len(), 10);
        assert_eq!(t("{{ .A }}!").render(&v, 10), Err(RenderError::TooLarge));
        // b64enc makes 16 bytes of 10
        assert_eq!(
            t("{{ .A | b64enc }}").render(&v, 15),
            Err(RenderError::TooLarge)
        );
        assert_eq!(t("{{ .A | b64enc }}").render(&v, 16).unwrap().len(), 16);
        // the concatenation is bounded even when a later function would shrink it
        assert_eq!(
            t("{{ .A .A | b64enc | b64dec }}").render(&v, 19),
            Err(RenderError::TooLarge)
        );
        assert_eq!(
            t("{{ .A | toJson }}").render(&v, 11),
            Err(RenderError::TooLarge)
        );
        assert_eq!(t("{{ .A | toJson }}").render(&v, 12).unwrap().len(), 12);
        let quotes = values(&[("Q", "\"\"\"")]);
        assert_eq!(
            t("{{ .Q | toJson }}").render(&quotes, 7),
            Err(RenderError::TooLarge)
        );
        assert_eq!(t("{{ .Q | toJson }}").render(&quotes, 8).unwrap().len(), 8);
    }
}
