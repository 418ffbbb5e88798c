//! `${…}` references between secrets, resolved when values are read.
//!
//! A value may contain `${KEY}` (a key of the same environment), `${env.KEY}` (another
//! environment of the same project) or `${project.env.KEY}` (another project of the same
//! organization); `$${` writes a literal `${`. Values are stored with their references and
//! resolved on every read, so a change to the referenced secret shows up everywhere at once.
//!
//! The text inside `${…}` is split on dots: none is a key, one is `env.KEY`, two or more are
//! `project.env.KEY` with the key being everything after the second dot (so a key containing
//! dots can be referenced fully qualified).
//!
//! Reference text and places (slugs and keys) are not secret and appear in errors; the values
//! around and behind references never do.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// How many references deep a value may reach (`A` → `B` is one level).
pub const MAX_DEPTH: usize = 8;

const MAX_SLUG_LEN: usize = 63;
const MAX_KEY_LEN: usize = 256;
/// The longest reference text quoted in an error: the longest valid `${project.env.KEY}`.
const MAX_QUOTED_LEN: usize = 2 * MAX_SLUG_LEN + MAX_KEY_LEN + 5;

/// A fully qualified place of a secret (slugs, not ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Place {
    pub project: String,
    pub env: String,
    pub key: String,
}

impl Place {
    pub fn new(project: impl Into<String>, env: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            project: project.into(),
            env: env.into(),
            key: key.into(),
        }
    }

    fn same_env(&self, project: &str, env: &str) -> bool {
        self.project == project && self.env == env
    }
}

/// `project/env/KEY`.
impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.project, self.env, self.key)
    }
}

/// A piece of a parsed value.
pub enum Segment {
    /// Text taken as is (with `$${` already turned into `${`). Part of a secret: redacted in
    /// `Debug` and zeroized on drop.
    Literal(Zeroizing<String>),
    Ref(Reference),
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Literal(_) => f.write_str("Literal([REDACTED])"),
            Segment::Ref(reference) => f.debug_tuple("Ref").field(reference).finish(),
        }
    }
}

/// One `${…}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The text inside `${}`.
    pub raw: String,
    /// Set for `${project.env.KEY}`.
    pub project: Option<String>,
    /// Set for `${env.KEY}` and `${project.env.KEY}`.
    pub env: Option<String>,
    pub key: String,
}

impl Reference {
    /// The place referred to, when the reference is written in a value at `origin`.
    pub fn place(&self, origin: &Place) -> Place {
        Place {
            project: self.project.as_ref().unwrap_or(&origin.project).clone(),
            env: self.env.as_ref().unwrap_or(&origin.env).clone(),
            key: self.key.clone(),
        }
    }
}

/// `${raw}`, as written.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${{{}}}", self.raw)
    }
}

/// Why a lookup of another environment's value failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The caller may not read that place.
    #[error("forbidden")]
    Forbidden,
    /// A storage or decryption failure; the text holds no secrets.
    #[error("{0}")]
    Internal(String),
}

/// What the resolver needs from storage: the raw (unresolved) value at a place, after checking
/// that the caller may read it. `Ok(None)` when there is no such secret.
pub trait Lookup {
    fn raw_value(
        &mut self,
        place: &Place,
    ) -> impl Future<Output = Result<Option<SecretString>, LookupError>> + Send;
}

/// Why a value's references could not be resolved. Names references (as written, `${…}`
/// included) and places, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("invalid reference `{reference}`: {message}")]
    Syntax { reference: String, message: String },
    #[error("`{reference}` in {from} refers to a secret that does not exist")]
    NotFound { reference: String, from: Place },
    #[error("`{reference}` in {from} refers to a secret you may not read")]
    Forbidden { reference: String, from: Place },
    #[error("reference cycle: {}", CyclePath(path))]
    Cycle { path: Vec<Place> },
    #[error("references from {from} are nested more than {max_depth} levels deep")]
    TooDeep { max_depth: usize, from: Place },
    #[error("could not read a referenced secret: {0}")]
    Lookup(String),
}

/// `dev/A -> dev/B -> dev/A`, with the project shown only when the cycle leaves it.
struct CyclePath<'a>(&'a [Place]);

impl fmt::Display for CyclePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one_project = self.0.windows(2).all(|w| w[0].project == w[1].project);
        for (i, place) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" -> ")?;
            }
            if one_project {
                write!(f, "{}/{}", place.env, place.key)?;
            } else {
                write!(f, "{place}")?;
            }
        }
        Ok(())
    }
}

/// Whether `value` holds a `${` that is not escaped as `$${`: a cheap check before [`parse`]
/// (which then finds a reference or a syntax error).
pub fn has_references(value: &str) -> bool {
    value
        .match_indices("${")
        .any(|(i, _)| i == 0 || value.as_bytes()[i - 1] != b'$')
}

/// Splits a value into literal text and references, checking every reference's syntax.
/// Adjacent literal text is merged; an empty value gives no segments.
pub fn parse(value: &str) -> Result<Vec<Segment>, RefError> {
    let mut segments = Vec::new();
    let mut literal = Zeroizing::new(String::new());
    let mut rest = value;
    while let Some(dollar) = rest.find('$') {
        literal.push_str(&rest[..dollar]);
        let from_dollar = &rest[dollar..];
        if let Some(after) = from_dollar.strip_prefix("$${") {
            literal.push_str("${");
            rest = after;
        } else if let Some(after) = from_dollar.strip_prefix("${") {
            let Some(close) = after.find('}') else {
                return Err(RefError::Syntax {
                    reference: format!("${{{}", quotable(after, false)),
                    message: "missing the closing `}`".to_owned(),
                });
            };
            let reference = parse_reference(&after[..close])?;
            if !literal.is_empty() {
                segments.push(Segment::Literal(Zeroizing::new(std::mem::take(
                    &mut *literal,
                ))));
            }
            segments.push(Segment::Ref(reference));
            rest = &after[close + 1..];
        } else {
            literal.push('$');
            rest = &from_dollar[1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

fn is_reference_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Reference text fit to quote in an error: as written when it is short and on one line (and,
/// after an unterminated `${`, made only of reference characters); otherwise its leading run of
/// reference characters and `…`, so that a stray `${` cannot pull the rest of a value into an
/// error.
fn quotable(text: &str, terminated: bool) -> String {
    let name_len = text
        .find(|c: char| !is_reference_char(c))
        .unwrap_or(text.len());
    let fits = text.len() <= MAX_QUOTED_LEN
        && if terminated {
            !text.contains(char::is_control)
        } else {
            name_len == text.len()
        };
    if fits {
        text.to_owned()
    } else {
        // Reference characters are ASCII, so any cut within them is a character boundary.
        format!("{}…", &text[..name_len.min(MAX_QUOTED_LEN)])
    }
}

/// Parses the text inside `${}`.
fn parse_reference(raw: &str) -> Result<Reference, RefError> {
    let syntax = |message: &str| RefError::Syntax {
        reference: format!("${{{}}}", quotable(raw, true)),
        message: message.to_owned(),
    };
    if raw.is_empty() {
        return Err(syntax("the reference is empty"));
    }
    let (project, env, key) = match raw.split_once('.') {
        None => (None, None, raw),
        Some((env, key)) => match key.split_once('.') {
            None => (None, Some(env), key),
            Some((env2, key)) => (Some(env), Some(env2), key),
        },
    };
    if let Some(project) = project {
        if !is_slug(project) {
            return Err(syntax(
                "the project must be a slug of 1 to 63 lowercase letters, digits or `-`",
            ));
        }
    }
    if let Some(env) = env {
        if !is_slug(env) {
            return Err(syntax(
                "the environment must be a slug of 1 to 63 lowercase letters, digits or `-`",
            ));
        }
    }
    if !is_key(key) {
        return Err(syntax(
            "the key must start with a letter or `_` and hold only letters, digits, `_`, `.` \
             or `-` (at most 256)",
        ));
    }
    Ok(Reference {
        raw: raw.to_owned(),
        project: project.map(str::to_owned),
        env: env.map(str::to_owned),
        key: key.to_owned(),
    })
}

fn is_slug(text: &str) -> bool {
    (1..=MAX_SLUG_LEN).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_key(text: &str) -> bool {
    let mut bytes = text.bytes();
    text.len() <= MAX_KEY_LEN
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Resolves every value of one environment.
///
/// `values` are the environment's raw values by key. References to keys of the same
/// environment are served from `values` (a missing key is [`RefError::NotFound`]); other places
/// come through `lookup`, and their own references are resolved relative to their place (a
/// `${KEY}` inside prod's `DB` means prod's `KEY`). Each place is fetched and resolved at most
/// once per call. The first error fails the whole call.
pub async fn resolve_all<L: Lookup + Send>(
    origin_project: &str,
    origin_env: &str,
    values: &BTreeMap<String, SecretString>,
    lookup: &mut L,
) -> Result<BTreeMap<String, SecretString>, RefError> {
    let mut resolver = Resolver::new(origin_project, origin_env, values, lookup);
    for (key, raw) in values {
        let place = Place::new(origin_project, origin_env, key.as_str());
        resolver.resolve(place, raw.expose_secret()).await?;
    }
    Ok(resolver
        .done
        .into_iter()
        .filter(|(place, _)| place.same_env(origin_project, origin_env))
        .map(|(place, resolved)| (place.key, resolved.value))
        .collect())
}

/// Resolves one value found (or about to be stored) at `place`; `same_env` holds the raw values
/// of `place`'s environment. Same rules as [`resolve_all`].
pub async fn resolve_one<L: Lookup + Send>(
    place: &Place,
    raw: &SecretString,
    same_env: &BTreeMap<String, SecretString>,
    lookup: &mut L,
) -> Result<SecretString, RefError> {
    let mut resolver = Resolver::new(&place.project, &place.env, same_env, lookup);
    resolver.resolve(place.clone(), raw.expose_secret()).await
}

struct Resolved {
    value: SecretString,
    /// The longest chain of references below this value (0 when it has none).
    height: usize,
}

/// A value being resolved: its segments are consumed in order into `out`.
struct Frame {
    place: Place,
    segments: Vec<Segment>,
    next: usize,
    out: Zeroizing<String>,
    height: usize,
}

impl Frame {
    fn new(place: Place, segments: Vec<Segment>) -> Self {
        Self {
            place,
            segments,
            next: 0,
            out: Zeroizing::new(String::new()),
            height: 0,
        }
    }
}

struct Resolver<'a, L> {
    project: &'a str,
    env: &'a str,
    same_env: &'a BTreeMap<String, SecretString>,
    lookup: &'a mut L,
    /// Every place resolved so far in this call.
    done: HashMap<Place, Resolved>,
}

impl<'a, L: Lookup + Send> Resolver<'a, L> {
    fn new(
        project: &'a str,
        env: &'a str,
        same_env: &'a BTreeMap<String, SecretString>,
        lookup: &'a mut L,
    ) -> Self {
        Self {
            project,
            env,
            same_env,
            lookup,
            done: HashMap::new(),
        }
    }

    /// Resolves the value `raw` found at `root`, depth first with an explicit stack: the
    /// stack is the chain of references being followed, which makes a cycle's path and the
    /// depth plain to read off.
    async fn resolve(&mut self, root: Place, raw: &str) -> Result<SecretString, RefError> {
        if let Some(done) = self.done.get(&root) {
            return Ok(done.value.clone());
        }
        let segments = parse_at(&root, raw)?;
        let mut stack = vec![Frame::new(root.clone(), segments)];
        loop {
            let depth = stack.len();
            let Some(frame) = stack.last_mut() else {
                return Err(RefError::Lookup(
                    "reference resolution lost its place".to_owned(),
                ));
            };
            let (target, reference) = match frame.segments.get(frame.next) {
                None => {
                    if let Some(value) = self.finish(&mut stack) {
                        return Ok(value);
                    }
                    continue;
                }
                Some(Segment::Literal(text)) => {
                    frame.out.push_str(text);
                    frame.next += 1;
                    continue;
                }
                Some(Segment::Ref(reference)) => (reference.place(&frame.place), reference),
            };
            if let Some(done) = self.done.get(&target) {
                // Already resolved, but the chain through it still counts towards the depth.
                if depth + done.height > MAX_DEPTH {
                    return Err(too_deep(&root));
                }
                frame.out.push_str(done.value.expose_secret());
                frame.height = frame.height.max(done.height + 1);
                frame.next += 1;
                continue;
            }
            let reference = reference.to_string();
            let from = frame.place.clone();
            if let Some(start) = stack.iter().position(|f| f.place == target) {
                let mut path: Vec<Place> = stack[start..].iter().map(|f| f.place.clone()).collect();
                path.push(target);
                return Err(RefError::Cycle { path });
            }
            if depth > MAX_DEPTH {
                return Err(too_deep(&root));
            }
            let segments = self.fetch(&target, reference, from).await?;
            stack.push(Frame::new(target, segments));
        }
    }

    /// Pops the finished top frame into `done` and hands its value to the frame below; returns
    /// the value when it was the root.
    fn finish(&mut self, stack: &mut Vec<Frame>) -> Option<SecretString> {
        let finished = stack.pop()?;
        let value = SecretString::from(finished.out.as_str());
        let root_value = match stack.last_mut() {
            Some(parent) => {
                parent.out.push_str(value.expose_secret());
                parent.height = parent.height.max(finished.height + 1);
                parent.next += 1;
                None
            }
            None => Some(value.clone()),
        };
        self.done.insert(
            finished.place,
            Resolved {
                value,
                height: finished.height,
            },
        );
        root_value
    }

    /// The parsed raw value at `target`: from `same_env` for the environment being resolved,
    /// else through the lookup.
    async fn fetch(
        &mut self,
        target: &Place,
        reference: String,
        from: Place,
    ) -> Result<Vec<Segment>, RefError> {
        if target.same_env(self.project, self.env) {
            return match self.same_env.get(&target.key) {
                Some(raw) => parse_at(target, raw.expose_secret()),
                None => Err(RefError::NotFound { reference, from }),
            };
        }
        match self.lookup.raw_value(target).await {
            Ok(Some(raw)) => parse_at(target, raw.expose_secret()),
            Ok(None) => Err(RefError::NotFound { reference, from }),
            Err(LookupError::Forbidden) => Err(RefError::Forbidden { reference, from }),
            Err(LookupError::Internal(message)) => Err(RefError::Lookup(message)),
        }
    }
}

/// [`parse`], saying in a syntax error whose value held the reference.
fn parse_at(place: &Place, raw: &str) -> Result<Vec<Segment>, RefError> {
    parse(raw).map_err(|err| match err {
        RefError::Syntax { reference, message } => RefError::Syntax {
            reference,
            message: format!("{message} (in the value of {place})"),
        },
        other => other,
    })
}

fn too_deep(root: &Place) -> RefError {
    RefError::TooDeep {
        max_depth: MAX_DEPTH,
        from: root.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashSet;

    use super::*;

    const SECRET: &str = "s3cr3t-VALUE-9f";

    /// Other environments' raw values; answers Forbidden for chosen places and counts calls.
    #[derive(Default)]
    struct MemLookup {
        values: HashMap<Place, String>,
        forbidden: HashSet<Place>,
        failing: bool,
        calls: HashMap<Place, usize>,
    }

    impl MemLookup {
        fn with(mut self, place: &str, value: &str) -> Self {
            self.values.insert(place_of(place), value.to_owned());
            self
        }

        fn forbid(mut self, place: &str) -> Self {
            self.forbidden.insert(place_of(place));
            self
        }

        fn total_calls(&self) -> usize {
            self.calls.values().sum()
        }
    }

    impl Lookup for MemLookup {
        fn raw_value(
            &mut self,
            place: &Place,
        ) -> impl Future<Output = Result<Option<SecretString>, LookupError>> + Send {
            *self.calls.entry(place.clone()).or_default() += 1;
            let result = if self.failing {
                Err(LookupError::Internal("database unavailable".to_owned()))
            } else if self.forbidden.contains(place) {
                Err(LookupError::Forbidden)
            } else {
                Ok(self
                    .values
                    .get(place)
                    .map(|v| SecretString::from(v.as_str())))
            };
            std::future::ready(result)
        }
    }

    /// `"project/env/KEY"` → a [`Place`].
    fn place_of(text: &str) -> Place {
        let mut parts = text.splitn(3, '/');
        let mut next = || parts.next().unwrap().to_owned();
        Place {
            project: next(),
            env: next(),
            key: next(),
        }
    }

    fn env_values(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretString::from(*v)))
            .collect()
    }

    async fn resolve_dev(
        pairs: &[(&str, &str)],
        lookup: &mut MemLookup,
    ) -> Result<Vec<(String, String)>, RefError> {
        let resolved = resolve_all("app", "dev", &env_values(pairs), lookup).await?;
        Ok(resolved
            .into_iter()
            .map(|(k, v)| (k, v.expose_secret().to_owned()))
            .collect())
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.to_owned(), value.to_owned())
    }

    /// Resolves a dev environment that must fail, checking the error leaks no value.
    async fn resolve_error(pairs: &[(&str, &str)], lookup: &mut MemLookup) -> RefError {
        let err = resolve_dev(pairs, lookup).await.unwrap_err();
        assert_no_value(&err);
        err
    }

    fn assert_no_value(err: &RefError) {
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains("s3cr3t"), "{text}");
        }
    }

    fn syntax_error(value: &str) -> (String, String) {
        let err = parse(value).unwrap_err();
        assert_no_value(&err);
        match err {
            RefError::Syntax { reference, message } => (reference, message),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn plain_values_come_back_unchanged() {
        let values = [
            ("A", SECRET),
            ("B", ""),
            ("C", "$ $$ $HOME {x} $5 } {$}"),
            ("D", "multi\nline 🔑"),
        ];
        let mut lookup = MemLookup::default();
        let expected: Vec<_> = values.iter().map(|(k, v)| pair(k, v)).collect();
        assert_eq!(resolve_dev(&values, &mut lookup).await.unwrap(), expected);
        assert_eq!(lookup.total_calls(), 0);
    }

    #[tokio::test]
    async fn a_doubled_dollar_escapes_a_reference() {
        let mut lookup = MemLookup::default();
        let resolved = resolve_dev(
            &[
                ("A", "$${X}"),
                ("B", "pre $${dev.Y} post $${"),
                ("C", "$$${X}"),
                ("X", "x"),
            ],
            &mut lookup,
        )
        .await
        .unwrap();
        assert_eq!(
            resolved,
            [
                pair("A", "${X}"),
                pair("B", "pre ${dev.Y} post ${"),
                pair("C", "$${X}"),
                pair("X", "x"),
            ]
        );
    }

    #[test]
    fn has_references_ignores_escapes() {
        assert!(has_references("${A}"));
        assert!(has_references("x ${dev.A} y"));
        assert!(has_references("${unterminated"));
        assert!(has_references("$${A} ${B}"));
        assert!(!has_references("$${A}"));
        assert!(!has_references("$$${A}"));
        assert!(!has_references("$A {A} $ {"));
        assert!(!has_references(""));
    }

    #[test]
    fn parse_splits_literals_and_references() {
        let segments = parse("a ${KEY}${dev.K2} b $${c} ${proj.prod.key.with.dots}").unwrap();
        let shapes: Vec<String> = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(text) => format!("lit:{}", text.as_str()),
                Segment::Ref(r) => format!("ref:{:?}/{:?}/{}", r.project, r.env, r.key),
            })
            .collect();
        assert_eq!(
            shapes,
            [
                "lit:a ",
                "ref:None/None/KEY",
                "ref:None/Some(\"dev\")/K2",
                "lit: b ${c} ",
                "ref:Some(\"proj\")/Some(\"prod\")/key.with.dots",
            ]
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn a_reference_takes_project_and_environment_from_its_origin() {
        let origin = place_of("app/dev/A");
        let place = |text: &str| match parse(text).unwrap().pop() {
            Some(Segment::Ref(r)) => r.place(&origin),
            other => panic!("{other:?}"),
        };
        assert_eq!(place("${B}"), place_of("app/dev/B"));
        assert_eq!(place("${prod.B}"), place_of("app/prod/B"));
        assert_eq!(place("${billing.prod.B.c}"), place_of("billing/prod/B.c"));
    }

    #[tokio::test]
    async fn a_same_environment_reference_is_resolved() {
        let mut lookup = MemLookup::default();
        let resolved = resolve_dev(
            &[("URL", "postgres://${USER}@db"), ("USER", "admin")],
            &mut lookup,
        )
        .await
        .unwrap();
        assert_eq!(
            resolved,
            [pair("URL", "postgres://admin@db"), pair("USER", "admin")]
        );
        assert_eq!(lookup.total_calls(), 0);
    }

    #[tokio::test]
    async fn cross_environment_and_cross_project_references_go_through_the_lookup() {
        let mut lookup = MemLookup::default()
            .with("app/prod/TOKEN", "prod-token")
            .with("billing/live/KEY", "billing-key");
        let resolved = resolve_dev(
            &[("A", "${prod.TOKEN}"), ("B", "${billing.live.KEY}")],
            &mut lookup,
        )
        .await
        .unwrap();
        assert_eq!(
            resolved,
            [pair("A", "prod-token"), pair("B", "billing-key")]
        );
        assert_eq!(lookup.total_calls(), 2);
    }

    #[tokio::test]
    async fn a_referenced_value_is_resolved_relative_to_its_own_environment() {
        let mut lookup = MemLookup::default()
            .with("app/prod/DB", "postgres://${HOST}/${app.dev.NAME}")
            .with("app/prod/HOST", "prod-host");
        let resolved = resolve_dev(
            &[
                ("DB", "${prod.DB}"),
                ("HOST", "dev-host"),
                ("NAME", "coffer"),
            ],
            &mut lookup,
        )
        .await
        .unwrap();
        assert_eq!(resolved[0], pair("DB", "postgres://prod-host/coffer"));
        // dev's own NAME was served from the environment's values, not looked up.
        assert_eq!(lookup.calls.get(&place_of("app/dev/NAME")), None);
    }

    #[tokio::test]
    async fn several_references_in_one_value_keep_the_surrounding_text() {
        let mut lookup = MemLookup::default().with("app/prod/P", "p");
        let resolved = resolve_dev(
            &[("A", "<${B}|${prod.P}|${B}>${C}"), ("B", "b"), ("C", "c")],
            &mut lookup,
        )
        .await
        .unwrap();
        assert_eq!(resolved[0], pair("A", "<b|p|b>c"));
    }

    #[tokio::test]
    async fn a_missing_key_is_not_found_naming_the_reference() {
        let mut lookup = MemLookup::default();
        let err = resolve_error(&[("A", &format!("{SECRET}${{MISSING}}"))], &mut lookup).await;
        assert_eq!(
            err,
            RefError::NotFound {
                reference: "${MISSING}".to_owned(),
                from: place_of("app/dev/A"),
            }
        );
        assert_eq!(
            err.to_string(),
            "`${MISSING}` in app/dev/A refers to a secret that does not exist"
        );
        let err = resolve_error(&[("A", "${prod.GONE}")], &mut lookup).await;
        assert!(
            matches!(err, RefError::NotFound { ref reference, .. } if reference == "${prod.GONE}")
        );
    }

    #[tokio::test]
    async fn a_forbidden_place_propagates() {
        let mut lookup = MemLookup::default()
            .with("app/prod/OK", "${secret.vault.KEY}")
            .with("secret/vault/KEY", SECRET)
            .forbid("secret/vault/KEY");
        let err = resolve_error(&[("A", "${prod.OK}")], &mut lookup).await;
        assert_eq!(
            err,
            RefError::Forbidden {
                reference: "${secret.vault.KEY}".to_owned(),
                from: place_of("app/prod/OK"),
            }
        );
    }

    #[tokio::test]
    async fn a_lookup_failure_propagates() {
        let mut lookup = MemLookup {
            failing: true,
            ..MemLookup::default()
        };
        let err = resolve_error(&[("A", "${prod.X}")], &mut lookup).await;
        assert_eq!(err, RefError::Lookup("database unavailable".to_owned()));
    }

    #[tokio::test]
    async fn a_self_reference_is_a_cycle() {
        let mut lookup = MemLookup::default();
        let err = resolve_error(&[("A", &format!("{SECRET}${{A}}"))], &mut lookup).await;
        assert_eq!(
            err,
            RefError::Cycle {
                path: vec![place_of("app/dev/A"), place_of("app/dev/A")]
            }
        );
        assert_eq!(err.to_string(), "reference cycle: dev/A -> dev/A");
    }

    #[tokio::test]
    async fn a_to_b_to_a_is_a_cycle_with_its_path() {
        let mut lookup = MemLookup::default();
        let err = resolve_error(
            &[("A", "${B}"), ("B", &format!("{SECRET}${{dev.A}}"))],
            &mut lookup,
        )
        .await;
        assert_eq!(err.to_string(), "reference cycle: dev/A -> dev/B -> dev/A");
    }

    #[tokio::test]
    async fn a_cycle_across_environments_and_projects_is_reported_with_its_path() {
        let mut lookup = MemLookup::default()
            .with("app/prod/B", "${billing.live.C}")
            .with("billing/live/C", &format!("{SECRET}${{app.dev.A}}"));
        let err = resolve_error(&[("A", "x${prod.B}")], &mut lookup).await;
        assert_eq!(
            err,
            RefError::Cycle {
                path: ["app/dev/A", "app/prod/B", "billing/live/C", "app/dev/A"]
                    .map(place_of)
                    .to_vec()
            }
        );
        assert_eq!(
            err.to_string(),
            "reference cycle: app/dev/A -> app/prod/B -> billing/live/C -> app/dev/A"
        );
    }

    /// `K{n}` → `K{n-1}` → … → `K0`; written so that the tail sorts (and resolves) first
    /// when `tail_first`, which exercises the depth of already resolved values.
    fn chain(hops: usize, tail_first: bool) -> Vec<(String, String)> {
        (0..=hops)
            .map(|i| {
                let name = |n: usize| {
                    if tail_first {
                        format!("K{n:02}")
                    } else {
                        format!("K{:02}", hops - n)
                    }
                };
                let value = if i == 0 {
                    SECRET.to_owned()
                } else {
                    format!("${{{}}}", name(i - 1))
                };
                (name(i), value)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_chain_of_eight_resolves_and_a_chain_of_nine_is_too_deep() {
        for tail_first in [false, true] {
            let mut lookup = MemLookup::default();
            let ok = chain(MAX_DEPTH, tail_first);
            let ok: Vec<(&str, &str)> = ok.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let resolved = resolve_dev(&ok, &mut lookup).await.unwrap();
            assert!(resolved.iter().all(|(_, v)| v == SECRET));

            let deep = chain(MAX_DEPTH + 1, tail_first);
            let deep: Vec<(&str, &str)> =
                deep.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let err = resolve_error(&deep, &mut lookup).await;
            let RefError::TooDeep { max_depth, from } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(*max_depth, 8);
            let head = if tail_first { "K09" } else { "K00" };
            assert_eq!(from, &place_of(&format!("app/dev/{head}")));
            assert_eq!(
                err.to_string(),
                format!("references from app/dev/{head} are nested more than 8 levels deep")
            );
        }
    }

    #[tokio::test]
    async fn a_chain_across_environments_counts_towards_the_depth() {
        let envs = ["e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"];
        let mut lookup = MemLookup::default();
        for (i, env) in envs.iter().enumerate().skip(1) {
            let value = match envs.get(i + 1) {
                Some(next) => format!("${{{next}.K}}"),
                None => SECRET.to_owned(),
            };
            lookup = lookup.with(&format!("app/{env}/K"), &value);
        }
        // dev → e1 → … → e9: nine levels.
        let err = resolve_error(&[("K", "${e1.K}")], &mut lookup).await;
        assert!(matches!(err, RefError::TooDeep { .. }), "{err:?}");
        // dev → e2 → … → e9: eight levels.
        let resolved = resolve_dev(&[("K", "${e2.K}")], &mut lookup).await.unwrap();
        assert_eq!(resolved, [pair("K", SECRET)]);
    }

    #[test]
    fn syntax_errors_name_the_reference() {
        let (reference, message) = syntax_error(&format!("{SECRET}${{}}"));
        assert_eq!(reference, "${}");
        assert_eq!(message, "the reference is empty");
        let (reference, message) = syntax_error(&format!("{SECRET} ${{a..b}}"));
        assert_eq!(reference, "${a..b}");
        assert!(
            message.starts_with("the environment must be a slug"),
            "{message}"
        );
        let (reference, message) = syntax_error(&format!("${{Bad Slug.KEY}}{SECRET}"));
        assert_eq!(reference, "${Bad Slug.KEY}");
        assert!(
            message.starts_with("the environment must be a slug"),
            "{message}"
        );
        let (reference, message) = syntax_error("${KEY");
        assert_eq!(reference, "${KEY");
        assert_eq!(message, "missing the closing `}`");
        let (reference, _) = syntax_error("${Prod.dev.KEY}");
        assert_eq!(reference, "${Prod.dev.KEY}");
        let (_, message) = syntax_error("${dev.9KEY}");
        assert!(message.starts_with("the key must start with"), "{message}");
        let (_, message) = syntax_error("${dev.}");
        assert!(message.starts_with("the key must start with"), "{message}");
        let (_, message) = syntax_error("${.KEY}");
        assert!(
            message.starts_with("the environment must be a slug"),
            "{message}"
        );
        let (_, message) = syntax_error(&format!("${{{}.KEY}}", "a".repeat(64)));
        assert!(
            message.starts_with("the environment must be a slug"),
            "{message}"
        );
        let (_, message) = syntax_error(&format!("${{{}}}", "K".repeat(257)));
        assert!(message.starts_with("the key must start with"), "{message}");
        assert!(
            parse(&format!(
                "${{{}.{}.{}}}",
                "a".repeat(63),
                "b".repeat(63),
                "K".repeat(256)
            ))
            .is_ok()
        );
    }

    #[test]
    fn syntax_errors_never_quote_the_rest_of_the_value() {
        let (reference, _) = syntax_error(&format!("${{KEY {SECRET}"));
        assert_eq!(reference, "${KEY…");
        let (reference, _) = syntax_error(&format!("${{KEY\n{SECRET}}}"));
        assert_eq!(reference, "${KEY…}");
        let (reference, _) = syntax_error(&format!("${{{}{SECRET}}}", "x ".repeat(200)));
        assert_eq!(reference, "${x…}");
    }

    #[tokio::test]
    async fn a_syntax_error_in_a_referenced_value_says_where_it_is() {
        let mut lookup = MemLookup::default().with("app/prod/B", &format!("{SECRET}${{"));
        let err = resolve_error(&[("A", "${prod.B}")], &mut lookup).await;
        assert_eq!(
            err.to_string(),
            "invalid reference `${`: missing the closing `}` (in the value of app/prod/B)"
        );
    }

    #[tokio::test]
    async fn a_referenced_place_is_fetched_once_however_often_it_is_used() {
        let mut lookup = MemLookup::default()
            .with("app/prod/SHARED", "${BASE}-shared")
            .with("app/prod/BASE", "base");
        let resolved = resolve_dev(
            &[
                ("A", "${prod.SHARED}"),
                ("B", "${prod.SHARED}/${prod.SHARED}"),
                ("C", "${prod.BASE}"),
                ("D", "${A}"),
            ],
            &mut lookup,
        )
        .await
        .unwrap();
        assert_eq!(
            resolved,
            [
                pair("A", "base-shared"),
                pair("B", "base-shared/base-shared"),
                pair("C", "base"),
                pair("D", "base-shared"),
            ]
        );
        assert_eq!(lookup.calls.len(), 2);
        assert!(lookup.calls.values().all(|&n| n == 1), "{:?}", lookup.calls);
    }

    #[tokio::test]
    async fn resolve_one_resolves_a_value_against_its_environment() {
        let mut lookup = MemLookup::default().with("app/prod/P", "p");
        let stored = env_values(&[("A", "a"), ("B", "${NEW}")]);
        let place = place_of("app/dev/NEW");
        let value = SecretString::from("${A}+${prod.P}");
        let resolved = resolve_one(&place, &value, &stored, &mut lookup)
            .await
            .unwrap();
        assert_eq!(resolved.expose_secret(), "a+p");
        // A new value that would close a cycle through the stored ones.
        let value = SecretString::from(format!("{SECRET}${{B}}"));
        let err = resolve_one(&place, &value, &stored, &mut lookup)
            .await
            .unwrap_err();
        assert_no_value(&err);
        assert_eq!(
            err.to_string(),
            "reference cycle: dev/NEW -> dev/B -> dev/NEW"
        );
    }

    #[test]
    fn segment_debug_redacts_literals() {
        let segments = parse(&format!("{SECRET}${{dev.KEY}}")).unwrap();
        let debug = format!("{segments:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("Literal([REDACTED])"), "{debug}");
        assert!(debug.contains("dev.KEY"), "{debug}");
    }

    #[test]
    fn resolution_can_run_on_a_multi_threaded_runtime() {
        fn assert_send<T: Send>(_: &T) {}
        let values = BTreeMap::new();
        let mut lookup = MemLookup::default();
        assert_send(&resolve_all("app", "dev", &values, &mut lookup));
        let place = place_of("app/dev/A");
        let raw = SecretString::from("x");
        assert_send(&resolve_one(&place, &raw, &values, &mut lookup));
    }
}
