//! The `Project` controller: checks that the project exists in coffer-server and that the
//! credentials reach it, creates it when asked to, and deletes it with the resource when the
//! deletion policy says so.

use std::sync::Arc;
use std::time::Duration;

use coffer_client::CreateProjectRequest;
use kube::api::Patch;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::{Controller, reflector};
use kube::{Api, Resource as _, ResourceExt as _};
use serde_json::json;

use crate::conditions::{self, Reason};
use crate::context::{self, Context, Error, drain, finalized, patch_params, spec_changes};
use crate::crd::{CONDITION_READY, DeletionPolicy, Project, ProjectStatus};
use crate::credentials::ConnectionError;
use crate::source::reason_for;

const KIND: &str = "Project";
/// How often a healthy project is checked again.
const RECHECK: Duration = Duration::from_secs(300);

/// Runs the controller over `api` (until the future is dropped).
pub async fn run(ctx: Arc<Context>, api: Api<Project>) {
    let (reader, writer) = reflector::store();
    let projects = spec_changes(api, writer);
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

async fn save(
    project: &Project,
    ctx: &Context,
    ok: bool,
    reason: Reason,
    message: String,
    project_id: Option<String>,
) -> Result<(), Error> {
    let before = project.status.clone().unwrap_or_default();
    let mut status = ProjectStatus {
        project_id: project_id.or_else(|| before.project_id.clone()),
        conditions: before.conditions.clone(),
        observed_generation: project.metadata.generation,
    };
    conditions::set(
        &mut status.conditions,
        CONDITION_READY,
        ok,
        reason,
        message.clone(),
        project.metadata.generation,
    );
    if status == before {
        return Ok(());
    }
    let api: Api<Project> =
        Api::namespaced(ctx.kube.clone(), &project.namespace().unwrap_or_default());
    api.patch_status(
        &project.name_any(),
        &patch_params(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    let was = conditions::reason_of(&before.conditions, CONDITION_READY);
    if !ok && was != Some(reason.as_str()) {
        ctx.event(
            &project.object_ref(&()),
            true,
            reason.as_str(),
            "Check",
            message,
        )
        .await;
    }
    Ok(())
}

async fn apply(project: &Project, ctx: &Context) -> Result<Action, Error> {
    let org = &project.spec.organization;
    let slug = project.project_slug();
    if org.is_empty() {
        let message = "spec.organization is empty".to_owned();
        save(project, ctx, false, Reason::InvalidSpec, message, None).await?;
        return Ok(Action::await_change());
    }
    let conn = match ctx.connection(project).await {
        Ok(conn) => conn,
        Err(ConnectionError { reason, message }) => {
            save(project, ctx, false, reason, message, None).await?;
            return Ok(Action::requeue(RECHECK));
        }
    };
    let failed = |e: &coffer_client::Error| {
        (
            reason_for(e),
            format!("coffer-server project {org}/{slug}: {e}"),
        )
    };
    let (reason, message, id) = match conn.client.get_project(org, &slug).await {
        Ok(found) => (
            Reason::ProjectFound,
            format!("project {org}/{slug} found in coffer-server"),
            found.id.to_string(),
        ),
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
            match conn.client.create_project(org, &request).await {
                Ok(created) => {
                    let message = format!("created project {org}/{slug} in coffer-server");
                    ctx.event(
                        &project.object_ref(&()),
                        false,
                        Reason::ProjectCreated.as_str(),
                        "Create",
                        message.clone(),
                    )
                    .await;
                    (Reason::ProjectCreated, message, created.id.to_string())
                }
                Err(e) => {
                    let (reason, message) = failed(&e);
                    save(project, ctx, false, reason, message.clone(), None).await?;
                    return Err(Error::Upstream { reason, message });
                }
            }
        }
        Err(e) if e.is_not_found() => {
            let message = format!(
                "coffer-server has no project {org}/{slug} (or the credentials may not see it); \
                 set spec.create to create it"
            );
            save(project, ctx, false, Reason::ProjectNotFound, message, None).await?;
            return Ok(Action::requeue(RECHECK));
        }
        Err(e) => {
            let (reason, message) = failed(&e);
            save(project, ctx, false, reason, message.clone(), None).await?;
            return Err(Error::Upstream { reason, message });
        }
    };
    save(project, ctx, true, reason, message, Some(id)).await?;
    ctx.succeeded(&object_key(project));
    Ok(Action::requeue(RECHECK))
}

async fn cleanup(project: &Project, ctx: &Context) -> Result<Action, Error> {
    ctx.forget(&object_key(project), project.metadata.uid.as_deref());
    if project.spec.deletion_policy != DeletionPolicy::Delete {
        return Ok(Action::await_change());
    }
    let org = &project.spec.organization;
    let slug = project.project_slug();
    let conn = match ctx.connection(project).await {
        Ok(conn) => conn,
        Err(ConnectionError { reason, message }) => {
            // Without credentials the project cannot be deleted; keep the finalizer and say so.
            save(project, ctx, false, reason, message.clone(), None).await?;
            return Err(Error::Upstream { reason, message });
        }
    };
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
        Err(e) => {
            let reason = reason_for(&e);
            let message = format!("deleting project {org}/{slug} in coffer-server failed: {e}");
            save(project, ctx, false, reason, message.clone(), None).await?;
            Err(Error::Upstream { reason, message })
        }
    }
}
