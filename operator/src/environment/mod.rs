//! The `Environment` controller. [`build`] decides, without a client, what the synced Secret
//! should be.

pub mod build;
