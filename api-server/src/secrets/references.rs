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
//! A value is secret, and so is every part of it, references included (a generated password may
//! well contain `${`). Errors therefore name places (the secret whose value holds the problem)
//! and byte offsets, never text taken from a value.
//!
//! Resolution is bounded by [`Limits`]: every resolved value, and what one call produces and
//! substitutes in total, are checked before the text is copied, so no value can make the resolver
//! allocate beyond them however its references fan out.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// How many references deep a value may reach (`A` → `B` is one level).
pub const MAX_DEPTH: usize = 8;

const MAX_SLUG_LEN: usize = 63;
const MAX_KEY_LEN: usize = 256;

/// How much one call of the resolver may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest value once resolved, in bytes.
    pub max_value_bytes: usize,
    /// The most bytes one call may write into resolved values, intermediate ones included.
    pub max_total_bytes: usize,
    /// The most references one call may substitute (each `${…}` counts each time it is met).
    pub max_references: usize,
}

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

/// One `${…}` reference. Its text is part of a secret value: `Debug` shows only its offset.
#[derive(Clone, PartialEq, Eq)]
pub struct Reference {
    /// Where its `${` starts in the value, in bytes.
    pub offset: usize,
    /// Set for `${project.env.KEY}`.
    pub project: Option<String>,
    /// Set for `${env.KEY}` and `${project.env.KEY}`.
    pub env: Option<String>,
    pub key: String,
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reference")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
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

/// Why a lookup of another environment's value failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The caller may see the environment but not read its secrets.
    #[error("forbidden")]
    Forbidden,
    /// The environment does not exist, or the caller may not see it (the same answer).
    #[error("no such environment")]
    Hidden,
    /// A storage or decryption failure; the text holds no secrets.
    #[error("{0}")]
    Internal(String),
}

/// What the resolver needs from storage: the raw (unresolved) value at a place, after checking
/// that the caller may read it. `Ok(None)` when the environment is readable but has no such
/// secret.
pub trait Lookup {
    fn raw_value(
        &mut self,
        place: &Place,
    ) -> impl Future<Output = Result<Option<SecretString>, LookupError>> + Send;
}

/// What is wrong with the syntax of a value, and where (a byte offset into the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {problem}")]
pub struct SyntaxError {
    pub offset: usize,
    pub problem: &'static str,
}

/// Why a value's references could not be resolved. Names places and byte offsets, never text
/// taken from a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error(
        "the value of {place} holds an invalid reference at byte {}: {} (write `$${{` for a literal `${{`)",
        error.offset,
        error.problem
    )]
    Syntax { place: Place, error: SyntaxError },
    #[error("the reference at byte {offset} of {from} names a secret that does not exist")]
    NotFound { from: Place, offset: usize },
    #[error("the reference at byte {offset} of {from} names a secret you may not read")]
    Forbidden { from: Place, offset: usize },
    #[error("reference cycle: {}", CyclePath(path))]
    Cycle { path: Vec<Place> },
    #[error("references from {from} are nested more than {max_depth} levels deep")]
    TooDeep { max_depth: usize, from: Place },
    #[error("the value of {place} is over {} KiB once its references are resolved", max_bytes / 1024)]
    ValueTooLarge { place: Place, max_bytes: usize },
    #[error("resolving {place} goes over the {max_bytes} bytes that one request may resolve")]
    TooManyBytes { place: Place, max_bytes: usize },
    #[error(
        "resolving {place} goes over the {max_references} references that one request may resolve"
    )]
    TooManyReferences { place: Place, max_references: usize },
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

/// Whether resolving `value` can change it: it holds a reference or an escaped `$${`.
pub fn needs_resolution(value: &str) -> bool {
    value.contains("${")
}

/// Splits a value into literal text and references, checking every reference's syntax.
/// Adjacent literal text is merged; an empty value gives no segments.
pub fn parse(value: &str) -> Result<Vec<Segment>, SyntaxError> {
    let mut segments = Vec::new();
    let mut literal = Zeroizing::new(String::new());
    let mut pos = 0;
    while let Some(dollar) = value[pos..].find('$').map(|d| pos + d) {
        literal.push_str(&value[pos..dollar]);
        let from_dollar = &value[dollar..];
        if from_dollar.starts_with("$${") {
            literal.push_str("${");
            pos = dollar + 3;
        } else if let Some(after) = from_dollar.strip_prefix("${") {
            let Some(close) = after.find('}') else {
                return Err(SyntaxError {
                    offset: dollar,
                    problem: "`${` without a closing `}`",
                });
            };
            let reference = parse_reference(dollar, &after[..close])?;
            if !literal.is_empty() {
                segments.push(Segment::Literal(Zeroizing::new(std::mem::take(
                    &mut *literal,
                ))));
            }
            segments.push(Segment::Ref(reference));
            pos = dollar + 2 + close + 1;
        } else {
            literal.push('$');
            pos = dollar + 1;
        }
    }
    literal.push_str(&value[pos..]);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

/// Parses the text inside `${}`, which starts at byte `offset` of its value.
fn parse_reference(offset: usize, raw: &str) -> Result<Reference, SyntaxError> {
    let syntax = |problem: &'static str| SyntaxError { offset, problem };
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
    if let Some(project) = project
        && !is_slug(project)
    {
        return Err(syntax(
            "the project must be a slug of 1 to 63 lowercase letters, digits or `-`",
        ));
    }
    if let Some(env) = env
        && !is_slug(env)
    {
        return Err(syntax(
            "the environment must be a slug of 1 to 63 lowercase letters, digits or `-`",
        ));
    }
    if !is_key(key) {
        return Err(syntax(
            "the key must start with a letter or `_` and hold only letters, digits, `_`, `.` \
             or `-` (at most 256)",
        ));
    }
    Ok(Reference {
        offset,
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
/// once per call. Values without references are returned as they are. The first error fails
/// the whole call.
pub async fn resolve_all<L: Lookup + Send>(
    origin_project: &str,
    origin_env: &str,
    values: &BTreeMap<String, SecretString>,
    lookup: &mut L,
    limits: Limits,
) -> Result<BTreeMap<String, SecretString>, RefError> {
    let mut resolver = Resolver::new(origin_project, origin_env, values, lookup, limits, false);
    let mut out = BTreeMap::new();
    for (key, raw) in values {
        let value = if needs_resolution(raw.expose_secret()) {
            let place = Place::new(origin_project, origin_env, key.as_str());
            resolver.resolve(place, raw.expose_secret()).await?
        } else {
            raw.clone()
        };
        out.insert(key.clone(), value);
    }
    Ok(out)
}

/// Resolves one value found at `place`; `same_env` holds the raw values of `place`'s
/// environment. Same rules as [`resolve_all`].
pub async fn resolve_one<L: Lookup + Send>(
    place: &Place,
    raw: &SecretString,
    same_env: &BTreeMap<String, SecretString>,
    lookup: &mut L,
    limits: Limits,
) -> Result<SecretString, RefError> {
    let mut resolver = Resolver::new(&place.project, &place.env, same_env, lookup, limits, false);
    resolver.resolve(place.clone(), raw.expose_secret()).await
}

/// Checks values about to be written, before they are stored: `same_env` holds the
/// environment's values as they will be after the write, `written` the keys being written.
///
/// Each written value must parse, and the chain of references it starts must have no cycle,
/// stay within [`MAX_DEPTH`] and [`Limits`], and name secrets that exist. A place the writer
/// may not read (`LookupError::Forbidden` or `Hidden`) is not followed and not reported: the
/// reference is resolved with each reader's own permissions, and the writer learns nothing
/// about it. Nothing resolved leaves this function.
pub async fn check_written<L: Lookup + Send>(
    project: &str,
    env: &str,
    same_env: &BTreeMap<String, SecretString>,
    written: &[&str],
    lookup: &mut L,
    limits: Limits,
) -> Result<(), RefError> {
    let mut resolver = Resolver::new(project, env, same_env, lookup, limits, true);
    for &key in written {
        let Some(raw) = same_env.get(key) else {
            continue;
        };
        if needs_resolution(raw.expose_secret()) {
            resolver
                .resolve(Place::new(project, env, key), raw.expose_secret())
                .await?;
        }
    }
    Ok(())
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
    limits: Limits,
    /// Checking a write: places the caller may not read stand for an empty value.
    skip_unreadable: bool,
    /// Every place resolved so far in this call.
    done: HashMap<Place, Resolved>,
    /// Bytes written into resolved values so far in this call.
    bytes: usize,
    /// References substituted so far in this call.
    references: usize,
}

/// What fetching a referenced place gave.
enum Fetched {
    Segments(Vec<Segment>),
    /// A place the writer may not read, while checking a write.
    Opaque,
}

impl<'a, L: Lookup + Send> Resolver<'a, L> {
    fn new(
        project: &'a str,
        env: &'a str,
        same_env: &'a BTreeMap<String, SecretString>,
        lookup: &'a mut L,
        limits: Limits,
        skip_unreadable: bool,
    ) -> Self {
        Self {
            project,
            env,
            same_env,
            lookup,
            limits,
            skip_unreadable,
            done: HashMap::new(),
            bytes: 0,
            references: 0,
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
            let (target, offset) = match frame.segments.get(frame.next) {
                None => {
                    if let Some(value) = self.finish(&root, &mut stack)? {
                        return Ok(value);
                    }
                    continue;
                }
                Some(Segment::Literal(text)) => {
                    append(
                        &self.limits,
                        &mut self.bytes,
                        &root,
                        (&frame.place, &mut frame.out),
                        text,
                    )?;
                    frame.next += 1;
                    continue;
                }
                Some(Segment::Ref(reference)) => (reference.place(&frame.place), reference.offset),
            };
            self.references += 1;
            if self.references > self.limits.max_references {
                return Err(RefError::TooManyReferences {
                    place: root.clone(),
                    max_references: self.limits.max_references,
                });
            }
            if let Some(done) = self.done.get(&target) {
                // Already resolved, but the chain through it still counts towards the depth.
                if depth + done.height > MAX_DEPTH {
                    return Err(too_deep(&root));
                }
                let value = done.value.expose_secret();
                append(
                    &self.limits,
                    &mut self.bytes,
                    &root,
                    (&frame.place, &mut frame.out),
                    value,
                )?;
                frame.height = frame.height.max(done.height + 1);
                frame.next += 1;
                continue;
            }
            let from = frame.place.clone();
            if let Some(start) = stack.iter().position(|f| f.place == target) {
                let mut path: Vec<Place> = stack[start..].iter().map(|f| f.place.clone()).collect();
                path.push(target);
                return Err(RefError::Cycle { path });
            }
            if depth > MAX_DEPTH {
                return Err(too_deep(&root));
            }
            match self.fetch(&target, from, offset).await? {
                Fetched::Segments(segments) => stack.push(Frame::new(target, segments)),
                Fetched::Opaque => {
                    // Stands for nothing, and is not followed further.
                    self.done.insert(
                        target,
                        Resolved {
                            value: SecretString::from(String::new()),
                            height: 0,
                        },
                    );
                    if let Some(frame) = stack.last_mut() {
                        frame.next += 1;
                    }
                }
            }
        }
    }

    /// Pops the finished top frame into `done` and hands its value to the frame below; returns
    /// the value when it was the root.
    fn finish(
        &mut self,
        root: &Place,
        stack: &mut Vec<Frame>,
    ) -> Result<Option<SecretString>, RefError> {
        let Some(finished) = stack.pop() else {
            return Ok(None);
        };
        let value = SecretString::from(finished.out.as_str());
        let root_value = match stack.last_mut() {
            Some(parent) => {
                let text = value.expose_secret();
                append(
                    &self.limits,
                    &mut self.bytes,
                    root,
                    (&parent.place, &mut parent.out),
                    text,
                )?;
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
        Ok(root_value)
    }

    /// The parsed raw value at `target`: from `same_env` for the environment being resolved,
    /// else through the lookup.
    async fn fetch(
        &mut self,
        target: &Place,
        from: Place,
        offset: usize,
    ) -> Result<Fetched, RefError> {
        if target.same_env(self.project, self.env) {
            return match self.same_env.get(&target.key) {
                Some(raw) => parse_at(target, raw.expose_secret()).map(Fetched::Segments),
                None => Err(RefError::NotFound { from, offset }),
            };
        }
        match self.lookup.raw_value(target).await {
            Ok(Some(raw)) => parse_at(target, raw.expose_secret()).map(Fetched::Segments),
            Ok(None) => Err(RefError::NotFound { from, offset }),
            Err(LookupError::Forbidden | LookupError::Hidden) if self.skip_unreadable => {
                Ok(Fetched::Opaque)
            }
            Err(LookupError::Forbidden) => Err(RefError::Forbidden { from, offset }),
            // What the caller may not see does not exist for them.
            Err(LookupError::Hidden) => Err(RefError::NotFound { from, offset }),
            Err(LookupError::Internal(message)) => Err(RefError::Lookup(message)),
        }
    }
}

/// Appends `text` to the value being built at `place`, within the limits: checked before
/// anything is copied, so nothing grows past them.
fn append(
    limits: &Limits,
    bytes: &mut usize,
    root: &Place,
    (place, out): (&Place, &mut Zeroizing<String>),
    text: &str,
) -> Result<(), RefError> {
    if out.len() + text.len() > limits.max_value_bytes {
        return Err(RefError::ValueTooLarge {
            place: place.clone(),
            max_bytes: limits.max_value_bytes,
        });
    }
    if *bytes + text.len() > limits.max_total_bytes {
        return Err(RefError::TooManyBytes {
            place: root.clone(),
            max_bytes: limits.max_total_bytes,
        });
    }
    *bytes += text.len();
    out.push_str(text);
    Ok(())
}

/// [`parse`], saying in a syntax error whose value held the reference.
fn parse_at(place: &Place, raw: &str) -> Result<Vec<Segment>, RefError> {
    parse(raw).map_err(|error| RefError::Syntax {
        place: place.clone(),
        error,
    })
}

fn too_deep(root: &Place) -> RefError {
    RefError::TooDeep {
        max_depth: MAX_DEPTH,
        from: root.clone(),
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashSet;

    use super::*;

    const SECRET: &str = "s3cr3t-VALUE-9f";

    const LIMITS: Limits = Limits {
        max_value_bytes: 64 * 1024,
        max_total_bytes: 1024 * 1024,
        max_references: 1000,
    };

    /// Other environments' raw values; answers Forbidden or Hidden for chosen places and
    /// counts calls.
    #[derive(Default)]
    struct MemLookup {
        values: HashMap<Place, String>,
        forbidden: HashSet<Place>,
        hidden: HashSet<Place>,
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

        fn hide(mut self, place: &str) -> Self {
            self.hidden.insert(place_of(place));
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
            } else if self.hidden.contains(place) {
                Err(LookupError::Hidden)
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
        resolve_dev_with(pairs, lookup, LIMITS).await
    }

    async fn resolve_dev_with(
        pairs: &[(&str, &str)],
        lookup: &mut MemLookup,
        limits: Limits,
    ) -> Result<Vec<(String, String)>, RefError> {
        let resolved = resolve_all("app", "dev", &env_values(pairs), lookup, limits).await?;
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

    /// The offset and problem of a value that must not parse; the error leaks no value.
    fn syntax_error(value: &str) -> (usize, &'static str) {
        let err = parse(value).unwrap_err();
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(SECRET), "{text}");
        }
        (err.offset, err.problem)
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
    async fn a_missing_key_is_not_found_naming_the_place_and_offset_only() {
        let mut lookup = MemLookup::default();
        let value = format!("{SECRET}${{MISSING_Tr0ub4dor}}");
        let err = resolve_error(&[("A", &value)], &mut lookup).await;
        assert_eq!(
            err,
            RefError::NotFound {
                from: place_of("app/dev/A"),
                offset: SECRET.len(),
            }
        );
        assert_eq!(
            err.to_string(),
            format!(
                "the reference at byte {} of app/dev/A names a secret that does not exist",
                SECRET.len()
            )
        );
        assert!(!format!("{err} {err:?}").contains("Tr0ub4dor"));
        // A hidden environment is reported as missing, not as forbidden.
        let mut lookup = MemLookup::default().hide("app/prod/GONE");
        let err = resolve_error(&[("A", "${prod.GONE}")], &mut lookup).await;
        assert!(
            matches!(err, RefError::NotFound { offset: 0, .. }),
            "{err:?}"
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
                from: place_of("app/prod/OK"),
                offset: 0,
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
    fn syntax_errors_give_the_offset_and_the_problem() {
        let n = SECRET.len();
        assert_eq!(
            syntax_error(&format!("{SECRET}${{}}")),
            (n, "the reference is empty")
        );
        let (offset, problem) = syntax_error(&format!("{SECRET} ${{a..b}}"));
        assert_eq!(offset, n + 1);
        assert!(
            problem.starts_with("the environment must be a slug"),
            "{problem}"
        );
        let (offset, problem) = syntax_error(&format!("${{Bad Slug.KEY}}{SECRET}"));
        assert_eq!(offset, 0);
        assert!(
            problem.starts_with("the environment must be a slug"),
            "{problem}"
        );
        assert_eq!(syntax_error("ab${KEY"), (2, "`${` without a closing `}`"));
        assert_eq!(syntax_error("$${ok} ${Prod.dev.KEY}").0, 7);
        let (_, problem) = syntax_error("${dev.9KEY}");
        assert!(problem.starts_with("the key must start with"), "{problem}");
        let (_, problem) = syntax_error("${dev.}");
        assert!(problem.starts_with("the key must start with"), "{problem}");
        let (_, problem) = syntax_error("${.KEY}");
        assert!(
            problem.starts_with("the environment must be a slug"),
            "{problem}"
        );
        let (_, problem) = syntax_error(&format!("${{{}.KEY}}", "a".repeat(64)));
        assert!(
            problem.starts_with("the environment must be a slug"),
            "{problem}"
        );
        let (_, problem) = syntax_error(&format!("${{{}}}", "K".repeat(257)));
        assert!(problem.starts_with("the key must start with"), "{problem}");
        assert!(
            parse(&format!(
                "${{{}.{}.{}}}",
                "a".repeat(63),
                "b".repeat(63),
                "K".repeat(256)
            ))
            .is_ok()
        );
        // Offsets count bytes, also after multi-byte text.
        assert_eq!(syntax_error("🔑${").0, 4);
    }

    #[test]
    fn syntax_errors_never_quote_any_of_the_value() {
        // A generated password with a stray `${`: nothing after it, nor before, is quoted.
        for value in [
            format!("${{KEY {SECRET}"),
            format!("${{KEY\n{SECRET}}}"),
            format!("{SECRET}${{{}{SECRET}}}", "x ".repeat(200)),
            format!("pa${{{SECRET}"),
        ] {
            let err = parse_at(&place_of("app/dev/PASSWORD"), &value).unwrap_err();
            let text = err.to_string();
            assert_no_value(&err);
            assert!(!text.contains("KEY") && !text.contains("x x"), "{text}");
            assert!(
                text.starts_with(
                    "the value of app/dev/PASSWORD holds an invalid reference at byte "
                ),
                "{text}"
            );
            assert!(text.ends_with("(write `$${` for a literal `${`)"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_syntax_error_in_a_referenced_value_says_where_it_is() {
        let mut lookup = MemLookup::default().with("app/prod/B", &format!("{SECRET}${{"));
        let err = resolve_error(&[("A", "${prod.B}")], &mut lookup).await;
        assert_eq!(
            err.to_string(),
            format!(
                "the value of app/prod/B holds an invalid reference at byte {}: `${{` without a \
                 closing `}}` (write `$${{` for a literal `${{`)",
                SECRET.len()
            )
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
        let resolved = resolve_one(&place, &value, &stored, &mut lookup, LIMITS)
            .await
            .unwrap();
        assert_eq!(resolved.expose_secret(), "a+p");
        // A new value that would close a cycle through the stored ones.
        let value = SecretString::from(format!("{SECRET}${{B}}"));
        let err = resolve_one(&place, &value, &stored, &mut lookup, LIMITS)
            .await
            .unwrap_err();
        assert_no_value(&err);
        assert_eq!(
            err.to_string(),
            "reference cycle: dev/NEW -> dev/B -> dev/NEW"
        );
    }

    #[test]
    fn segment_debug_shows_no_text_of_the_value() {
        let segments = parse(&format!("{SECRET}${{dev.KEY_Tr0ub4dor}}")).unwrap();
        let debug = format!("{segments:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("Literal([REDACTED])"), "{debug}");
        assert!(
            !debug.contains("Tr0ub4dor") && !debug.contains("dev"),
            "{debug}"
        );
        assert!(
            debug.contains(&format!("offset: {}", SECRET.len())),
            "{debug}"
        );
    }

    #[test]
    fn resolution_can_run_on_a_multi_threaded_runtime() {
        fn assert_send<T: Send>(_: &T) {}
        let values = BTreeMap::new();
        let mut lookup = MemLookup::default();
        assert_send(&resolve_all("app", "dev", &values, &mut lookup, LIMITS));
        let place = place_of("app/dev/A");
        let raw = SecretString::from("x");
        assert_send(&resolve_one(&place, &raw, &values, &mut lookup, LIMITS));
        assert_send(&check_written(
            "app",
            "dev",
            &values,
            &["A"],
            &mut lookup,
            LIMITS,
        ));
    }

    #[tokio::test]
    async fn a_fan_out_stops_at_the_value_limit_before_copying_past_it() {
        // The shape of the attack: C is a full value, B repeats it 16,384 times, A repeats B.
        let c = "c".repeat(64 * 1024);
        let b = "${C}".repeat(16 * 1024);
        let a = "${B}".repeat(16 * 1024);
        let mut lookup = MemLookup::default();
        let err = resolve_error(&[("A", &a), ("B", &b), ("C", &c)], &mut lookup).await;
        assert_eq!(
            err,
            RefError::ValueTooLarge {
                place: place_of("app/dev/B"),
                max_bytes: 64 * 1024,
            }
        );
        assert_eq!(
            err.to_string(),
            "the value of app/dev/B is over 64 KiB once its references are resolved"
        );
        // Exactly at the limit is fine.
        let half = "h".repeat(32 * 1024);
        let resolved = resolve_dev(&[("A", "${H}${H}"), ("H", &half)], &mut lookup)
            .await
            .unwrap();
        assert_eq!(resolved[0].1.len(), 64 * 1024);
    }

    #[tokio::test]
    async fn the_bytes_one_call_resolves_are_bounded_however_they_are_spread() {
        let limits = Limits {
            max_total_bytes: 10_000,
            ..LIMITS
        };
        let b = "b".repeat(3_000);
        let mut lookup = MemLookup::default();
        let pairs = [
            ("B", b.as_str()),
            ("D1", "${B}"),
            ("D2", "${B}"),
            ("D3", "${B}"),
            ("D4", "${B}"),
        ];
        let err = resolve_dev_with(&pairs, &mut lookup, limits)
            .await
            .unwrap_err();
        // B is plain and not built as a root; B's value built for D1 (3,000), then D1 (3,000)
        // and D2 (3,000) make 9,000, and D3 goes over.
        assert_eq!(
            err,
            RefError::TooManyBytes {
                place: place_of("app/dev/D3"),
                max_bytes: 10_000,
            }
        );
        assert!(
            resolve_dev_with(&pairs[..3], &mut lookup, limits)
                .await
                .is_ok()
        );
        // Values without references are not built, and cost nothing.
        let big = "p".repeat(20_000);
        let plain = [("P", big.as_str()), ("Q", big.as_str()), ("R", "$${R}")];
        assert!(resolve_dev_with(&plain, &mut lookup, limits).await.is_ok());
    }

    #[tokio::test]
    async fn the_references_one_call_substitutes_are_bounded() {
        let limits = Limits {
            max_references: 10,
            ..LIMITS
        };
        let mut lookup = MemLookup::default();
        let ten = "${E}".repeat(10);
        assert!(
            resolve_dev_with(&[("A", &ten), ("E", "")], &mut lookup, limits)
                .await
                .is_ok()
        );
        let eleven = "${E}".repeat(11);
        let err = resolve_dev_with(&[("A", &eleven), ("E", "")], &mut lookup, limits)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            RefError::TooManyReferences {
                place: place_of("app/dev/A"),
                max_references: 10,
            }
        );
    }

    async fn check(
        pairs: &[(&str, &str)],
        written: &[&str],
        lookup: &mut MemLookup,
    ) -> Result<(), RefError> {
        let values = env_values(pairs);
        let result = check_written("app", "dev", &values, written, lookup, LIMITS).await;
        if let Err(err) = &result {
            assert_no_value(err);
        }
        result
    }

    #[tokio::test]
    async fn a_write_is_checked_against_the_values_it_writes_with() {
        let mut lookup = MemLookup::default()
            .with("app/prod/P", "p")
            .forbid("app/vault/K")
            .hide("other/prod/K");
        // Targets written in the same request count; unreadable places are not followed.
        check(
            &[
                ("A", "${B}-${prod.P}-${vault.K}-${other.prod.K}"),
                ("B", "b"),
            ],
            &["A", "B"],
            &mut lookup,
        )
        .await
        .unwrap();
        // A missing target where the writer can look is refused, naming the place.
        let err = check(&[("A", "x${prod.MISSING}")], &["A"], &mut lookup)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            RefError::NotFound {
                from: place_of("app/dev/A"),
                offset: 1,
            }
        );
        let err = check(&[("A", "${NOPE}")], &["A"], &mut lookup)
            .await
            .unwrap_err();
        assert!(matches!(err, RefError::NotFound { .. }), "{err:?}");
        // A cycle closed by the request itself.
        let err = check(&[("A", "${B}"), ("B", "${A}")], &["B"], &mut lookup)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "reference cycle: dev/B -> dev/A -> dev/B");
        // An unescaped `${` is refused; the escape is accepted.
        let err = check(&[("PW", &format!("{SECRET}${{"))], &["PW"], &mut lookup)
            .await
            .unwrap_err();
        assert!(matches!(err, RefError::Syntax { .. }), "{err:?}");
        check(&[("PW", &format!("{SECRET}$${{"))], &["PW"], &mut lookup)
            .await
            .unwrap();
        // Too large once resolved.
        let half = "h".repeat(40 * 1024);
        let err = check(&[("A", "${H}${H}"), ("H", &half)], &["A"], &mut lookup)
            .await
            .unwrap_err();
        assert!(matches!(err, RefError::ValueTooLarge { .. }), "{err:?}");
        // Only the written values are checked.
        check(&[("OLD", "${GONE}"), ("NEW", "n")], &["NEW"], &mut lookup)
            .await
            .unwrap();
    }
}
