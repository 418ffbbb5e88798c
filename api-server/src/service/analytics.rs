//! What an organization's owners and admins see of its use: reads and writes per environment
//! per day, the most-read keys, which API keys and service tokens read what, active leases per
//! dynamic secret, failing webhooks.
//!
//! Everything comes from tables that exist anyway (the audit log above all); every query is
//! scoped to the organization, limited to [`WINDOW_DAYS`] where it reads the audit log, and
//! has a `LIMIT`. The SQL is the same on SQLite and PostgreSQL: the keys a read returned are in
//! its event's `details` JSON, parsed here rather than with either database's JSON functions.

use std::collections::{BTreeMap, HashMap};

use crate::auth::Principal;
use crate::authz::Action;
use crate::error::ApiResult;
use crate::ids::Timestamp;
use crate::service::secrets::action;
use crate::service::tenancy::{self, OrgCtx};
use crate::state::AppState;

/// Days of audit log the analytics cover, today (UTC) included.
pub const WINDOW_DAYS: usize = 14;

const DAY_MS: i64 = 86_400_000;

/// Events whose keys are counted for the most-read keys (the newest first).
pub const MAX_READ_EVENTS: i64 = 5_000;

/// Keys in the most-read list.
pub const TOP_KEYS: usize = 10;

/// Rows of (client, environment) listed.
const MAX_CLIENT_ROWS: i64 = 100;

/// Keys named per client and environment.
const KEYS_PER_CLIENT: usize = 8;

/// (environment, day) rows read: more than any organization's environments × days needs.
const MAX_ACTIVITY_ROWS: i64 = 5_000;

/// Environments whose names are looked up.
const MAX_ENVIRONMENTS: i64 = 2_000;

const MAX_DYNAMIC_SECRETS: i64 = 200;
const MAX_FAILING_WEBHOOKS: i64 = 50;

/// The actions that read secret values (with their keys in `details.keys`).
pub const READ_ACTIONS: &[&str] = &[action::READ, action::EXPORTED];

/// The actions that change secrets.
pub const WRITE_ACTIONS: &[&str] = &[
    action::CREATED,
    action::UPDATED,
    action::DELETED,
    action::RESTORED,
    action::ROLLED_BACK,
    action::BULK_UPSERTED,
    action::IMPORTED,
    action::COPIED,
];

/// Where a row is: the project's and environment's slugs (`None` once deleted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub project: Option<String>,
    pub env: Option<String>,
}

/// Reads and writes of one environment, per day of the window (oldest first).
#[derive(Debug, Clone)]
pub struct EnvActivity {
    pub place: Place,
    pub reads: Vec<i64>,
    pub writes: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReads {
    pub place: Place,
    pub key: String,
    pub reads: i64,
}

/// What one API key or service token read in one environment.
#[derive(Debug, Clone)]
pub struct ClientReads {
    /// `api_key` or `service_token`.
    pub kind: String,
    pub id: String,
    /// Its name, when it still exists.
    pub name: Option<String>,
    /// An API key's owner (email).
    pub owner: Option<String>,
    pub revoked: bool,
    pub place: Place,
    pub reads: i64,
    pub last_read: Timestamp,
    /// Some of the keys it read (from the newest events).
    pub keys: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct LeaseCount {
    pub place: Place,
    pub name: String,
    pub active: i64,
}

#[derive(Debug, Clone)]
pub struct FailingWebhook {
    pub project: String,
    pub id: String,
    /// Its URL without query or fragment (which may hold the receiver's tokens).
    pub url: String,
    pub consecutive_failures: i64,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Analytics {
    pub ctx: OrgCtx,
    /// The window's first day, in days since the Unix epoch (UTC).
    pub first_day: i64,
    pub activity: Vec<EnvActivity>,
    pub top_keys: Vec<KeyReads>,
    /// The most-read keys were counted from the newest [`MAX_READ_EVENTS`] reads only.
    pub keys_sampled: bool,
    pub clients: Vec<ClientReads>,
    pub leases: Vec<LeaseCount>,
    pub failing_webhooks: Vec<FailingWebhook>,
}

/// A read event: its environment, actor type and id, and details.
type ReadEventRow = (Option<String>, String, Option<String>, Option<String>);

/// A failing webhook: project slug, id, URL, consecutive failures, disabled at and why.
type WebhookRow = (String, String, String, i64, Option<i64>, Option<String>);

/// `'a', 'b'`: an SQL list of this module's constant action names.
fn sql_list(items: &[&str]) -> String {
    items
        .iter()
        .inspect(|a| {
            debug_assert!(
                a.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
            )
        })
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The smallest time-ordered (v7) id of an event at or after `t`: the audit log's index is
/// `(org_id, id)`, so `id >= this` reads only the window's part of it.
fn first_id_at(t: Timestamp) -> String {
    let ms = u64::try_from(t.millis()).unwrap_or(0).min((1 << 48) - 1);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// The keys a read event's `details` name.
fn keys_of(details: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(details)
        .ok()
        .and_then(|v| {
            v.get("keys").and_then(|k| k.as_array()).map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The `n` most-read keys: most reads first, then by place and name.
fn top(counts: HashMap<(Option<String>, String), i64>, places: &Places, n: usize) -> Vec<KeyReads> {
    let mut all: Vec<KeyReads> = counts
        .into_iter()
        .map(|((env, key), reads)| KeyReads {
            place: places.of(env.as_deref()),
            key,
            reads,
        })
        .collect();
    all.sort_by(|a, b| {
        b.reads
            .cmp(&a.reads)
            .then_with(|| a.place.cmp(&b.place))
            .then_with(|| a.key.cmp(&b.key))
    });
    all.truncate(n);
    all
}

/// The organization's environments by id.
struct Places(HashMap<String, (String, String)>);

impl Places {
    fn of(&self, env: Option<&str>) -> Place {
        match env.and_then(|e| self.0.get(e)) {
            Some((project, env)) => Place {
                project: Some(project.clone()),
                env: Some(env.clone()),
            },
            None => Place {
                project: None,
                env: None,
            },
        }
    }
}

/// `url` without its query and fragment.
fn bare_url(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_owned()
}

/// `$first, $first+1, …` for `n` parameters.
fn params(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The analytics of organization `org` (owners and admins).
pub async fn overview(state: &AppState, principal: &Principal, org: &str) -> ApiResult<Analytics> {
    let ctx = tenancy::org(state, principal, org, Action::OrgAuditRead).await?;
    // Reads are journaled before they reach the table: count them all.
    state.audit.flush().await?;
    let pool = state.db.pool();
    let org_id = ctx.org.id.to_string();
    let today = Timestamp::now().millis().div_euclid(DAY_MS);
    let first_day = today - (WINDOW_DAYS as i64 - 1);
    let since = Timestamp(first_day * DAY_MS);
    let first_id = first_id_at(since);
    let reads = sql_list(READ_ACTIONS);
    let writes = sql_list(WRITE_ACTIONS);

    let envs: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT e.id, p.slug, e.slug FROM environments e JOIN projects p ON p.id = e.project_id \
         WHERE p.org_id = $1 ORDER BY p.slug, e.position LIMIT $2",
    )
    .bind(&org_id)
    .bind(MAX_ENVIRONMENTS)
    .fetch_all(pool)
    .await?;
    let places = Places(
        envs.into_iter()
            .map(|(id, project, env)| (id, (project, env)))
            .collect(),
    );

    // Reads and writes per environment per day.
    let rows: Vec<(Option<String>, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT environment_id, occurred_at / {DAY_MS}, \
                SUM(CASE WHEN action IN ({reads}) THEN 1 ELSE 0 END), \
                SUM(CASE WHEN action IN ({writes}) THEN 1 ELSE 0 END) \
         FROM audit_events \
         WHERE org_id = $1 AND id >= $2 AND occurred_at >= $3 AND outcome = 'success' \
           AND environment_id IS NOT NULL AND action IN ({reads}, {writes}) \
         GROUP BY environment_id, occurred_at / {DAY_MS} \
         ORDER BY environment_id LIMIT $4"
    ))
    .bind(&org_id)
    .bind(&first_id)
    .bind(since)
    .bind(MAX_ACTIVITY_ROWS)
    .fetch_all(pool)
    .await?;
    let mut by_place: BTreeMap<Place, EnvActivity> = BTreeMap::new();
    for (env, day, r, w) in rows {
        let Some(i) = usize::try_from(day - first_day)
            .ok()
            .filter(|i| *i < WINDOW_DAYS)
        else {
            continue;
        };
        let place = places.of(env.as_deref());
        let entry = by_place
            .entry(place.clone())
            .or_insert_with(|| EnvActivity {
                place,
                reads: vec![0; WINDOW_DAYS],
                writes: vec![0; WINDOW_DAYS],
            });
        entry.reads[i] += r;
        entry.writes[i] += w;
    }
    let activity = by_place.into_values().collect();

    // The keys of the newest reads: the most-read keys, and what each client read.
    let events: Vec<ReadEventRow> = sqlx::query_as(&format!(
        "SELECT environment_id, actor_type, actor_id, details FROM audit_events \
             WHERE org_id = $1 AND id >= $2 AND occurred_at >= $3 AND outcome = 'success' \
               AND action IN ({reads}) AND details IS NOT NULL \
             ORDER BY id DESC LIMIT $4"
    ))
    .bind(&org_id)
    .bind(&first_id)
    .bind(since)
    .bind(MAX_READ_EVENTS)
    .fetch_all(pool)
    .await?;
    let keys_sampled = events.len() as i64 >= MAX_READ_EVENTS;
    let mut counts: HashMap<(Option<String>, String), i64> = HashMap::new();
    let mut client_keys: HashMap<(String, String, Option<String>), Vec<String>> = HashMap::new();
    for (env, actor_type, actor_id, details) in events {
        let keys = keys_of(details.as_deref().unwrap_or_default());
        if let (Some(actor), true) = (
            &actor_id,
            matches!(actor_type.as_str(), "api_key" | "service_token"),
        ) {
            let seen = client_keys
                .entry((actor_type.clone(), actor.clone(), env.clone()))
                .or_default();
            for key in &keys {
                if seen.len() < KEYS_PER_CLIENT && !seen.contains(key) {
                    seen.push(key.clone());
                }
            }
        }
        for key in keys {
            *counts.entry((env.clone(), key)).or_default() += 1;
        }
    }
    let top_keys = top(counts, &places, TOP_KEYS);

    // Which API keys and service tokens read where, and when last.
    let rows: Vec<(String, String, Option<String>, i64, i64)> = sqlx::query_as(&format!(
        "SELECT actor_type, actor_id, environment_id, COUNT(*), MAX(occurred_at) \
         FROM audit_events \
         WHERE org_id = $1 AND id >= $2 AND occurred_at >= $3 AND outcome = 'success' \
           AND action IN ({reads}) AND actor_type IN ('api_key', 'service_token') \
           AND actor_id IS NOT NULL \
         GROUP BY actor_type, actor_id, environment_id \
         ORDER BY MAX(occurred_at) DESC LIMIT $4"
    ))
    .bind(&org_id)
    .bind(&first_id)
    .bind(since)
    .bind(MAX_CLIENT_ROWS)
    .fetch_all(pool)
    .await?;
    let names = client_names(state, &org_id, &rows).await?;
    let clients = rows
        .into_iter()
        .map(|(kind, id, env, reads, last)| {
            let keys = client_keys
                .remove(&(kind.clone(), id.clone(), env.clone()))
                .unwrap_or_default();
            let known = names.get(&(kind.clone(), id.clone()));
            ClientReads {
                name: known.map(|k| k.0.clone()),
                owner: known.and_then(|k| k.1.clone()),
                revoked: known.is_some_and(|k| k.2),
                place: places.of(env.as_deref()),
                kind,
                id,
                reads,
                last_read: Timestamp(last),
                keys,
            }
        })
        .collect();

    // Active leases per dynamic secret.
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
        "SELECT d.name, d.environment_id, COUNT(l.id) FROM dynamic_secrets d \
         LEFT JOIN leases l ON l.dynamic_secret_id = d.id AND l.state = 'active' \
           AND l.expires_at > $2 \
         WHERE d.org_id = $1 GROUP BY d.id, d.name, d.environment_id \
         ORDER BY d.environment_id, d.name LIMIT $3",
    )
    .bind(&org_id)
    .bind(Timestamp::now())
    .bind(MAX_DYNAMIC_SECRETS)
    .fetch_all(pool)
    .await?;
    let mut leases: Vec<LeaseCount> = rows
        .into_iter()
        .map(|(name, env, active)| LeaseCount {
            place: places.of(env.as_deref()),
            name,
            active,
        })
        .collect();
    leases.sort_by(|a, b| a.place.cmp(&b.place).then_with(|| a.name.cmp(&b.name)));

    // Webhooks failing now, or disabled.
    let rows: Vec<WebhookRow> = sqlx::query_as(
        "SELECT p.slug, w.id, w.url, w.consecutive_failures, w.disabled_at, w.disabled_reason \
         FROM webhooks w JOIN projects p ON p.id = w.project_id \
         WHERE w.org_id = $1 AND (w.consecutive_failures > 0 OR w.disabled_at IS NOT NULL) \
         ORDER BY w.consecutive_failures DESC, w.id LIMIT $2",
    )
    .bind(&org_id)
    .bind(MAX_FAILING_WEBHOOKS)
    .fetch_all(pool)
    .await?;
    let failing_webhooks = rows
        .into_iter()
        .map(
            |(project, id, url, consecutive_failures, disabled_at, disabled_reason)| {
                FailingWebhook {
                    project,
                    id,
                    url: bare_url(&url),
                    consecutive_failures,
                    disabled: disabled_at.is_some(),
                    disabled_reason,
                }
            },
        )
        .collect();

    Ok(Analytics {
        ctx,
        first_day,
        activity,
        top_keys,
        keys_sampled,
        clients,
        leases,
        failing_webhooks,
    })
}

/// Names of the clients in `rows`: (name, owner's email, revoked) by (kind, id). Service
/// tokens are looked up in this organization only; API keys by id (their events are in it).
async fn client_names(
    state: &AppState,
    org_id: &str,
    rows: &[(String, String, Option<String>, i64, i64)],
) -> ApiResult<HashMap<(String, String), (String, Option<String>, bool)>> {
    let pool = state.db.pool();
    let ids = |kind: &str| {
        let mut ids: Vec<&str> = rows
            .iter()
            .filter(|r| r.0 == kind)
            .map(|r| r.1.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let mut out = HashMap::new();
    let tokens = ids("service_token");
    if !tokens.is_empty() {
        let sql = format!(
            "SELECT id, name, revoked_at FROM service_tokens WHERE org_id = $1 AND id IN ({})",
            params(2, tokens.len())
        );
        let mut query = sqlx::query_as::<_, (String, String, Option<i64>)>(&sql).bind(org_id);
        for id in &tokens {
            query = query.bind(*id);
        }
        for (id, name, revoked) in query.fetch_all(pool).await? {
            out.insert(
                ("service_token".to_owned(), id),
                (name, None, revoked.is_some()),
            );
        }
    }
    let keys = ids("api_key");
    if !keys.is_empty() {
        let sql = format!(
            "SELECT k.id, k.name, u.email, k.revoked_at FROM api_keys k \
             JOIN users u ON u.id = k.user_id WHERE k.id IN ({})",
            params(1, keys.len())
        );
        let mut query = sqlx::query_as::<_, (String, String, String, Option<i64>)>(&sql);
        for id in &keys {
            query = query.bind(*id);
        }
        for (id, name, email, revoked) in query.fetch_all(pool).await? {
            out.insert(
                ("api_key".to_owned(), id),
                (name, Some(email), revoked.is_some()),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_a_time_sorts_before_every_id_made_then_and_after_every_id_before() {
        let t = Timestamp::now();
        let bound = first_id_at(t);
        let later = uuid::Uuid::now_v7().to_string();
        assert!(later >= bound, "{later} < {bound}");
        let earlier = first_id_at(t.minus(std::time::Duration::from_millis(1)));
        assert!(earlier < bound);
        assert_eq!(bound.len(), 36);
    }

    #[test]
    fn read_events_name_their_keys_and_anything_else_names_none() {
        assert_eq!(
            keys_of(r#"{"keys":["A","B"],"resolved":false}"#),
            ["A", "B"]
        );
        assert!(keys_of(r#"{"keys":3}"#).is_empty());
        assert!(keys_of("not json").is_empty());
    }

    #[test]
    fn the_most_read_keys_come_first_then_by_place_and_name() {
        let places = Places(HashMap::from([(
            "e1".to_owned(),
            ("web".to_owned(), "dev".to_owned()),
        )]));
        let counts = HashMap::from([
            ((Some("e1".to_owned()), "B".to_owned()), 2),
            ((Some("e1".to_owned()), "A".to_owned()), 2),
            ((Some("e1".to_owned()), "C".to_owned()), 5),
            ((None, "D".to_owned()), 1),
        ]);
        let top = top(counts, &places, 3);
        let names: Vec<&str> = top.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(names, ["C", "A", "B"]);
        assert_eq!(top[0].place.env.as_deref(), Some("dev"));
    }

    #[test]
    fn action_lists_are_quoted_constants() {
        assert_eq!(sql_list(READ_ACTIONS), "'secrets.read', 'secrets.exported'");
        assert_eq!(params(2, 3), "$2, $3, $4");
        assert_eq!(bare_url("https://h/p?token=x#f"), "https://h/p");
    }
}
