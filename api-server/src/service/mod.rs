//! The domain layer: each operation checks what it must, owns its transaction and records its
//! audit events. Routes call these; these never see HTTP types.

pub mod analytics;
pub mod api_keys;
pub mod audit;
pub mod audit_journal;
pub mod auth;
pub mod dashboard;
pub mod dynamic;
pub mod events;
pub mod keys;
pub mod orgs;
pub mod password_reset;
pub mod projects;
pub mod secrets;
pub mod service_tokens;
pub mod sharing;
pub mod teams;
pub mod tenancy;
pub mod webhooks;
pub mod write_queue;

/// Where a request came from, for rate limits and audit events.
#[derive(Debug, Clone, Default)]
pub struct ClientMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl ClientMeta {
    /// The key per-IP rate limits count against.
    pub fn ip_key(&self) -> &str {
        self.ip.as_deref().unwrap_or("unknown")
    }
}
