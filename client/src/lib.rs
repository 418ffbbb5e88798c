//! coffer-client: the request and response types of coffer-server's HTTP API and a typed async
//! client for it.
//!
//! The types (in [`types`] and [`ids`], re-exported here) are the ones coffer-server itself
//! reads and writes; its `server` feature adds their OpenAPI schemas and database encodings.
//! The HTTP client ([`Client`], feature `http`, on by default) authenticates with an API key or
//! a service token:
//!
//! ```no_run
//! # async fn demo() -> Result<(), coffer_client::Error> {
//! use coffer_client::{Client, Fetched};
//! use secrecy::SecretString;
//!
//! let client = Client::new("https://coffer.example.com", SecretString::from("cfr_…"))?;
//! let mut etag = None;
//! match client.read_secrets("acme", "web", "production", etag.as_deref()).await? {
//!     Fetched::Modified { etag: tag, value } => {
//!         etag = tag;
//!         for secret in &value.secrets {
//!             let _value: &str = secret.value.expose();
//!         }
//!     }
//!     Fetched::NotModified { .. } => {}
//! }
//! # let _ = etag;
//! # Ok(())
//! # }
//! ```
//!
//! A project's changes can be followed as they happen with [`Client::project_events`], an
//! [`EventStream`] of [`StreamMessage`]s that resumes after the last event it delivered.
//!
//! Secrets arrive as [`Revealed`] (or `secrecy::SecretString` in requests): their `Debug` output
//! is redacted, and neither the token nor a secret value ever appears in an [`Error`].

pub mod ids;
pub mod types;

#[cfg(feature = "http")]
mod client;
#[cfg(feature = "http")]
mod error;
#[cfg(feature = "http")]
mod retry_after;
#[cfg(feature = "http")]
mod stream;

#[cfg(feature = "http")]
pub use client::{Client, DEFAULT_MAX_RESPONSE_BYTES, Fetched};
#[cfg(feature = "http")]
pub use error::Error;
#[cfg(feature = "http")]
pub use stream::{DEFAULT_IDLE_TIMEOUT, EventStream, MAX_MESSAGE_BYTES, StreamMessage};
pub use types::*;
