//! The `Project` controller: checks that the project exists in coffer-server and that the
//! credentials reach it, creates it when asked to, and deletes it with the resource when the
//! deletion policy says so.

use std::sync::Arc;
use std::time::Duration;

use coffer_client::CreateProjectRequest;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::{Controller, reflector};
use kube::{Api, Resource as _};

use crate::conditions::{self, Reason};
use crate::context::{self, Context, Error, Halt, Requeue, drain, finalized, spec_changes};
use crate::crd::{CONDITION_READY, DeletionPolicy, Project, ProjectStatus};
use crate::credentials::ConnectionError;
use crate::source::reason_for;
use crate::status;

const KIND: &str = "Project";
/// Set to `"true"` on a `Project` being deleted to let it go without deleting anything in
/// coffer-server (e.g. when its credentials are already gone with its namespace).
pub const SKIP_CLEANUP_ANNOTATION: &str = "coffer.dev/skip-cleanup";
/// How long the deletion of a `Project` may wait for coffer-server before it lets go and keeps
/// the project: a namespace being deleted must not hang on it.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(600);
/// How often a healthy project is checked again.
const RECHECK: Duration = Duration::from_secs(300);

/// Runs the controller over `api` (until the future is dropped).
pub async fn run(ctx: Arc<Context>, api: Api<Project>) {
    let (reader, writer) = reflector::store();
    let projects = spec_changes(api, writer, ctx.metrics.clone());
    drain(Controller::for_stream(projects, reader).run(reconcile, error_policy, ctx)).await;
}

fn object_key(project: &Project) -> String {
    context::object_key(KIND, project)
}

async fn reconcile(project: Arc<Project>, ctx: Arc<Context>) -> Result<Action, Error> {
    finalized(&ctx, KIND, project, |event| async {
        match event {
            Finalizer::Apply(project) => apply(&project, &ctx).await,
            Finalizer::Cleanup(project) => cleanup(&project, &ctx).await,
        }
    })
    .await
}

fn error_policy(project: Arc<Project>, error: &Error, ctx: Arc<Context>) -> Action {
    context::retry(&ctx, KIND, &*project, error, RECHECK)
}

/// What the check of a `Project` found when it passed.
struct Found {
    reason: Reason,
    message: String,
    project_id: String,
    /// This pass created the project.
    created: bool,
}

/// The status of `project` after a check that found `found` (or halted), at `now`. The
/// project id stays known through failures.
fn next_status(project: &Project, found: &Result<Found, Halt>, now: Timestamp) -> ProjectStatus {
    let mut status = project.status.clone().unwrap_or_default();
    status.observed_generation = project.metadata.generation;
    let (ok, reason, message) = match found {
        Ok(found) => {
            status.project_id = Some(found.project_id.clone());
            if found.created {
                status.created_project_id = Some(found.project_id.clone());
            }
            (true, found.reason, found.message.clone())
        }
        Err(halt) => (false, halt.reason, halt.message.clone()),
    };
    conditions::set(
        &mut status.conditions,
        CONDITION_READY,
        ok,
        reason,
        message,
        project.metadata.generation,
        now,
    );
    status
}

/// Writes the status for `found` and says what the controller does next.
async fn conclude(
    project: &Project,
    ctx: &Context,
    found: Result<Found, Halt>,
) -> Result<Action, Error> {
    let status = next_status(project, &found, Timestamp::now());
    status::write(ctx, project, &status, "Check").await?;
    match found {
        Ok(_) => {
            ctx.succeeded(&object_key(project));
            Ok(Action::requeue(context::jittered(RECHECK)))
        }
        Err(halt) => halt.action(),
    }
}

async fn apply(project: &Project, ctx: &Context) -> Result<Action, Error> {
    let found = check(project, ctx).await;
    conclude(project, ctx, found).await
}

/// Whether the project exists in coffer-server (creating it when the spec asks to).
async fn check(project: &Project, ctx: &Context) -> Result<Found, Halt> {
    let org = &project.spec.organization;
    let slug = project.project_slug();
    if org.is_empty() {
        let message = "spec.organization is empty";
        return Err(Halt::new(
            Reason::InvalidSpec,
            message,
            Requeue::AwaitChange,
        ));
    }
    let conn = ctx
        .connection(project)
        .await
        .map_err(|ConnectionError { reason, message }| {
            Halt::new(reason, message, Requeue::After(RECHECK))
        })?;
    let failed = |e: &coffer_client::Error| {
        Halt::new(
            reason_for(e),
            format!("coffer-server project {org}/{slug}: {e}"),
            Requeue::Backoff,
        )
    };
    match conn.client.get_project(org, &slug).await {
        Ok(found) => Ok(Found {
            reason: Reason::ProjectFound,
            message: format!("project {org}/{slug} found in coffer-server"),
            project_id: found.id.to_string(),
            created: false,
        }),
        Err(e) if e.is_not_found() && project.spec.create => {
            let request = CreateProjectRequest {
                name: project
                    .spec
                    .display_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| slug.clone()),
                slug: slug.clone(),
                environments: None,
            };
            let created = conn
                .client
                .create_project(org, &request)
                .await
                .map_err(|e| failed(&e))?;
            let message = format!("created project {org}/{slug} in coffer-server");
            ctx.event(
                &project.object_ref(&()),
                false,
                Reason::ProjectCreated.as_str(),
                "Create",
                message.clone(),
            )
            .await;
            Ok(Found {
                reason: Reason::ProjectCreated,
                message,
                project_id: created.id.to_string(),
                created: true,
            })
        }
        Err(e) if e.is_not_found() => Err(Halt::new(
            Reason::ProjectNotFound,
            format!(
                "coffer-server has no project {org}/{slug} (or the credentials may not see it); \
                 set spec.create to create it"
            ),
            Requeue::After(RECHECK),
        )),
        Err(e) => Err(failed(&e)),
    }
}

/// The id of the project that deleting `project` may delete in coffer-server, or why none
/// may be: only a project this resource created, and never with the operator's own
/// credentials (anyone who may create a `Project` could otherwise delete another team's).
fn deletable(project: &Project) -> Result<&str, &'static str> {
    let created = project
        .status
        .as_ref()
        .and_then(|s| s.created_project_id.as_deref());
    match (created, &project.spec.credentials_ref) {
        (None, _) => Err("this resource did not create it"),
        (Some(_), None) => {
            Err("spec.credentialsRef is not set, and the operator's own credentials never delete")
        }
        (Some(id), Some(_)) => Ok(id),
    }
}

/// `deletionPolicy: Delete` does not apply to the project: a Warning event says why, and the
/// resource goes while the project stays.
async fn kept(project: &Project, ctx: &Context, why: &str) -> Result<Action, Error> {
    let (org, slug) = (&project.spec.organization, project.project_slug());
    ctx.event(
        &project.object_ref(&()),
        true,
        "ProjectKept",
        "Delete",
        format!(
            "project {org}/{slug} is kept in coffer-server despite deletionPolicy Delete: {why}"
        ),
    )
    .await;
    Ok(Action::await_change())
}

/// Why the deletion of `project` stops trying to delete in coffer-server at `now`, if it does:
/// the override annotation, or the cleanup deadline since the deletion began.
fn cleanup_given_up(project: &Project, now: Timestamp) -> Option<&'static str> {
    let skip = project
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SKIP_CLEANUP_ANNOTATION));
    if skip.is_some_and(|v| v == "true") {
        return Some("the coffer.dev/skip-cleanup annotation is set");
    }
    let since = project.metadata.deletion_timestamp.as_ref()?;
    let waited = Duration::try_from(now.duration_since(since.0)).ok()?;
    (waited >= CLEANUP_DEADLINE).then_some("coffer-server could not be reached in 10 minutes")
}

async fn cleanup(project: &Project, ctx: &Context) -> Result<Action, Error> {
    ctx.forget(&object_key(project), project.metadata.uid.as_deref());
    if project.spec.deletion_policy != DeletionPolicy::Delete {
        return Ok(Action::await_change());
    }
    if let Some(why) = cleanup_given_up(project, Timestamp::now()) {
        return kept(project, ctx, why).await;
    }
    let org = &project.spec.organization;
    let slug = project.project_slug();
    let created = match deletable(project) {
        Ok(id) => id,
        Err(why) => return kept(project, ctx, why).await,
    };
    let conn = match ctx.connection(project).await {
        Ok(conn) => conn,
        // Without credentials the project cannot be deleted; keep the finalizer and say so.
        Err(ConnectionError { reason, message }) => {
            let halt = Halt::new(reason, message, Requeue::Backoff);
            return conclude(project, ctx, Err(halt)).await;
        }
    };
    let failed = |e: &coffer_client::Error, doing: &str| {
        Halt::new(
            reason_for(e),
            format!("{doing} project {org}/{slug} in coffer-server failed: {e}"),
            Requeue::Backoff,
        )
    };
    match conn.client.get_project(org, &slug).await {
        Ok(found) if found.id.to_string() == created => {}
        Ok(_) => {
            return kept(
                project,
                ctx,
                "it is no longer the project this resource created",
            )
            .await;
        }
        Err(e) if e.is_not_found() => return Ok(Action::await_change()),
        Err(e) => return conclude(project, ctx, Err(failed(&e, "reading"))).await,
    }
    match conn.client.delete_project(org, &slug).await {
        Ok(()) => {
            ctx.event(
                &project.object_ref(&()),
                false,
                "ProjectDeleted",
                "Delete",
                format!("deleted project {org}/{slug} in coffer-server (deletionPolicy Delete)"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) if e.is_not_found() => Ok(Action::await_change()),
        Err(e) => conclude(project, ctx, Err(failed(&e, "deleting"))).await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::crd::ProjectSpec;

    fn project() -> Project {
        let spec: ProjectSpec =
            serde_json::from_value(serde_json::json!({ "organization": "acme" })).unwrap();
        let mut project = Project::new("web", spec);
        project.metadata.generation = Some(2);
        project
    }

    fn ready(status: &ProjectStatus) -> (&str, &str) {
        let c = &status.conditions[0];
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_found_project_is_ready_with_its_id_and_a_failure_keeps_the_id() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut project = project();
        let found = Ok(Found {
            reason: Reason::ProjectFound,
            message: "found".into(),
            project_id: "p-1".into(),
            created: false,
        });
        let status = next_status(&project, &found, now);
        assert_eq!(ready(&status), ("True", "ProjectFound"));
        assert_eq!(
            (status.project_id.as_deref(), status.observed_generation),
            (Some("p-1"), Some(2))
        );

        project.status = Some(status.clone());
        let down = Err(Halt::new(
            Reason::ServerUnreachable,
            "down",
            Requeue::Backoff,
        ));
        let failed = next_status(&project, &down, now);
        assert_eq!(ready(&failed), ("False", "ServerUnreachable"));
        assert_eq!(failed.project_id.as_deref(), Some("p-1"));
        // The same state again is the same status: nothing to write.
        project.status = Some(failed.clone());
        assert_eq!(next_status(&project, &down, now), failed);
    }

    #[test]
    fn only_a_project_this_resource_created_is_deleted_and_never_with_the_operators_token() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let mut project = project();
        project.spec.deletion_policy = DeletionPolicy::Delete;
        let found = |created| {
            Ok(Found {
                reason: Reason::ProjectFound,
                message: "m".into(),
                project_id: "p-1".into(),
                created,
            })
        };
        // Found, not created: nothing may be deleted.
        project.status = Some(next_status(&project, &found(false), now));
        assert_eq!(deletable(&project), Err("this resource did not create it"));
        // Created with the operator's own token: still nothing.
        project.status = Some(next_status(&project, &found(true), now));
        assert!(deletable(&project).unwrap_err().contains("credentialsRef"));
        // Created with its own credentials: that project, and it stays known when later
        // checks merely find it.
        project.spec.credentials_ref = Some(crate::crd::CredentialsRef {
            name: "coffer-token".into(),
            key: "token".into(),
        });
        project.status = Some(next_status(&project, &found(false), now));
        assert_eq!(deletable(&project), Ok("p-1"));
    }

    #[test]
    fn cleanup_gives_up_on_the_annotation_or_after_the_deadline() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        let mut project = project();
        assert_eq!(cleanup_given_up(&project, start), None);
        project.metadata.deletion_timestamp = Some(Time(start));
        let later = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        assert_eq!(cleanup_given_up(&project, later(599)), None);
        assert!(cleanup_given_up(&project, later(600)).is_some());
        project.metadata.annotations =
            Some([(SKIP_CLEANUP_ANNOTATION.to_owned(), "true".to_owned())].into());
        assert!(cleanup_given_up(&project, start).is_some_and(|why| why.contains("skip-cleanup")));
    }
}
