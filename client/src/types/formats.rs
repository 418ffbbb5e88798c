//! The formats of the strings requests carry, as OpenAPI schemas (`#/components/schemas/Slug`,
//! …) that request fields name with `schema(value_type = …)`. The patterns say exactly what
//! coffer-server accepts, so a generated client can check a value before sending it; they use
//! only the syntax ECMAScript, Python's `re` and Rust's `regex` read alike (no `\s`, `\d` or
//! `\p{…}`, whose meanings differ).

use std::borrow::Cow;

use utoipa::openapi::schema::{
    ArrayBuilder, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{KnownFormat, Ref, RefOr};

/// Control characters (Unicode `Cc`).
const CONTROL: &str = r"\x00-\x1F\x7F-\x9F";
/// Characters Rust's `str::trim` removes besides control characters (Unicode `White_Space`).
const SPACE: &str = r" \xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// A display name: 1 to 100 characters, no control characters, not only spaces (stored
/// trimmed).
pub fn name_pattern() -> String {
    format!("^[^{CONTROL}]*[^{CONTROL}{SPACE}][^{CONTROL}]*$")
}

/// A slug: `[a-z0-9-]`, 1 to 63 characters.
pub const SLUG_PATTERN: &str = "^[a-z0-9-]{1,63}$";

/// A secret's key (at most 256 characters).
pub const SECRET_KEY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_.-]*$";

/// An email address: `local@domain` with 1 to 64 characters before the `@`, a domain of at
/// least two dot-separated labels, no spaces or control characters (around it, spaces are
/// ignored); at most 254 characters.
pub fn email_pattern() -> String {
    let visible = format!("[^{CONTROL}{SPACE}@]");
    let label = format!("[^{CONTROL}{SPACE}@.]+");
    let around = format!(r"[\t-\r\x85{SPACE}]*");
    format!(r"^{around}{visible}{{1,64}}@{label}(\.{label})+{around}$")
}

/// A webhook's URL: `http://` or `https://`, a host without credentials, no spaces or control
/// characters. The host must also be one a URL may have, and an address webhooks may reach.
pub fn webhook_url_pattern() -> String {
    let visible = format!("[^{CONTROL}{SPACE}]");
    let authority = format!(r"[^{CONTROL}{SPACE}@/?#\\]+");
    format!(r"^https?://{authority}([/?#\\]{visible}*)?$")
}

fn string(description: &str, min: usize, max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(min))
        .max_length(Some(max))
}

/// A new project's environments: up to 100 slugs, each once, or `null` (the default ones).
pub fn project_environments() -> Schema {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(Ref::from_schema_name("Slug"))
        .max_items(Some(100))
        .unique_items(true)
        .build()
        .into()
}

/// The keys of a copy: secret keys, each once, or `null` (every secret of the source).
pub fn key_set() -> Schema {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(Ref::from_schema_name("SecretKey"))
        .unique_items(true)
        .build()
        .into()
}

macro_rules! string_format {
    ($(#[$doc:meta])* $name:ident => $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema.into()
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

string_format!(
    /// A display name.
    Name => string(
        "1 to 100 characters, no control characters, not only spaces (stored trimmed)",
        1, 100,
    ).pattern(Some(name_pattern())).examples(["Payments"])
);

string_format!(
    /// A slug.
    Slug => string("`[a-z0-9-]`, 1 to 63 characters", 1, 63).pattern(Some(SLUG_PATTERN))
        .examples(["payments"])
);

string_format!(
    /// A secret's key.
    SecretKey => string(
        "A letter or `_`, then letters, digits, `_`, `.` and `-`; at most 256 characters",
        1, 256,
    ).pattern(Some(SECRET_KEY_PATTERN)).examples(["DATABASE_URL"])
);

string_format!(
    /// An email address.
    Email => string(
        "An email address (`local@domain.tld`), at most 254 characters; compared without case",
        5, 254,
    ).pattern(Some(email_pattern())).examples(["ann@example.com"])
);

string_format!(
    /// A new password.
    NewPassword => string(
        "10 to 128 characters, and not easily guessed (the user's email and name count as \
         known words)",
        10, 128,
    ).format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
);

string_format!(
    /// A webhook's URL.
    WebhookUrl => string(
        "`http://` or `https://` and a host (no credentials), at most 2048 characters; a \
         literal address must be one webhooks may reach",
        8, 2048,
    ).pattern(Some(webhook_url_pattern())).examples(["https://hooks.example.com/coffer"])
);
