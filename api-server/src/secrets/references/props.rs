//! Property tests of the reference syntax: any value parses to segments or a syntax error,
//! never a panic, and the cheap checks agree with the parser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;

/// Text made mostly of the characters the syntax cares about.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                4 => proptest::sample::select(&['$', '{', '}', '.', '-', '_', 'a', 'Z', '0', 'é', ' '][..]),
                1 => any::<char>(),
            ],
            0..32
        )
        .prop_map(|chars| chars.into_iter().collect()),
    ]
}

fn slug() -> impl Strategy<Value = String> {
    "[a-z0-9-]{1,12}"
}

fn ref_key() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_.-]{0,12}"
}

/// A piece of a value: literal text (not ending in `$`, which would run into a following
/// `${` and make it an escape), or a reference.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Ref(Option<String>, Option<String>, String),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        value()
            .prop_filter("a literal before a reference cannot end in `$`", |t| {
                !t.ends_with('$')
            })
            .prop_map(Piece::Text),
        (ref_key(), slug(), slug(), 0..3u8).prop_map(|(key, env, project, kind)| {
            // `${env.KEY}`'s key has no dot only when it is written with an environment: a
            // dotted key alone would read as `env.KEY`.
            match kind {
                0 if !key.contains('.') => Piece::Ref(None, None, key),
                0 | 1 if !key.contains('.') => Piece::Ref(None, Some(env), key),
                _ => Piece::Ref(Some(project), Some(env), key),
            }
        }),
    ]
}

/// What every parse promises, whatever the value.
fn check_parse(value: &str) {
    match parse(value) {
        Ok(segments) => {
            let mut last_offset = None;
            let mut last_was_literal = false;
            for segment in &segments {
                match segment {
                    Segment::Literal(text) => {
                        assert!(!text.is_empty(), "an empty literal");
                        assert!(!last_was_literal, "two literals side by side");
                        last_was_literal = true;
                    }
                    Segment::Ref(reference) => {
                        assert!(value.is_char_boundary(reference.offset));
                        assert!(value[reference.offset..].starts_with("${"));
                        assert!(last_offset.is_none_or(|last| last < reference.offset));
                        assert!(is_key(&reference.key));
                        assert!(reference.project.is_none() || reference.env.is_some());
                        last_offset = Some(reference.offset);
                        last_was_literal = false;
                    }
                }
            }
            let has_ref = segments.iter().any(|s| matches!(s, Segment::Ref(_)));
            assert_eq!(has_references(value), has_ref, "has_references disagrees");
            if !needs_resolution(value) {
                assert!(!has_ref);
                let text: String = segments
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(t) => t.as_str(),
                        Segment::Ref(_) => unreachable!(),
                    })
                    .collect();
                assert_eq!(text, value, "a value without `${{` changed");
            }
        }
        Err(err) => {
            assert!(value.is_char_boundary(err.offset));
            assert!(value[err.offset..].starts_with("${"), "{err}");
            assert!(
                has_references(value),
                "has_references missed an invalid reference"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_value_parses_or_fails_cleanly(value in value()) {
        check_parse(&value);
    }

    #[test]
    fn written_references_read_back(pieces in proptest::collection::vec(piece(), 0..8)) {
        let mut value = String::new();
        let mut offsets = Vec::new();
        let mut expected: Vec<Piece> = Vec::new();
        for piece in &pieces {
            match piece {
                Piece::Text(text) => {
                    value.push_str(&text.replace("${", "$${"));
                    if let Some(Piece::Text(last)) = expected.last_mut() {
                        last.push_str(text);
                    } else if !text.is_empty() {
                        expected.push(piece.clone());
                    }
                }
                Piece::Ref(project, env, key) => {
                    offsets.push(value.len());
                    value.push_str("${");
                    for part in [project, env].into_iter().flatten() {
                        value.push_str(part);
                        value.push('.');
                    }
                    value.push_str(key);
                    value.push('}');
                    expected.push(piece.clone());
                }
            }
        }
        check_parse(&value);
        let read: Vec<Piece> = parse(&value)
            .unwrap()
            .into_iter()
            .map(|s| match s {
                Segment::Literal(text) => Piece::Text(text.to_string()),
                Segment::Ref(r) => Piece::Ref(r.project, r.env, r.key),
            })
            .collect();
        prop_assert_eq!(read, expected);
        let read_offsets: Vec<usize> = parse(&value)
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                Segment::Ref(r) => Some(r.offset),
                Segment::Literal(_) => None,
            })
            .collect();
        prop_assert_eq!(read_offsets, offsets);
    }
}
