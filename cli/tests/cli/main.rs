//! The `coffer` binary against a real coffer-server, one for the whole test binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod errors;
mod retries;
mod run;
mod secrets;
mod sharing;
mod support;
mod transfer;
