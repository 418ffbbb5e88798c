//! Webhooks: a project's change events sent to an HTTP endpoint, signed, queued durably in the
//! database, retried with exponential backoff and jitter, logged per attempt, disabled after too
//! many failed attempts in a row.
//!
//! Signature: `Coffer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed
//! with the secret's UTF-8 bytes; during a rotation's overlap a second `v1=` is made with the
//! previous secret. Receivers should refuse a `t` more than 5 minutes away from their clock.
//!
//! Outbound guard: a webhook never reaches link-local or cloud-metadata addresses, nor (unless
//! `COFFER_WEBHOOK_ALLOW_PRIVATE=true`) loopback and private ones. A literal address is checked
//! when the webhook is saved; a name is resolved at every delivery and only allowed addresses
//! are connected to (so a name that changes what it resolves to is caught); redirects are not
//! followed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use coffer_client::types::{
    CreateWebhookRequest, EventType, UpdateWebhookRequest, Webhook, WebhookAttempt,
};
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use rand::{Rng, RngCore};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::Notify;

use crate::auth::Principal;
use crate::authz::Action;
use crate::crypto::envelope::{Dek, Field, ValueAad};
use crate::db;
use crate::db::events::Wake;
use crate::db::webhooks::{AttemptRow, Claimed, NewDelivery, WebhookRow};
use crate::error::{ApiError, ApiResult};
use crate::ids::{ProjectId, Timestamp};
use crate::service::ClientMeta;
use crate::service::audit::{AuditEvent, Outcome};
use crate::service::tenancy::{self, ProjectCtx};
use crate::state::AppState;

/// Most webhooks a project may have.
pub const MAX_WEBHOOKS_PER_PROJECT: i64 = 20;

/// Most deliveries one webhook may have waiting; events beyond are not queued for it (and
/// said so in the log) until it catches up.
pub const MAX_PENDING_PER_WEBHOOK: i64 = 10_000;

/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2_048;

/// How much of a receiver's answer is kept.
pub const MAX_RESPONSE_BYTES: usize = 1_024;

/// Default and longest overlap of a secret rotation.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(86_400);
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 86_400);

/// How often the delivery worker looks at the queue when nothing woke it.
pub const POLL_EVERY: Duration = Duration::from_secs(5);

/// Deliveries sent at once by one replica.
const CONCURRENT_DELIVERIES: i64 = 16;

/// Audit actions of this module.
pub mod action {
    pub const CREATED: &str = "webhook.created";
    pub const UPDATED: &str = "webhook.updated";
    pub const DELETED: &str = "webhook.deleted";
    pub const SECRET_ROTATED: &str = "webhook.secret_rotated";
    pub const DISABLED: &str = "webhook.disabled";
    pub const REDELIVERED: &str = "webhook.redelivered";
}

const SECRET_FIELD: Field = Field::Other("webhook.secret");

/// Resolves a host name to addresses. The delivery worker's is the system's; tests inject
/// their own, so that no test ever connects anywhere but loopback.
pub trait HostResolver: Send + Sync {
    fn resolve(&self, host: &str) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>>;
}

/// The system's resolver.
#[derive(Debug)]
pub struct SystemResolver;

impl HostResolver for SystemResolver {
    fn resolve(&self, host: &str) -> BoxFuture<'static, std::io::Result<Vec<IpAddr>>> {
        let host = format!("{host}:0");
        Box::pin(async move {
            Ok(tokio::net::lookup_host(host)
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Why an address is refused, if it is.
pub fn refused(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let metadata = [
        IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
        IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    ];
    if metadata.contains(&ip) {
        return Some("a cloud metadata address");
    }
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_link_local() {
                return Some("a link-local address");
            }
            if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || a == 0 {
                return Some("not a unicast address");
            }
            let private =
                v4.is_loopback() || v4.is_private() || (a == 100 && (64..128).contains(&b));
            (private && !allow_private).then_some("a loopback or private address")
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if (first & 0xffc0) == 0xfe80 {
                return Some("a link-local address");
            }
            if v6.is_unspecified() || v6.is_multicast() {
                return Some("not a unicast address");
            }
            let private = v6.is_loopback() || (first & 0xfe00) == 0xfc00;
            (private && !allow_private).then_some("a loopback or private address")
        }
    }
}

/// reqwest's resolver: the configured one, keeping only the addresses a webhook may reach.
struct GuardedResolver {
    inner: Arc<RwLock<Arc<dyn HostResolver>>>,
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ips = resolver.resolve(&host).await?;
            let mut why = "no address";
            let allowed: Vec<SocketAddr> = ips
                .into_iter()
                .filter(|ip| match refused(*ip, allow_private) {
                    Some(reason) => {
                        why = reason;
                        false
                    }
                    None => true,
                })
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused(format!(
                    "the host resolves to {why}, which webhooks may not reach"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The delivery side: the HTTP client (with the outbound guard) and the worker's wake-up.
pub struct Webhooks {
    http: reqwest::Client,
    resolver: Arc<RwLock<Arc<dyn HostResolver>>>,
    kick: Notify,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

impl Webhooks {
    pub fn new(allow_private: bool, timeout: Duration) -> Result<Self, reqwest::Error> {
        let resolver: Arc<RwLock<Arc<dyn HostResolver>>> =
            Arc::new(RwLock::new(Arc::new(SystemResolver)));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .user_agent(concat!("coffer-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver {
                inner: resolver.clone(),
                allow_private,
            }))
            .build()?;
        Ok(Self {
            http,
            resolver,
            kick: Notify::new(),
        })
    }

    /// Resolves host names with `resolver` from now on.
    pub fn set_resolver(&self, resolver: Arc<dyn HostResolver>) {
        *self
            .resolver
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = resolver;
    }

    /// Wakes the delivery worker of this replica.
    pub fn kick(&self) {
        self.kick.notify_one();
    }
}

/// A new signing secret: `whsec_` and 32 random bytes in base64url.
fn new_secret() -> SecretString {
    use base64::Engine as _;
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut *bytes);
    SecretString::from(format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*bytes)
    ))
}

fn aad(row: &WebhookRow, generation: i64) -> ValueAad {
    ValueAad {
        org_id: row.org_id.to_string(),
        project_id: row.project_id.to_string(),
        environment_id: String::new(),
        key: row.id.clone(),
        version: generation,
        field: SECRET_FIELD,
    }
}

/// The webhook's signing secrets: the current one, and the previous one while it still signs.
async fn open_secrets(
    state: &AppState,
    row: &WebhookRow,
    now: Timestamp,
) -> ApiResult<Vec<SecretString>> {
    let mut sealed = vec![(
        row.secret_dek_id.as_str(),
        &row.secret_ct,
        row.secret_generation,
    )];
    if let (Some(dek), Some(ct), Some(until)) = (
        &row.previous_dek_id,
        &row.previous_ct,
        row.previous_expires_at,
    ) && until > now
    {
        sealed.push((dek.as_str(), ct, row.secret_generation - 1));
    }
    let mut out = Vec::with_capacity(sealed.len());
    for (dek_id, ct, generation) in sealed {
        let dek =
            crate::service::secrets::project_dek(state, row.org_id, row.project_id, dek_id).await?;
        let plain = dek
            .open(ct, &aad(row, generation))
            .map_err(|e| ApiError::internal(anyhow::anyhow!("webhook secret: {e}")))?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| ApiError::internal(anyhow::anyhow!("webhook secret is not UTF-8")))?;
        out.push(SecretString::from(text.to_owned()));
    }
    Ok(out)
}

/// `t=<t>,v1=<hex>[,v1=<hex>]`: one signature per secret.
pub fn signature(secrets: &[SecretString], t: i64, body: &str) -> String {
    let mut header = format!("t={t}");
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
            continue;
        };
        mac.update(format!("{t}.").as_bytes());
        mac.update(body.as_bytes());
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    header
}

fn to_api(row: &WebhookRow) -> Webhook {
    let envs = row
        .environments
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let events = row
        .events
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    Webhook {
        id: row.id.clone(),
        url: row.url.clone(),
        environments: envs,
        events,
        enabled: row.disabled_at.is_none(),
        disabled_reason: row.disabled_reason.clone(),
        consecutive_failures: row.consecutive_failures,
        previous_secret_expires_at: row.previous_expires_at.filter(|t| *t > Timestamp::now()),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// The address of a URL whose host is one (not a name).
fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Checks a webhook URL: `http` or `https`, a host, no credentials, at most [`MAX_URL_LEN`];
/// a literal address must be one webhooks may reach.
fn check_url(state: &AppState, url: &str) -> ApiResult<String> {
    let invalid = |why: String| ApiError::validation("invalid_url", why);
    if url.chars().count() > MAX_URL_LEN {
        return Err(invalid(format!("the URL is over {MAX_URL_LEN} characters")));
    }
    check_url_text(url).map_err(|why| invalid(why.into()))?;
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the URL must be http:// or https://".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("the URL may not hold credentials".into()));
    }
    if parsed.host().is_none() {
        return Err(invalid("the URL has no host".into()));
    }
    let ip = literal_ip(&parsed);
    if let Some(ip) = ip
        && let Some(why) = refused(ip, state.config.webhook_allow_private)
    {
        return Err(ApiError::validation(
            "url_not_allowed",
            format!("the URL's address is {why}, which webhooks may not reach"),
        ));
    }
    Ok(parsed.to_string())
}

/// What `coffer_client::types::formats::WebhookUrl` documents, on the URL as sent: the parser
/// would forgive more (spaces around it, `HTTP:host`, `\\` for `/`), and a document can say
/// exactly this much.
fn check_url_text(url: &str) -> Result<(), &'static str> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err("the URL must start with http:// or https://");
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL may not hold spaces or control characters");
    }
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err("the URL has no host");
    }
    if authority.contains('@') {
        return Err("the URL may not hold credentials");
    }
    Ok(())
}

fn check_filters(envs: Option<&Vec<String>>, project_envs: &[String]) -> ApiResult<Option<String>> {
    let Some(envs) = envs else { return Ok(None) };
    let set: BTreeSet<&String> = envs.iter().collect();
    if envs.is_empty() || envs.len() > crate::service::projects::MAX_ENVIRONMENTS {
        return Err(ApiError::validation(
            "invalid_environments",
            "environments lists 1 to 100 environment slugs (or is absent: all of them)",
        ));
    }
    if let Some(missing) = set.iter().find(|e| !project_envs.contains(e)) {
        return Err(ApiError::validation(
            "unknown_environment",
            format!("the project has no environment `{missing}`"),
        ));
    }
    Ok(Some(
        serde_json::to_string(&set).map_err(ApiError::internal)?,
    ))
}

fn events_filter(events: Option<&Vec<EventType>>) -> ApiResult<Option<String>> {
    match events {
        None => Ok(None),
        Some(e) if e.is_empty() => Err(ApiError::validation(
            "invalid_events",
            "events lists at least one event type (or is absent: all of them)",
        )),
        Some(e) => {
            let set: BTreeSet<&str> = e.iter().map(|t| t.as_str()).collect();
            Ok(Some(
                serde_json::to_string(&set).map_err(ApiError::internal)?,
            ))
        }
    }
}

async fn project_ctx(
    state: &AppState,
    principal: &Principal,
    org: &str,
    project: &str,
) -> ApiResult<ProjectCtx> {
    tenancy::project(state, principal, org, project, Action::ProjectUpdate).await
}

async fn env_slugs(state: &AppState, ctx: &ProjectCtx) -> ApiResult<Vec<String>> {
    Ok(db::projects::environments(state.db.pool(), ctx.project.id)
        .await?
        .into_iter()
        .map(|e| e.slug)
        .collect())
}

fn audit(
    meta: &ClientMeta,
    principal: &Principal,
    ctx: &ProjectCtx,
    what: &'static str,
    id: &str,
) -> AuditEvent {
    AuditEvent::new(what, Outcome::Success, meta)
        .by(principal)
        .org(ctx.org.org.id)
        .project(ctx.project.id)
        .target("webhook", id)
}

/// Seals `secret` for `row` at `generation` with the project's current data key.
async fn seal(
    state: &AppState,
    tx: &mut db::Tx,
    row: &WebhookRow,
    ctx: &ProjectCtx,
    secret: &SecretString,
    generation: i64,
) -> ApiResult<(String, Vec<u8>)> {
    crate::service::secrets::seal_with_project_key(
        state,
        tx,
        ctx,
        secret.expose_secret().as_bytes(),
        &aad(row, generation),
    )
    .await
}

/// Creates a webhook; its signing secret is in the answer only.
pub async fn create(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    request: CreateWebhookRequest,
) -> ApiResult<(Webhook, SecretString)> {
    let ctx = project_ctx(state, principal, org, project).await?;
    let url = check_url(state, &request.url)?;
    let environments = check_filters(
        request.environments.as_ref(),
        &env_slugs(state, &ctx).await?,
    )?;
    let events = events_filter(request.events.as_ref())?;
    let now = Timestamp::now();
    let secret = new_secret();
    let mut tx = state.db.begin().await?;
    if db::webhooks::count(&mut *tx, ctx.project.id).await? >= MAX_WEBHOOKS_PER_PROJECT {
        return Err(ApiError::validation(
            "too_many_webhooks",
            format!("a project has at most {MAX_WEBHOOKS_PER_PROJECT} webhooks"),
        ));
    }
    let mut row = WebhookRow {
        id: uuid::Uuid::now_v7().to_string(),
        org_id: ctx.org.org.id,
        project_id: ctx.project.id,
        url,
        environments,
        events,
        secret_dek_id: String::new(),
        secret_ct: Vec::new(),
        secret_generation: 1,
        previous_dek_id: None,
        previous_ct: None,
        previous_expires_at: None,
        created_after_event: {
            db::webhooks::hold_dispatch(&mut tx).await?;
            db::events::head(&mut *tx).await?
        },
        consecutive_failures: 0,
        disabled_at: (request.enabled == Some(false)).then_some(now),
        disabled_reason: (request.enabled == Some(false))
            .then(|| "disabled when created".to_owned()),
        created_by: Some(principal.user_id),
        created_at: now,
        updated_at: now,
    };
    (row.secret_dek_id, row.secret_ct) = seal(state, &mut tx, &row, &ctx, &secret, 1).await?;
    db::webhooks::insert(&mut *tx, &row).await?;
    audit(meta, principal, &ctx, action::CREATED, &row.id)
        .details(json!({ "url": row.url }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    state.webhooks.kick();
    Ok((to_api(&row), secret))
}

async fn load(state: &AppState, ctx: &ProjectCtx, id: &str) -> ApiResult<WebhookRow> {
    db::webhooks::get(state.db.pool(), ctx.project.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))
}

pub async fn list(
    state: &AppState,
    principal: &Principal,
    org: &str,
    project: &str,
    after: Option<String>,
    limit: u32,
) -> ApiResult<Vec<Webhook>> {
    let ctx = project_ctx(state, principal, org, project).await?;
    let rows = db::webhooks::list(
        state.db.pool(),
        ctx.project.id,
        after.as_deref(),
        i64::from(limit) + 1,
    )
    .await?;
    Ok(rows.iter().map(to_api).collect())
}

pub async fn get(
    state: &AppState,
    principal: &Principal,
    org: &str,
    project: &str,
    id: &str,
) -> ApiResult<Webhook> {
    let ctx = project_ctx(state, principal, org, project).await?;
    Ok(to_api(&load(state, &ctx, id).await?))
}

pub async fn update(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    id: &str,
    request: UpdateWebhookRequest,
) -> ApiResult<Webhook> {
    let ctx = project_ctx(state, principal, org, project).await?;
    let mut row = load(state, &ctx, id).await?;
    if let Some(url) = &request.url {
        row.url = check_url(state, url)?;
    }
    if let Some(envs) = &request.environments {
        row.environments = check_filters(envs.as_ref(), &env_slugs(state, &ctx).await?)?;
    }
    if let Some(events) = &request.events {
        row.events = events_filter(events.as_ref())?;
    }
    let now = Timestamp::now();
    let mut reenabled = false;
    match request.enabled {
        Some(true) if row.disabled_at.is_some() => {
            row.disabled_at = None;
            row.disabled_reason = None;
            row.consecutive_failures = 0;
            reenabled = true;
        }
        Some(false) if row.disabled_at.is_none() => {
            row.disabled_at = Some(now);
            row.disabled_reason = Some("disabled by a project admin".into());
        }
        _ => {}
    }
    row.updated_at = now;
    let mut tx = state.db.begin().await?;
    if reenabled {
        // Enabled again: it gets the events from now on (those while it was disabled were
        // never queued for it).
        db::webhooks::hold_dispatch(&mut tx).await?;
        row.created_after_event = db::events::head(&mut *tx).await?;
    }
    if !db::webhooks::update(&mut *tx, &row).await? {
        return Err(ApiError::not_found("webhook"));
    }
    audit(meta, principal, &ctx, action::UPDATED, &row.id)
        .details(json!({ "url": row.url, "enabled": row.disabled_at.is_none() }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    state.webhooks.kick();
    Ok(to_api(&row))
}

pub async fn delete(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    id: &str,
) -> ApiResult<()> {
    let ctx = project_ctx(state, principal, org, project).await?;
    let mut tx = state.db.begin().await?;
    if !db::webhooks::delete(&mut *tx, ctx.project.id, id).await? {
        return Err(ApiError::not_found("webhook"));
    }
    audit(meta, principal, &ctx, action::DELETED, id)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Gives the webhook a new signing secret; the previous one signs too for `overlap`.
pub async fn rotate_secret(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    id: &str,
    overlap: Option<u64>,
) -> ApiResult<(SecretString, Option<Timestamp>)> {
    let overlap = overlap.map_or(DEFAULT_OVERLAP, Duration::from_secs);
    if overlap > MAX_OVERLAP {
        return Err(ApiError::validation(
            "invalid_overlap",
            format!("overlap_seconds is at most {}", MAX_OVERLAP.as_secs()),
        ));
    }
    let ctx = project_ctx(state, principal, org, project).await?;
    let mut row = load(state, &ctx, id).await?;
    let now = Timestamp::now();
    let secret = new_secret();
    let mut tx = state.db.begin().await?;
    row.previous_dek_id = Some(row.secret_dek_id.clone());
    row.previous_ct = Some(std::mem::take(&mut row.secret_ct));
    row.previous_expires_at = (!overlap.is_zero()).then(|| now.plus(overlap));
    row.secret_generation += 1;
    (row.secret_dek_id, row.secret_ct) =
        seal(state, &mut tx, &row, &ctx, &secret, row.secret_generation).await?;
    row.updated_at = now;
    if !db::webhooks::update(&mut *tx, &row).await? {
        return Err(ApiError::not_found("webhook"));
    }
    audit(meta, principal, &ctx, action::SECRET_ROTATED, &row.id)
        .details(json!({ "overlap_seconds": overlap.as_secs() }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((secret, row.previous_expires_at))
}

/// Re-seals the signing secrets of the project's webhooks with `new` (a data-key rotation, in
/// its transaction); how many encryptions that made. `old` caches the DEKs opened so far.
pub async fn reseal_secrets(
    state: &AppState,
    tx: &mut db::Tx,
    (org, project): (crate::ids::OrgId, crate::ids::ProjectId),
    (new_id, new): (&str, &Dek),
    old: &mut HashMap<String, Arc<Dek>>,
) -> ApiResult<i64> {
    let mut seals = 0;
    for mut row in db::webhooks::of_project(&mut **tx, project).await? {
        for dek_id in std::iter::once(&row.secret_dek_id).chain(row.previous_dek_id.as_ref()) {
            if !old.contains_key(dek_id) {
                let dek = crate::service::secrets::project_dek(state, org, project, dek_id).await?;
                old.insert(dek_id.clone(), dek);
            }
        }
        let mut reseal = |dek_id: &str, ct: &[u8], generation: i64| -> ApiResult<Vec<u8>> {
            let dek = old.get(dek_id).ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("webhook secret: no data key"))
            })?;
            let plain = dek
                .open(ct, &aad(&row, generation))
                .map_err(|e| ApiError::internal(anyhow::anyhow!("webhook secret: {e}")))?;
            seals += 1;
            Ok(new.seal(&plain, &aad(&row, generation)))
        };
        let current = reseal(&row.secret_dek_id, &row.secret_ct, row.secret_generation)?;
        let previous = match (&row.previous_dek_id, &row.previous_ct) {
            (Some(dek), Some(ct)) => Some(reseal(dek, ct, row.secret_generation - 1)?),
            _ => None,
        };
        row.secret_ct = current;
        row.secret_dek_id = new_id.to_owned();
        if let Some(previous) = previous {
            row.previous_ct = Some(previous);
            row.previous_dek_id = Some(new_id.to_owned());
        }
        db::webhooks::update(&mut **tx, &row).await?;
    }
    Ok(seals)
}

/// Queues a delivery of `kind` with `body` for the webhook now; its id.
async fn queue_now(
    state: &AppState,
    row: &WebhookRow,
    event_id: Option<i64>,
    kind: &str,
    body: String,
    audit_event: Option<AuditEvent>,
) -> ApiResult<String> {
    let id = uuid::Uuid::now_v7().to_string();
    let delivery = NewDelivery {
        id: id.clone(),
        webhook_id: row.id.clone(),
        event_id,
        kind: kind.to_owned(),
        body,
    };
    let mut tx = state.db.begin().await?;
    if db::webhooks::pending_count(&mut *tx, &row.id).await? >= MAX_PENDING_PER_WEBHOOK {
        return Err(ApiError::Unavailable {
            message: "this webhook has as many deliveries waiting as it may; try again later"
                .into(),
            retry_after: Some(POLL_EVERY),
        });
    }
    db::webhooks::enqueue(&mut tx, std::slice::from_ref(&delivery), Timestamp::now()).await?;
    if let Some(event) = audit_event {
        event.record(&mut *tx).await?;
    }
    tx.commit().await?;
    state.webhooks.kick();
    Ok(id)
}

/// Sends the webhook a `ping` (its body: `{"type":"ping","webhook":…,"time":…}`).
pub async fn ping(
    state: &AppState,
    principal: &Principal,
    org: &str,
    project: &str,
    id: &str,
) -> ApiResult<String> {
    let ctx = project_ctx(state, principal, org, project).await?;
    let row = load(state, &ctx, id).await?;
    let body = json!({ "type": "ping", "webhook": row.id, "time": Timestamp::now() }).to_string();
    queue_now(state, &row, None, "ping", body, None).await
}

/// Queues a delivery again (as a new delivery with the same body).
pub async fn redeliver(
    state: &AppState,
    meta: &ClientMeta,
    principal: &Principal,
    org: &str,
    project: &str,
    id: &str,
    delivery: &str,
) -> ApiResult<String> {
    let ctx = project_ctx(state, principal, org, project).await?;
    let row = load(state, &ctx, id).await?;
    let old = db::webhooks::delivery(state.db.pool(), &row.id, delivery)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    let event = audit(meta, principal, &ctx, action::REDELIVERED, &row.id)
        .details(json!({ "delivery": old.id, "event": old.event_id }));
    queue_now(state, &row, old.event_id, &old.kind, old.body, Some(event)).await
}

/// A page of the webhook's attempts, newest first.
pub async fn attempts(
    state: &AppState,
    principal: &Principal,
    org: &str,
    project: &str,
    id: &str,
    before: Option<String>,
    limit: u32,
) -> ApiResult<Vec<(WebhookAttempt, String)>> {
    let ctx = project_ctx(state, principal, org, project).await?;
    let row = load(state, &ctx, id).await?;
    let rows = db::webhooks::attempts(
        state.db.pool(),
        &row.id,
        before.as_deref(),
        i64::from(limit) + 1,
    )
    .await?;
    let out = rows
        .into_iter()
        .map(|logged| {
            let a = logged.attempt;
            let status = match (a.response_status, a.next_attempt_at) {
                (Some(s), _) if (200..300).contains(&s) => "succeeded",
                (_, Some(_)) => "retrying",
                _ => "failed",
            };
            let cursor = a.id.clone();
            let attempt = WebhookAttempt {
                id: a.id,
                delivery_id: a.delivery_id,
                event_id: logged.event_id,
                kind: logged.kind,
                attempt: a.attempt,
                status: status.to_owned(),
                started_at: a.started_at,
                duration_ms: a.duration_ms,
                response_status: a.response_status,
                response_body: a.response_body,
                error: a.error,
                next_attempt_at: a.next_attempt_at,
            };
            (attempt, cursor)
        })
        .collect();
    Ok(out)
}

/// Whether `event` is one `webhook` wants.
fn wants(webhook: &WebhookRow, event_id: i64, kind: &str, environment: &str) -> bool {
    let listed = |list: &Option<String>, item: &str| {
        list.as_deref().is_none_or(|l| {
            serde_json::from_str::<Vec<String>>(l).is_ok_and(|v| v.iter().any(|x| x == item))
        })
    };
    event_id > webhook.created_after_event
        && listed(&webhook.events, kind)
        && listed(&webhook.environments, environment)
}

/// Gives the events recorded since the last round their deliveries; false when there was
/// nothing to do (or another replica is doing it).
pub async fn dispatch(state: &AppState) -> ApiResult<bool> {
    // Reads first: a server without webhooks, or whose events none wants, writes nothing.
    let pool = state.db.pool();
    let Some(start) = db::webhooks::dispatch_start(pool).await? else {
        return Ok(false);
    };
    if !db::webhooks::undispatched(pool, start).await? {
        return Ok(false);
    }
    let mut tx = state.db.begin().await?;
    if db::webhooks::lock_dispatch(&mut tx).await?.is_none() {
        return Ok(false);
    }
    let Some(start) = db::webhooks::dispatch_start(&mut *tx).await? else {
        return Ok(false);
    };
    let events = db::webhooks::events_after(&mut *tx, start, 500).await?;
    let Some(newest) = events.last().map(|e| e.id) else {
        return Ok(false);
    };
    let mut projects: Vec<_> = events.iter().map(|e| e.project_id).collect();
    projects.sort_unstable();
    projects.dedup();
    let hooks = db::webhooks::enabled_of(&mut tx, &projects).await?;
    let mut deliveries = Vec::new();
    let mut pending: HashMap<String, i64> = HashMap::new();
    for event in &events {
        let environment = serde_json::from_str::<serde_json::Value>(&event.body)
            .ok()
            .and_then(|v| v["environment"].as_str().map(str::to_owned))
            .unwrap_or_default();
        for hook in hooks.iter().filter(|h| h.project_id == event.project_id) {
            if !wants(hook, event.id, &event.kind, &environment) {
                continue;
            }
            let queued = match pending.get(&hook.id) {
                Some(n) => *n,
                None => db::webhooks::pending_count(&mut *tx, &hook.id).await?,
            };
            if queued >= MAX_PENDING_PER_WEBHOOK {
                tracing::warn!(webhook = %hook.id, "a webhook's queue is full; an event is not queued for it");
                continue;
            }
            pending.insert(hook.id.clone(), queued + 1);
            let body = crate::service::events::with_id(event.id, &event.body);
            deliveries.push(NewDelivery {
                id: uuid::Uuid::now_v7().to_string(),
                webhook_id: hook.id.clone(),
                event_id: Some(event.id),
                kind: event.kind.clone(),
                body,
            });
        }
    }
    db::webhooks::enqueue(&mut tx, &deliveries, Timestamp::now()).await?;
    db::webhooks::set_dispatched(&mut *tx, newest).await?;
    tx.commit().await?;
    Ok(true)
}

/// The wait before attempt `attempt + 1` (after `attempt` failed): exponential from the
/// configured base, capped, with ±20 % jitter; `None` after the last attempt.
fn backoff(state: &AppState, attempt: i64) -> Option<Duration> {
    let config = &state.config;
    if attempt >= i64::from(config.webhook_max_attempts) {
        return None;
    }
    let exponent = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(30);
    let base = config
        .webhook_retry_base_ms
        .saturating_mul(1u64 << exponent);
    let capped = base.min(config.webhook_retry_max_ms);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    Some(Duration::from_millis((capped as f64 * jitter) as u64))
}

/// What one attempt got.
struct Answer {
    status: Option<u16>,
    body: Option<String>,
    error: Option<String>,
}

async fn send(state: &AppState, hook: &WebhookRow, delivery: &Claimed, now: Timestamp) -> Answer {
    let failed = |error: String| Answer {
        status: None,
        body: None,
        error: Some(error),
    };
    let secrets = match open_secrets(state, hook, now).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, webhook = %hook.id, "cannot open a webhook's signing secret");
            return failed("the signing secret cannot be opened".into());
        }
    };
    // A literal address is not resolved: it is checked here (it may have been saved before the
    // rules or the setting changed).
    if let Ok(url) = reqwest::Url::parse(&hook.url) {
        let ip = literal_ip(&url);
        if let Some(why) = ip.and_then(|ip| refused(ip, state.config.webhook_allow_private)) {
            return failed(format!(
                "the URL's address is {why}, which webhooks may not reach"
            ));
        }
    }
    let t = now.millis() / 1000;
    let mut request = state
        .webhooks
        .http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("coffer-webhook-id", &hook.id)
        .header("coffer-signature", signature(&secrets, t, &delivery.body))
        .body(delivery.body.clone());
    if let Some(event) = delivery.event_id {
        request = request.header("coffer-event-id", event.to_string());
    }
    let mut response = match request.send().await {
        Ok(r) => r,
        Err(e) => return failed(describe(&e)),
    };
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while body.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(MAX_RESPONSE_BYTES);
    let mut text = String::from_utf8_lossy(&body).into_owned();
    if text.ends_with('\u{fffd}') {
        text.pop();
    }
    Answer {
        status: Some(status),
        body: (!text.is_empty()).then_some(text),
        error: None,
    }
}

/// An HTTP error in a few words, without the URL (which may hold the receiver's tokens).
fn describe(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return r.0.clone();
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else if e.is_redirect() {
        "redirects are not followed".into()
    } else {
        "the request failed".into()
    }
}

/// Sends one claimed delivery and records the attempt.
async fn deliver(state: &AppState, delivery: Claimed) -> ApiResult<()> {
    let Some(hook) = db::webhooks::by_id(state.db.pool(), &delivery.webhook_id).await? else {
        return Ok(());
    };
    let started = Timestamp::now();
    let clock = std::time::Instant::now();
    let outcome = send(state, &hook, &delivery, started).await;
    let duration = i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX);
    let succeeded = outcome.status.is_some_and(|s| (200..300).contains(&s));
    if !succeeded {
        state.metrics.webhook_failures.inc();
    }
    let attempt = delivery.attempts + 1;
    let now = Timestamp::now();
    let next = if succeeded {
        None
    } else {
        backoff(state, attempt).map(|d| now.plus(d))
    };
    let row = AttemptRow {
        id: uuid::Uuid::now_v7().to_string(),
        delivery_id: delivery.id.clone(),
        webhook_id: hook.id.clone(),
        attempt,
        started_at: started,
        duration_ms: duration,
        response_status: outcome.status.map(i64::from),
        response_body: outcome.body,
        error: outcome.error,
        next_attempt_at: next,
    };
    let mut tx = state.db.begin().await?;
    db::webhooks::record_attempt(&mut tx, &row, succeeded, now).await?;
    let failures = db::webhooks::count_outcome(&mut tx, &hook.id, succeeded).await?;
    let limit = i64::from(state.config.webhook_disable_after);
    if !succeeded
        && failures >= limit
        && db::webhooks::disable(
            &mut *tx,
            &hook.id,
            &format!("disabled after {failures} failed attempts in a row"),
            now,
        )
        .await?
    {
        AuditEvent::system(action::DISABLED, Outcome::Success)
            .org(hook.org_id)
            .project(hook.project_id)
            .target("webhook", &hook.id)
            .details(json!({ "consecutive_failures": failures }))
            .record(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One round of the worker: dispatch what was recorded, then send what is due.
pub async fn work_once(state: &AppState) -> ApiResult<()> {
    while dispatch(state).await? {}
    let lease = Duration::from_millis(state.config.webhook_timeout_ms).saturating_mul(2)
        + Duration::from_secs(10);
    loop {
        let now = Timestamp::now();
        // Read first: an idle server writes nothing.
        if db::webhooks::next_due(state.db.pool())
            .await?
            .is_none_or(|due| due > now)
        {
            return Ok(());
        }
        let claimed = {
            let _turn = state.db.write_turn().await;
            let mut conn = state.db.pool().acquire().await?;
            db::webhooks::claim_due(&mut conn, now, now.plus(lease), CONCURRENT_DELIVERIES).await?
        };
        if claimed.is_empty() {
            return Ok(());
        }
        let results =
            futures::future::join_all(claimed.into_iter().map(|d| deliver(state, d))).await;
        for r in results {
            r?;
        }
    }
}

/// The delivery worker of this replica: woken by new events of projects with an enabled
/// webhook, pings and redeliveries, and at least every [`POLL_EVERY`] (or when the next retry is
/// due). Ends when the server stops.
pub async fn run_worker(state: AppState) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let mut wakes = state.db.event_wakes();
    // The projects with an enabled webhook, as of the last round: an event of another project
    // needs no round (no query). One created on another replica is seen at the next timed round;
    // meanwhile that replica's worker, which knows it, dispatches its events.
    let mut hooked: HashSet<ProjectId> = HashSet::new();
    loop {
        if state.db.pool().is_closed() {
            return;
        }
        match db::webhooks::hooked_projects(state.db.pool()).await {
            Ok(projects) => hooked = projects.into_iter().collect(),
            Err(e) => tracing::warn!(error = %e, "the webhook worker cannot list the webhooks"),
        }
        if let Err(e) = work_once(&state).await {
            tracing::warn!(error = %e, "the webhook worker failed a round");
        }
        let next_due = db::webhooks::next_due(state.db.pool()).await.ok().flatten();
        let wait = next_due.map_or(POLL_EVERY, |due| {
            Duration::from_millis(
                u64::try_from(due.millis() - Timestamp::now().millis()).unwrap_or(0),
            )
            .min(POLL_EVERY)
        });
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = state.shutdown.cancelled() => return,
                wake = wakes.recv() => match wake {
                    Ok(Wake::Project(p)) if !hooked.contains(&p) => continue,
                    Err(RecvError::Closed) => return,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                },
                () = state.webhooks.kick.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
            break;
        }
        // Events recorded meanwhile are dispatched by the same round.
        while !matches!(
            wakes.try_recv(),
            Err(TryRecvError::Empty | TryRecvError::Closed)
        ) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_http_or_https_with_a_host_and_nothing_the_parser_would_forgive() {
        for good in [
            "https://hooks.example.com/coffer",
            "http://10.0.0.1:8080",
            "https://h/a@b?c=d#e",
            "https://h\\x",
        ] {
            assert_eq!(check_url_text(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "ftp://h",
            "HTTPS://h",
            "https:h",
            " https://h",
            "https://h/a b",
            "https://h\n",
            "https://",
            "https:///x",
            "https://user@h",
            "https://@h",
            "https://u:p@h/",
        ] {
            assert!(check_url_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses_webhooks_may_reach() {
        let ip = |s: &str| {
            s.parse::<IpAddr>()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        };
        for always in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "100.100.100.200",
            "fd00:ec2::254",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(refused(ip(always), true).is_some(), "{always}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd12::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(refused(ip(private), false).is_some(), "{private}");
            assert!(refused(ip(private), true).is_none(), "{private}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1", "172.32.0.1"] {
            assert!(refused(ip(public), false).is_none(), "{public}");
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_of_time_and_body_per_secret() {
        let secrets = [SecretString::from("whsec_a"), SecretString::from("whsec_b")];
        let header = signature(&secrets, 1_700_000_000, "{}");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts.len(), 3);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_a").unwrap_or_else(|_| unreachable!());
        mac.update(b"1700000000.{}");
        assert_eq!(
            parts[1],
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        );
    }
}
