//! Secrets: their file formats and the references between them.

pub mod formats;
pub mod references;
