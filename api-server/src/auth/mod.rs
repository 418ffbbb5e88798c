//! Authentication: password hashing, access tokens, opaque tokens, rate limits, and the
//! [`Principal`] extractor that every authenticated route takes.

pub mod jwt;
pub mod password;
pub mod principal;
pub mod rate_limit;
pub mod tokens;

pub use principal::{Caller, Credential, LeaseCaller, Principal, ServiceTokenPrincipal, Subject};
