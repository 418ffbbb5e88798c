//! The request and response bodies of coffer-server's HTTP API. The server uses these very
//! types (with the `server` feature, which adds their OpenAPI schemas), so a client cannot drift
//! from what the server reads and writes.
//!
//! Requests refuse unknown fields, as the server does; responses accept fields added later.

mod auth;
mod dynamic;
mod errors;
mod events;
mod files;
#[cfg(feature = "server")]
pub mod formats;
mod history;
pub mod integer;
mod page;
mod projects;
pub(crate) mod revealed;
mod roles;
mod secrets;
mod service_tokens;
mod webhooks;

pub use auth::{LoggedIn, LoginRequest, RefreshRequest, SessionTokens, User};
pub use dynamic::{
    CreateDynamicSecretRequest, DynamicConnection, DynamicEngine, DynamicSecret, IssueLeaseRequest,
    IssuedLease, Lease, LeaseEvent, LeaseState, PasswordPolicy, RenewLeaseRequest, RevokedLeases,
    UpdateDynamicSecretRequest,
};
pub use errors::{ErrorDetail, ErrorResponse};
pub use events::{
    Actor, ChangeAction, EnvironmentRevision, Event, EventType, KeyChange, Resync, ResyncReason,
};
pub use files::FileFormat;
pub use history::{SecretVersion, VersionAuthor};
pub use page::Page;
pub use projects::{
    CreateEnvironmentRequest, CreateProjectRequest, Environment, EnvironmentDetail, Project,
    UpdateEnvironmentRequest, UpdateProjectRequest,
};
pub use revealed::Revealed;
pub use roles::{EnvAccess, OrgRole, ProjectRole};
pub use secrets::{
    BulkUpsertRequest, ComparedKey, ComparedVersion, Comparison, ComparisonSummary, CopyReport,
    CopySecretsRequest, CreateSecretRequest, KeyComparison, PutSecretRequest, RollbackRequest,
    Secret, SecretsPage, WriteReport,
};
pub use service_tokens::{
    CreateServiceTokenRequest, IssuedServiceToken, ServiceToken, TokenAccess,
};
pub use webhooks::{
    CreateWebhookRequest, CreatedWebhook, QueuedDelivery, RotateWebhookSecretRequest,
    UpdateWebhookRequest, Webhook, WebhookAttempt, WebhookSecret,
};
