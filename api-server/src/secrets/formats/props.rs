//! Property tests of the import parsers: any input reads to entries or a typed error, never a
//! panic, and what [`render`] writes reads back to the same entries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use proptest::prelude::*;
use secrecy::ExposeSecret;

use super::*;

/// Characters that mean something to at least one of the three syntaxes.
const SYNTAX: &[char] = &[
    '"', '\'', '\\', '\n', '\r', '\t', ' ', '#', '=', '$', '{', '}', '[', ']', ':', ',', '-', '?',
    '&', '*', '!', '|', '>', '%', '@', '`', '\u{feff}', '\u{0}', 'e', 'x', 'u', '0', 'L', 'P', 'N',
    '_', '+', '|', '.',
];

fn format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Dotenv), Just(Format::Json), Just(Format::Yaml)]
}

/// Text heavy in quotes, escapes, comment and reference markers, with some of any Unicode.
fn tricky_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                3 => proptest::sample::select(SYNTAX),
                1 => any::<char>(),
            ],
            0..24
        )
        .prop_map(|chars| chars.into_iter().collect()),
        Just(String::new()),
        Just("${OTHER}".to_owned()),
        Just("$${literal}".to_owned()),
        Just("a=b # not a comment".to_owned()),
        Just("\"\\n\"".to_owned()),
        Just("null".to_owned()),
        Just("~".to_owned()),
        Just("- item".to_owned()),
        Just("key: value".to_owned()),
    ]
}

/// A key as the API accepts them, now and then one that YAML reads as something else unquoted.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z_][A-Za-z0-9_.-]{0,12}",
        1 => proptest::sample::select(&[
            "null", "Null", "NULL", "true", "False", "yes", "No", "on", "OFF", "y", "n", "nan",
            "inf", "_", "e", "E1", "x.y", "a-", "a.", "_1e5", "True", "Y",
        ][..])
        .prop_map(str::to_owned),
    ]
}

fn entries() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((key(), tricky_text()), 0..8).prop_map(|pairs| {
        let mut seen = HashSet::new();
        pairs
            .into_iter()
            .filter(|(k, _)| seen.insert(k.clone()))
            .collect()
    })
}

/// One edit of a well-formed file, at a character boundary.
#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Duplicate { at: usize, len: usize },
    Truncate { at: usize },
    Replace { at: usize, with: char },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 1..6usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (at, tricky_text()).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (at, 1..40usize).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        at.prop_map(|at| Mutation::Truncate { at }),
        (
            at,
            prop_oneof![proptest::sample::select(SYNTAX), any::<char>()]
        )
            .prop_map(|(at, with)| Mutation::Replace { at, with }),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for m in mutations {
        let n = chars.len();
        let pos = |at: usize| if n == 0 { 0 } else { at % (n + 1) };
        match m {
            Mutation::Delete { at, len } => {
                let start = pos(*at);
                let end = (start + len).min(n);
                chars.drain(start..end);
            }
            Mutation::Insert { at, text } => {
                let start = pos(*at);
                chars.splice(start..start, text.chars());
            }
            Mutation::Duplicate { at, len } => {
                let start = pos(*at);
                let end = (start + len).min(n);
                let copy: Vec<char> = chars[start..end].to_vec();
                chars.splice(end..end, copy);
            }
            Mutation::Truncate { at } => chars.truncate(pos(*at)),
            Mutation::Replace { at, with } => {
                if n > 0 {
                    chars[at % n] = *with;
                }
            }
        }
    }
    chars.into_iter().collect()
}

/// What every successful read promises, whatever the input: keys non-empty and unique, values
/// within the limit, and the values together at most half as large again as the file.
fn check_read(format: Format, input: &str, limit: usize) {
    match super::parse(format, input, limit) {
        Ok(entries) => {
            let mut keys = HashSet::new();
            let mut total = 0;
            for entry in &entries {
                assert!(!entry.key.is_empty(), "{format}: an empty key was read");
                assert!(
                    keys.insert(entry.key.as_str()),
                    "{format}: key {:?} read twice",
                    entry.key
                );
                let len = entry.value.expose_secret().len();
                assert!(
                    len <= limit,
                    "{format}: a value of {len} bytes passed a limit of {limit}"
                );
                total += len;
            }
            assert!(
                total <= input.len() + input.len() / 2,
                "{format}: {total} bytes of values read from a {}-byte file",
                input.len()
            );
        }
        Err(err) => {
            assert!(
                !err.message.is_empty(),
                "{format}: an error without a message"
            );
            if let Some(line) = err.line {
                let lines = input.split(['\n', '\r']).count().max(1);
                assert!(
                    (1..=lines + 1).contains(&line),
                    "{format}: error on line {line} of {lines}"
                );
            }
        }
    }
}

fn read_back(format: Format, text: &str) -> Vec<(String, String)> {
    super::parse(format, text, usize::MAX)
        .unwrap_or_else(|err| panic!("{format} did not read back what it wrote: {err}\n{text:?}"))
        .into_iter()
        .map(|e| (e.key, e.value.expose_secret().to_owned()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_reads_or_fails_cleanly(format in format(), input in any::<String>()) {
        check_read(format, &input, usize::MAX);
    }

    #[test]
    fn any_syntax_soup_reads_or_fails_cleanly(
        format in format(),
        input in proptest::collection::vec(tricky_text(), 0..12).prop_map(|parts| parts.concat()),
        limit in prop_oneof![Just(usize::MAX), 0..16usize],
    ) {
        check_read(format, &input, limit);
    }

    #[test]
    fn a_written_file_reads_back_the_same(format in format(), entries in entries()) {
        let pairs: Vec<(&str, &str)> =
            entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let text = render(format, &pairs);
        prop_assert_eq!(read_back(format, &text), entries);
    }

    #[test]
    fn a_written_file_reads_back_the_same_with_a_bom(format in format(), entries in entries()) {
        let pairs: Vec<(&str, &str)> =
            entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let text = format!("\u{feff}{}", render(format, &pairs));
        prop_assert_eq!(read_back(format, &text), entries);
    }

    #[test]
    fn a_mutated_file_reads_or_fails_cleanly(
        format in format(),
        entries in entries(),
        mutations in proptest::collection::vec(mutation(), 1..4),
        limit in prop_oneof![3 => Just(usize::MAX), 1 => 0..16usize],
    ) {
        let pairs: Vec<(&str, &str)> =
            entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let text = mutate(&render(format, &pairs), &mutations);
        check_read(format, &text, limit);
    }

    /// A file read with a limit gives what it gives without one, or stops at a value over it.
    #[test]
    fn the_size_limit_only_refuses(
        format in format(),
        entries in entries(),
        limit in 0..24usize,
    ) {
        let pairs: Vec<(&str, &str)> =
            entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let text = render(format, &pairs);
        let longest = entries.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        match super::parse(format, &text, limit) {
            Ok(read) => {
                prop_assert!(longest <= limit);
                prop_assert_eq!(read.len(), entries.len());
            }
            Err(err) => {
                prop_assert!(longest > limit, "{}", err);
                let too_long = entries.iter().find(|(_, v)| v.len() > limit).unwrap();
                prop_assert!(err.message.contains(&too_long.0), "{}", err);
            }
        }
    }
}

/// YAML's `\L` and `\P` escapes are the only ones that grow: two bytes of the file for a
/// three-byte character. Every other escape, in every format, shrinks or keeps its size.
#[test]
fn values_are_at_most_half_as_large_again_as_the_file() {
    let input = format!("a: \"{}\"\n", "\\L\\P".repeat(1000));
    let entries = super::parse(Format::Yaml, &input, usize::MAX).unwrap();
    let value = entries[0].value.expose_secret();
    assert_eq!(value, "\u{2028}\u{2029}".repeat(1000));
    assert!(value.len() > input.len());
    check_read(Format::Yaml, &input, usize::MAX);
    // The size limit is checked on the decoded value.
    let err = super::parse(Format::Yaml, &input, input.len()).unwrap_err();
    assert_eq!(
        err.message,
        format!("the value of `a` is over {} bytes", input.len())
    );
}
