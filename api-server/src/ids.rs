//! Identifier newtypes and the timestamp type. They are part of the API, so they live in
//! `coffer-client` (whose `server` feature adds their database encodings and OpenAPI schemas);
//! re-exported here so that the server names them as its own.

pub use coffer_client::ids::*;
