//! HTTP tests of coffer-server through its real router and a real database, each on SQLite and
//! on PostgreSQL (`COFFER_TEST_DATABASE_URL`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod access_cache;
mod api_keys;
mod at_rest;
mod audit;
mod auth;
mod client_address;
mod contract;
mod durability;
mod dynamic;
mod errors;
mod events;
mod health;
mod imports;
mod isolation;
mod keys;
mod limits;
mod login_failures;
mod metrics;
mod openapi;
mod org_audit;
mod orgs;
mod password_reset;
mod projects;
mod read_audit;
mod references;
mod secret_cache;
mod secrets;
mod server;
mod service_tokens;
mod sessions;
mod sharing;
mod standing;
mod teams;
mod token_abuse;
mod web;
mod web_access;
mod web_manage;
mod web_ops;
mod web_support;
mod web_transfer;
mod webhooks;
mod write_groups;
