//! Change events: recorded in the transaction of every change of an environment's secrets or of
//! the environment itself, then read by a project's event streams (Server-Sent Events) and its
//! history. Never a value or a comment: keys, actions, revisions, who and when.
//!
//! A value that refers to another environment's secret (`${env.KEY}`, `${project.env.KEY}`)
//! changes when that secret does: the index of references ([`db::events::replace_references`],
//! kept with every write) tells which environments a change reaches, and each gets a
//! `secrets.changed` event of its own (`via_reference`), in the same transaction.
//!
//! Streams read events from the database, never from memory: a wake-up (this replica's commits,
//! other replicas' notifications, see [`db::events::Wake`]) only tells them to read on, and they
//! also read every [`POLL_EVERY`] should a notification be lost. A stream re-checks its caller's
//! credential and access to each environment every [`RECHECK_EVERY`] and whenever access may
//! have changed on this replica.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::Method;
use coffer_client::types::{
    Actor, ChangeAction, EnvironmentRevision, Event, EventType, KeyChange, LeaseEvent, Resync,
    ResyncReason,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::{Caller, Subject};
use crate::authz::Action;
use crate::db;
use crate::db::events::{EventRow, NewEvent, Referrer, Target, Wake};
use crate::db::projects::EnvironmentRow;
use crate::error::{ApiError, ApiResult};
use crate::ids::{EnvironmentId, OrgId, ProjectId, Timestamp};
use crate::secrets::references::{self, Place, Segment};
use crate::service::tenancy::{self, EnvCtx, EnvPath, ProjectCtx};
use crate::state::AppState;

/// A change reaches at most this many other environments through references; beyond, the
/// others are not told (and their readers see the change at their next poll).
pub const MAX_FAN_OUT: usize = 1_000;

/// How often a stream sends a heartbeat comment when it has nothing else to send.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// How often a stream reads the table whether or not it was woken.
pub const POLL_EVERY: Duration = Duration::from_secs(10);

/// How often a stream checks its caller's credential and access again.
pub const RECHECK_EVERY: Duration = Duration::from_secs(20);

/// How long a stream lasts: then it ends, and its client resumes from where it was.
pub const MAX_STREAM_LIFETIME: Duration = Duration::from_secs(3_600);

/// Events read per statement.
const PAGE: i64 = 200;

/// Events a stream may have sent but its client not yet taken.
const STREAM_BUFFER: usize = 64;

/// The actor of an event: who the caller is (never a token).
pub fn actor(who: &impl Subject) -> Actor {
    let (kind, id) = who.actor();
    Actor {
        kind: kind.to_owned(),
        id: Some(id),
    }
}

/// An event's JSON without its id, as stored.
fn body(event: &Event) -> ApiResult<String> {
    let mut value = serde_json::to_value(event).map_err(ApiError::internal)?;
    if let Some(object) = value.as_object_mut() {
        object.remove("id");
    }
    serde_json::to_string(&value).map_err(ApiError::internal)
}

/// A stored event's JSON with its id, as delivered.
pub(crate) fn with_id(id: i64, body: &str) -> String {
    match body.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => format!("{{\"id\":{id}}}"),
        Some(rest) => format!("{{\"id\":{id},{rest}"),
        None => body.to_owned(),
    }
}

/// Where a change happened: the organization and project, by id and slug.
#[derive(Debug, Clone, Copy)]
struct Origin<'a> {
    org: OrgId,
    org_slug: &'a str,
    project: ProjectId,
    project_slug: &'a str,
}

impl<'a> Origin<'a> {
    fn of(project: &'a ProjectCtx) -> Self {
        Self {
            org: project.org.org.id,
            org_slug: &project.org.org.slug,
            project: project.project.id,
            project_slug: &project.project.slug,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn new_event(
    origin: Origin<'_>,
    project: (ProjectId, &str),
    env: (EnvironmentId, &str),
    kind: EventType,
    revision: i64,
    changes: Vec<KeyChange>,
    via_reference: bool,
    name: Option<String>,
    actor: &Actor,
    now: Timestamp,
) -> ApiResult<NewEvent> {
    let event = Event {
        id: 0,
        kind,
        org: origin.org_slug.to_owned(),
        project: project.1.to_owned(),
        environment: env.1.to_owned(),
        revision,
        changes,
        via_reference,
        name,
        lease: None,
        actor: actor.clone(),
        time: now,
    };
    Ok(NewEvent {
        org_id: origin.org,
        project_id: project.0,
        environment_id: env.0,
        kind: kind.as_str(),
        revision,
        body: body(&event)?,
        created_at: now,
    })
}

/// Where a lease's event happened: the organization, project and environment (id and slug),
/// and the environment's current revision.
#[derive(Debug, Clone, Copy)]
pub struct LeaseOrigin<'a> {
    pub org: (OrgId, &'a str),
    pub project: (ProjectId, &'a str),
    pub environment: (EnvironmentId, &'a str),
    pub revision: i64,
}

/// Records a `lease.*` event of the environment at `at` (no fan-out: nothing refers to a lease).
pub fn lease(
    tx: &mut db::Tx,
    at: LeaseOrigin<'_>,
    kind: EventType,
    lease: LeaseEvent,
    actor: &Actor,
    now: Timestamp,
) -> ApiResult<()> {
    let event = Event {
        id: 0,
        kind,
        org: at.org.1.to_owned(),
        project: at.project.1.to_owned(),
        environment: at.environment.1.to_owned(),
        revision: at.revision,
        changes: Vec::new(),
        via_reference: false,
        name: None,
        lease: Some(lease),
        actor: actor.clone(),
        time: now,
    };
    tx.event(NewEvent {
        org_id: at.org.0,
        project_id: at.project.0,
        environment_id: at.environment.0,
        kind: kind.as_str(),
        revision: at.revision,
        body: body(&event)?,
        created_at: now,
    });
    Ok(())
}

/// Records that the secrets `changes` of the environment `ctx` changed, bringing it to
/// `revision`, and tells the environments whose values refer to them.
pub async fn secrets_changed(
    tx: &mut db::Tx,
    ctx: &EnvCtx,
    revision: i64,
    changes: Vec<KeyChange>,
    actor: &Actor,
    now: Timestamp,
) -> ApiResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let origin = Origin::of(&ctx.project);
    let keys: Vec<String> = changes.iter().map(|c| c.key.clone()).collect();
    tx.event(new_event(
        origin,
        (origin.project, origin.project_slug),
        (ctx.env.id, &ctx.env.slug),
        EventType::SecretsChanged,
        revision,
        changes,
        false,
        None,
        actor,
        now,
    )?);
    let start = Pattern {
        project: origin.project_slug.to_owned(),
        env: Some(ctx.env.slug.clone()),
        keys: Some(keys),
    };
    fan_out(tx, origin, start, Skip::Environment(ctx.env.id), actor, now).await
}

/// Records an event of the environment `env` itself (created, renamed, deleted). An environment
/// that appears or goes changes what references to its slug resolve to: those are told.
pub async fn environment_changed(
    tx: &mut db::Tx,
    project: &ProjectCtx,
    env: &EnvironmentRow,
    kind: EventType,
    actor: &Actor,
    now: Timestamp,
) -> ApiResult<()> {
    let origin = Origin::of(project);
    let name = matches!(
        kind,
        EventType::EnvironmentCreated | EventType::EnvironmentRenamed
    )
    .then(|| env.name.clone());
    tx.event(new_event(
        origin,
        (origin.project, origin.project_slug),
        (env.id, &env.slug),
        kind,
        env.revision,
        Vec::new(),
        false,
        name,
        actor,
        now,
    )?);
    if kind == EventType::EnvironmentRenamed {
        return Ok(());
    }
    let start = Pattern {
        project: origin.project_slug.to_owned(),
        env: Some(env.slug.clone()),
        keys: None,
    };
    fan_out(tx, origin, start, Skip::Environment(env.id), actor, now).await
}

/// Tells the environments of other projects whose values refer to the project being deleted.
pub async fn project_deleted(
    tx: &mut db::Tx,
    project: &ProjectCtx,
    actor: &Actor,
    now: Timestamp,
) -> ApiResult<()> {
    let origin = Origin::of(project);
    let start = Pattern {
        project: origin.project_slug.to_owned(),
        env: None,
        keys: None,
    };
    fan_out(tx, origin, start, Skip::Project(origin.project), actor, now).await
}

/// Places referred to: a project, one of its environments or any, some keys or any.
#[derive(Debug, Clone)]
struct Pattern {
    project: String,
    env: Option<String>,
    keys: Option<Vec<String>>,
}

/// What a fan-out leaves out: the environment (or project) where the change happened, which
/// has its own event (or is going away).
#[derive(Debug, Clone, Copy)]
enum Skip {
    Environment(EnvironmentId),
    Project(ProjectId),
}

/// Records a `secrets.changed` event (`via_reference`) for each environment whose values refer,
/// directly or through other references (up to [`references::MAX_DEPTH`] deep), to `start`.
async fn fan_out(
    tx: &mut db::Tx,
    origin: Origin<'_>,
    start: Pattern,
    skip: Skip,
    actor: &Actor,
    now: Timestamp,
) -> ApiResult<()> {
    let mut reached: BTreeMap<EnvironmentId, (Referrer, BTreeSet<String>)> = BTreeMap::new();
    let mut frontier = vec![start];
    let mut full = false;
    for _ in 0..references::MAX_DEPTH {
        let mut grown: BTreeMap<EnvironmentId, Vec<String>> = BTreeMap::new();
        for pattern in &frontier {
            let found = db::events::referrers(
                tx,
                origin.org,
                &pattern.project,
                pattern.env.as_deref(),
                pattern.keys.as_deref(),
            )
            .await?;
            for referrer in found {
                let skipped = match skip {
                    Skip::Environment(env) => referrer.environment_id == env,
                    Skip::Project(project) => referrer.project_id == project,
                };
                if skipped {
                    continue;
                }
                if !reached.contains_key(&referrer.environment_id) {
                    if reached.len() >= MAX_FAN_OUT {
                        full = true;
                        continue;
                    }
                    reached.insert(referrer.environment_id, (referrer.clone(), BTreeSet::new()));
                }
                let Some((_, keys)) = reached.get_mut(&referrer.environment_id) else {
                    continue;
                };
                if keys.insert(referrer.key.clone()) {
                    grown
                        .entry(referrer.environment_id)
                        .or_default()
                        .push(referrer.key);
                }
            }
        }
        frontier = grown
            .into_iter()
            .filter_map(|(env, keys)| {
                let (referrer, _) = reached.get(&env)?;
                Some(Pattern {
                    project: referrer.project_slug.clone(),
                    env: Some(referrer.env_slug.clone()),
                    keys: Some(keys),
                })
            })
            .collect();
        if frontier.is_empty() {
            break;
        }
    }
    if full {
        tracing::warn!(
            org = %origin.org,
            limit = MAX_FAN_OUT,
            "a change reaches more environments through references than are told of it"
        );
    }
    for (referrer, keys) in reached.into_values() {
        let changes = keys
            .into_iter()
            .map(|key| KeyChange {
                key,
                action: ChangeAction::Updated,
            })
            .collect();
        tx.event(new_event(
            origin,
            (referrer.project_id, &referrer.project_slug),
            (referrer.environment_id, &referrer.env_slug),
            EventType::SecretsChanged,
            referrer.revision,
            changes,
            true,
            None,
            actor,
            now,
        )?);
    }
    Ok(())
}

/// The other environments `value`, written at `project`/`env`, refers to.
fn targets(project: &str, env: &str, value: &str) -> Vec<Target> {
    if !references::has_references(value) {
        return Vec::new();
    }
    let origin = Place::new(project, env, "");
    let mut out: Vec<Target> = references::parse(value)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|segment| match segment {
            Segment::Ref(r) => {
                let place = r.place(&origin);
                (place.project != project || place.env != env).then_some(Target {
                    project: place.project,
                    env: place.env,
                    key: place.key,
                })
            }
            Segment::Literal(_) => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Keeps the index of references current for the secret `key` of `ctx` now holding `value`.
/// Written only when the value refers to something or its previous value did (`had`).
pub async fn index_references(
    tx: &mut db::Tx,
    ctx: &EnvCtx,
    key: &str,
    value: &SecretString,
    had: bool,
) -> ApiResult<()> {
    let value = value.expose_secret();
    if !had && !references::has_references(value) {
        return Ok(());
    }
    let targets = targets(&ctx.project.project.slug, &ctx.env.slug, value);
    db::events::replace_references(tx, ctx.project.org.org.id, ctx.env.id, key, &targets).await?;
    Ok(())
}

/// The key changes of a write, from what it created and updated.
pub fn written(created: &[String], updated: &[String]) -> Vec<KeyChange> {
    let change = |action| {
        move |key: &String| KeyChange {
            key: key.clone(),
            action,
        }
    };
    created
        .iter()
        .map(change(ChangeAction::Created))
        .chain(updated.iter().map(change(ChangeAction::Updated)))
        .collect()
}

/// Indexes the references of values written before the index existed. Runs once at start, in
/// the background; a value it cannot open is left alone (and said so).
pub async fn index_unindexed_references(state: AppState) {
    let mut after = None;
    let mut indexed = 0usize;
    loop {
        let batch = match db::events::unindexed(state.db.pool(), after.clone(), 100).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "indexing references: cannot list secrets");
                return;
            }
        };
        let Some(last) = batch.last() else { break };
        after = Some((last.environment_id, last.key.clone()));
        for secret in batch {
            match index_one(&state, &secret).await {
                Ok(()) => indexed += 1,
                Err(e) => tracing::warn!(
                    error = %e,
                    environment = %secret.environment_id,
                    "indexing references: cannot index a secret"
                ),
            }
        }
    }
    if indexed > 0 {
        tracing::info!(
            secrets = indexed,
            "indexed the references of existing secrets"
        );
    }
}

async fn index_one(state: &AppState, secret: &db::events::Unindexed) -> ApiResult<()> {
    let value = crate::service::secrets::current_raw_value(
        state,
        secret.org_id,
        secret.project_id,
        secret.environment_id,
        &secret.key,
    )
    .await?;
    let Some(value) = value else { return Ok(()) };
    let targets = targets(
        &secret.project_slug,
        &secret.env_slug,
        value.expose_secret(),
    );
    let mut tx = state.db.begin().await?;
    db::events::replace_references(
        &mut tx,
        secret.org_id,
        secret.environment_id,
        &secret.key,
        &targets,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes events, and finished webhook deliveries, older than the retention; run in the
/// background. How many events it deleted.
pub async fn prune_expired(state: &AppState) -> ApiResult<u64> {
    let cutoff = Timestamp::now().minus(state.config.event_retention());
    let mut total = 0;
    // Each step reads before it writes: an idle server writes nothing.
    while db::events::any_before(state.db.pool(), cutoff).await? {
        let mut tx = state.db.begin().await?;
        let deleted = db::events::prune(&mut tx, cutoff, 5_000).await?;
        tx.commit().await?;
        total += deleted;
        if deleted < 5_000 {
            break;
        }
        tokio::task::yield_now().await;
    }
    if db::webhooks::any_finished_before(state.db.pool(), cutoff).await? {
        let mut tx = state.db.begin().await?;
        db::webhooks::prune(&mut *tx, cutoff).await?;
        tx.commit().await?;
    }
    Ok(total)
}

/// The environments of a project that the caller may read, by id; only those named in `wanted`
/// when given. `strict`: a named environment that does not exist or may not be read is an error
/// (as reading it would be), instead of being left out.
async fn readable(
    state: &AppState,
    caller: &Caller,
    org: &str,
    project: &str,
    wanted: Option<&BTreeSet<String>>,
    strict: bool,
) -> ApiResult<(ProjectCtx, BTreeMap<EnvironmentId, EnvironmentRow>)> {
    let (ctx, allowed, _) = readable_of_all(state, caller, org, project, wanted, strict).await?;
    Ok((ctx, allowed))
}

/// [`readable`], and every environment the project has.
async fn readable_of_all(
    state: &AppState,
    caller: &Caller,
    org: &str,
    project: &str,
    wanted: Option<&BTreeSet<String>>,
    strict: bool,
) -> ApiResult<(
    ProjectCtx,
    BTreeMap<EnvironmentId, EnvironmentRow>,
    BTreeSet<EnvironmentId>,
)> {
    let ctx = tenancy::project(state, caller, org, project, Action::ProjectRead).await?;
    let envs = db::projects::environments(state.db.pool(), ctx.project.id).await?;
    let existing = envs.iter().map(|e| e.id).collect();
    if strict
        && let Some(wanted) = wanted
        && wanted.iter().any(|w| !envs.iter().any(|e| &e.slug == w))
    {
        return Err(ApiError::not_found("environment"));
    }
    let mut out = BTreeMap::new();
    for env in envs {
        if wanted.is_some_and(|w| !w.contains(&env.slug)) {
            continue;
        }
        let at = EnvPath {
            org,
            project,
            env: &env.slug,
        };
        match tenancy::environment(state, caller, at, Action::SecretsRead).await {
            Ok(_) => {
                out.insert(env.id, env);
            }
            Err(e @ (ApiError::NotFound { .. } | ApiError::Forbidden { .. })) => {
                if strict && wanted.is_some() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok((ctx, out, existing))
}

/// `?environments=a,b`: slugs, at most as many as a project may have.
pub fn parse_wanted(list: Option<&str>) -> ApiResult<Option<BTreeSet<String>>> {
    let Some(list) = list else { return Ok(None) };
    let wanted: BTreeSet<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if wanted.is_empty() || wanted.len() > crate::service::projects::MAX_ENVIRONMENTS {
        return Err(ApiError::validation(
            "invalid_environments",
            format!(
                "`environments` lists 1 to {} environment slugs, separated by commas",
                crate::service::projects::MAX_ENVIRONMENTS
            ),
        ));
    }
    for slug in &wanted {
        tenancy::check_slug(slug, "environment")?;
    }
    Ok(Some(wanted))
}

fn to_event(row: &EventRow) -> ApiResult<Event> {
    serde_json::from_str(&with_id(row.id, &row.body)).map_err(ApiError::internal)
}

/// A page of the project's events after `after`, oldest first, of the environments the caller
/// may read (and names in `wanted`); the cursor of the next page when there may be more.
pub async fn history(
    state: &AppState,
    caller: &Caller,
    org: &str,
    project: &str,
    wanted: Option<&BTreeSet<String>>,
    after: i64,
    limit: u32,
) -> ApiResult<(Vec<Event>, Option<String>)> {
    let (ctx, allowed) = readable(state, caller, org, project, wanted, true).await?;
    let envs: Vec<EnvironmentId> = allowed.keys().copied().collect();
    let rows = db::events::after(
        state.db.pool(),
        ctx.project.id,
        after,
        Some(&envs),
        i64::from(limit) + 1,
    )
    .await?;
    let more = rows.len() > limit as usize;
    let items = rows
        .iter()
        .take(limit as usize)
        .map(to_event)
        .collect::<ApiResult<Vec<_>>>()?;
    let next = more
        .then(|| items.last().map(|e| e.id.to_string()))
        .flatten();
    Ok((items, next))
}

/// One message of an event stream.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The SSE `id`: the event's id (for `resync`, the position the stream continues from).
    pub id: String,
    /// The SSE `event`: the event's type, or `resync`.
    pub event: &'static str,
    /// The SSE `data`: JSON.
    pub data: String,
}

/// Open event streams, counted against the configured limits.
#[derive(Debug, Default)]
pub struct StreamSlots {
    counts: Mutex<SlotCounts>,
}

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    orgs: HashMap<OrgId, usize>,
    credentials: HashMap<String, usize>,
}

/// A stream's place among the open ones; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    state: AppState,
    org: OrgId,
    credential: String,
}

impl StreamSlots {
    pub(crate) fn take(&self, state: &AppState, org: OrgId, credential: String) -> ApiResult<Slot> {
        let config = &state.config;
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let busy = |message: &'static str| ApiError::Unavailable {
            message: message.into(),
            retry_after: Some(Duration::from_secs(10)),
        };
        if counts.total >= config.event_streams_max as usize {
            return Err(busy(
                "this server has as many event streams open as it serves",
            ));
        }
        if counts.orgs.get(&org).copied().unwrap_or(0) >= config.event_streams_per_org as usize {
            return Err(ApiError::RateLimited {
                retry_after: Duration::from_secs(10),
            });
        }
        if counts.credentials.get(&credential).copied().unwrap_or(0)
            >= config.event_streams_per_credential as usize
        {
            return Err(ApiError::RateLimited {
                retry_after: Duration::from_secs(10),
            });
        }
        counts.total += 1;
        *counts.orgs.entry(org).or_default() += 1;
        *counts.credentials.entry(credential.clone()).or_default() += 1;
        Ok(Slot {
            state: state.clone(),
            org,
            credential,
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .state
            .event_streams
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.orgs.get_mut(&self.org) {
            *n -= 1;
            if *n == 0 {
                counts.orgs.remove(&self.org);
            }
        }
        if let Some(n) = counts.credentials.get_mut(&self.credential) {
            *n -= 1;
            if *n == 0 {
                counts.credentials.remove(&self.credential);
            }
        }
    }
}

/// What an event stream is asked for.
#[derive(Debug)]
pub struct StreamRequest {
    pub org: String,
    pub project: String,
    pub wanted: Option<BTreeSet<String>>,
    /// `Last-Event-ID` or `?after=`: deliver what comes after it.
    pub after: Option<i64>,
}

/// Opens an event stream: checks what [`history`] checks, takes a slot, and returns the
/// stream's messages as they come. `token` is the caller's bearer token, authenticated again
/// every [`RECHECK_EVERY`].
pub async fn open_stream(
    state: &AppState,
    caller: Caller,
    token: SecretString,
    request: StreamRequest,
) -> ApiResult<mpsc::Receiver<Frame>> {
    let (ctx, allowed) = readable(
        state,
        &caller,
        &request.org,
        &request.project,
        request.wanted.as_ref(),
        true,
    )
    .await?;
    let (kind, id) = caller.actor();
    let slot = state
        .event_streams
        .take(state, ctx.org.org.id, format!("{kind}:{id}"))?;
    // Subscribed before the position is read: nothing committed after it goes unnoticed.
    let wakes = state.db.event_wakes();
    let access = Changes::new(state);
    let (head, pruned) = {
        let pool = state.db.pool();
        (
            db::events::head(pool).await?,
            db::events::pruned_through(pool).await?,
        )
    };
    let mut stream = Stream {
        state: state.clone(),
        caller,
        token,
        request,
        project: ctx.project.id,
        allowed,
        cursor: head,
        _slot: slot,
    };
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    let resync = match stream.request.after {
        Some(after) if after >= pruned && after <= head => {
            stream.cursor = after;
            None
        }
        Some(_) => Some(ResyncReason::Expired),
        None => Some(ResyncReason::Start),
    };
    if let Some(reason) = resync {
        // The revisions are read after the position: none is older than it.
        stream.refresh_revisions().await?;
        let frame = stream.resync(reason)?;
        // The buffer is empty: this cannot wait.
        let _ = sender.try_send(frame);
    }
    tokio::spawn(run_feed(stream, sender, wakes, access));
    Ok(receiver)
}

/// A stream's source: what it delivers and how it checks its caller again.
pub(crate) trait Feed: Send {
    /// Sends what there is to send since the last call.
    fn deliver(
        &mut self,
        sender: &mpsc::Sender<Frame>,
    ) -> impl std::future::Future<Output = Result<(), End>> + Send;
    /// Checks the caller's credential and access again.
    fn recheck(&mut self) -> impl std::future::Future<Output = Result<(), End>> + Send;
    /// Whether `wake` may concern this stream.
    fn woken_by(&self, wake: Wake) -> bool;
    /// How often it reads when nothing woke it.
    fn poll_every(&self) -> Duration;
    fn state(&self) -> &AppState;
    /// For logs: what the stream is about.
    fn about(&self) -> String;
}

impl Feed for Stream {
    async fn deliver(&mut self, sender: &mpsc::Sender<Frame>) -> Result<(), End> {
        self.deliver_events(sender).await
    }
    async fn recheck(&mut self) -> Result<(), End> {
        self.recheck_access().await
    }
    fn woken_by(&self, wake: Wake) -> bool {
        match wake {
            Wake::Project(p) => p == self.project,
            Wake::All => true,
        }
    }
    fn poll_every(&self) -> Duration {
        POLL_EVERY
    }
    fn state(&self) -> &AppState {
        &self.state
    }
    fn about(&self) -> String {
        format!("project {}", self.project)
    }
}

/// What makes a stream check its caller's access at once: access changed (membership, roles,
/// grants, policies, revocations), or sessions ended.
pub(crate) struct Changes {
    access: tokio::sync::watch::Receiver<u64>,
    sessions: tokio::sync::watch::Receiver<u64>,
}

impl Changes {
    pub(crate) fn new(state: &AppState) -> Self {
        Self {
            access: state.access.changes(),
            sessions: state.sessions_ended.subscribe(),
        }
    }
}

/// Runs a stream until its client goes, the server stops, it has lasted
/// [`MAX_STREAM_LIFETIME`], or its caller may no longer read it.
pub(crate) async fn run_feed(
    mut feed: impl Feed,
    sender: mpsc::Sender<Frame>,
    mut wakes: tokio::sync::broadcast::Receiver<Wake>,
    mut changes: Changes,
) {
    let end = serve_feed(&mut feed, &sender, &mut wakes, &mut changes).await;
    if let Err(End::Refused(e)) = end {
        let about = feed.about();
        match e {
            ApiError::Internal(_) | ApiError::Unavailable { .. } => {
                tracing::warn!(error = %e, %about, "a stream ended");
            }
            e => tracing::debug!(error = %e, %about, "a stream ended"),
        }
    }
}

async fn serve_feed(
    feed: &mut impl Feed,
    sender: &mpsc::Sender<Frame>,
    wakes: &mut tokio::sync::broadcast::Receiver<Wake>,
    changes: &mut Changes,
) -> Result<(), End> {
    let ends_at = Instant::now() + MAX_STREAM_LIFETIME;
    let shutdown = feed.state().shutdown.clone();
    let mut recheck_at = Instant::now() + RECHECK_EVERY;
    feed.deliver(sender).await?;
    loop {
        let poll_at = Instant::now() + feed.poll_every();
        let mut read = false;
        tokio::select! {
            () = shutdown.cancelled() => return Err(End::Done),
            () = sender.closed() => return Err(End::Done),
            () = tokio::time::sleep_until(ends_at) => return Err(End::Done),
            wake = wakes.recv() => match wake {
                Ok(wake) => read = feed.woken_by(wake),
                Err(RecvError::Lagged(_)) => read = true,
                Err(RecvError::Closed) => return Err(End::Done),
            },
            changed = changes.access.changed() => {
                if changed.is_err() {
                    return Err(End::Done);
                }
                recheck_at = Instant::now();
            }
            changed = changes.sessions.changed() => {
                if changed.is_err() {
                    return Err(End::Done);
                }
                recheck_at = Instant::now();
            }
            () = tokio::time::sleep_until(poll_at.min(recheck_at)) => read = true,
        }
        if Instant::now() >= recheck_at {
            feed.recheck().await?;
            recheck_at = Instant::now() + RECHECK_EVERY;
            read = true;
        }
        if read {
            feed.deliver(sender).await?;
        }
    }
}

/// Why a stream ends.
#[derive(Debug)]
pub(crate) enum End {
    /// The client went away, the server is stopping, or the stream has lasted long enough.
    Done,
    /// The caller's credential or access to the project is gone, or the database failed.
    Refused(ApiError),
}

impl From<ApiError> for End {
    fn from(e: ApiError) -> Self {
        Self::Refused(e)
    }
}

impl From<sqlx::Error> for End {
    fn from(e: sqlx::Error) -> Self {
        Self::Refused(e.into())
    }
}

struct Stream {
    state: AppState,
    caller: Caller,
    token: SecretString,
    request: StreamRequest,
    project: ProjectId,
    /// The environments delivered: those the caller may read (and asked for).
    allowed: BTreeMap<EnvironmentId, EnvironmentRow>,
    /// The last event id read.
    cursor: i64,
    _slot: Slot,
}

impl Stream {
    fn resync(&self, reason: ResyncReason) -> ApiResult<Frame> {
        let resync = Resync {
            reason,
            last_event_id: self.cursor,
            environments: self
                .allowed
                .values()
                .map(|e| EnvironmentRevision {
                    environment: e.slug.clone(),
                    revision: e.revision,
                })
                .collect(),
        };
        Ok(Frame {
            id: self.cursor.to_string(),
            event: "resync",
            data: serde_json::to_string(&resync).map_err(ApiError::internal)?,
        })
    }

    async fn refresh_revisions(&mut self) -> ApiResult<()> {
        let envs = db::projects::environments(self.state.db.pool(), self.project).await?;
        for env in envs {
            if let Some(known) = self.allowed.get_mut(&env.id) {
                *known = env;
            }
        }
        Ok(())
    }

    /// Checks the caller's credential and access again: the environments it may still read.
    async fn recheck_access(&mut self) -> Result<(), End> {
        let caller =
            Caller::authenticate(&self.state, self.token.expose_secret(), &Method::GET).await?;
        let same = caller.actor() == self.caller.actor();
        if !same {
            return Err(End::Refused(ApiError::unauthorized(
                "invalid_token",
                "the token is invalid, expired or revoked",
            )));
        }
        let (ctx, mut allowed, existing) = readable_of_all(
            &self.state,
            &caller,
            &self.request.org,
            &self.request.project,
            self.request.wanted.as_ref(),
            false,
        )
        .await?;
        if ctx.project.id != self.project {
            return Err(End::Refused(ApiError::not_found("project")));
        }
        // An environment deleted since is kept until its `environment.deleted` event is
        // delivered: the caller could read it until it went.
        for (id, env) in std::mem::take(&mut self.allowed) {
            if !existing.contains(&id) {
                allowed.insert(id, env);
            }
        }
        self.caller = caller;
        self.allowed = allowed;
        Ok(())
    }

    /// Sends every event stored after the cursor that the caller may read.
    async fn deliver_events(&mut self, sender: &mpsc::Sender<Frame>) -> Result<(), End> {
        loop {
            let rows =
                db::events::after(self.state.db.pool(), self.project, self.cursor, None, PAGE)
                    .await?;
            let full = rows.len() as i64 == PAGE;
            for row in rows {
                let kind: Option<EventType> = row.kind.parse().ok();
                // An environment created since the last check may be one the caller reads.
                if kind == Some(EventType::EnvironmentCreated)
                    && !self.allowed.contains_key(&row.environment_id)
                {
                    self.recheck_access().await?;
                }
                if self.allowed.contains_key(&row.environment_id) {
                    let frame = Frame {
                        id: row.id.to_string(),
                        event: kind.map_or("unknown", EventType::as_str),
                        data: with_id(row.id, &row.body),
                    };
                    sender.send(frame).await.map_err(|_| End::Done)?;
                }
                self.cursor = row.id;
                if kind == Some(EventType::EnvironmentDeleted) {
                    self.allowed.remove(&row.environment_id);
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bodies_take_their_id_back() {
        assert_eq!(with_id(7, r#"{"a":1}"#), r#"{"id":7,"a":1}"#);
        assert_eq!(with_id(7, "{}"), r#"{"id":7}"#);
    }

    #[test]
    fn targets_are_other_environments_once_each() {
        let value = "${KEY}-${prod.A}-${prod.A}-${other.dev.B}-${dev.C}-$${dev.D}";
        let found = targets("web", "dev", value);
        let names: Vec<String> = found
            .iter()
            .map(|t| format!("{}/{}/{}", t.project, t.env, t.key))
            .collect();
        assert_eq!(names, ["other/dev/B", "web/prod/A"]);
        assert!(targets("web", "dev", "plain").is_empty());
    }
}
