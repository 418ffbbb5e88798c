//! Key material: the key-encryption key (master key) and the access-token signing secret.

pub mod envelope;
pub mod keys;

pub use keys::{Keys, MasterKey};
