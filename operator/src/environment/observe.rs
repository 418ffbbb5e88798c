//! What exists for an `Environment`: its spec's validity, its `Project`, the connection to
//! coffer-server, the environment's data (from [`crate::source::Sources`], which also follows
//! the project's event stream) and the Secret now under the target name. Reads only; [`super::decide`] makes sense of it.

use kube::ResourceExt as _;
use kube::runtime::reflector::ObjectRef;

use super::REFRESH_ANNOTATION;
use super::decide::{Observed, Read, Stage};
use crate::context::{Context, Error};
use crate::crd::{Environment, Project};
use crate::source::Missing;
use crate::stores;

/// Observes `env`, stopping at the first stage that cannot be passed.
pub async fn observe<'a>(env: &'a Environment, ctx: &Context) -> Result<Observed<'a>, Error> {
    let stage = stage(env, ctx).await?;
    Ok(Observed { env, stage })
}

async fn stage(env: &Environment, ctx: &Context) -> Result<Stage, Error> {
    let namespace = env.namespace().unwrap_or_default();
    let interval = match env.refresh_interval() {
        Ok(interval) => interval,
        Err(e) => return Ok(Stage::InvalidSpec(format!("spec.sync.{e}"))),
    };
    if env.spec.project_ref.name.is_empty() {
        return Ok(Stage::InvalidSpec(
            "spec.projectRef.name is empty".to_owned(),
        ));
    }
    if env.spec.environment.is_empty() {
        return Ok(Stage::InvalidSpec("spec.environment is empty".to_owned()));
    }

    let projects = &ctx.stores.projects;
    stores::ready(projects, "Project resources").await?;
    let project_ref = ObjectRef::<Project>::new(&env.spec.project_ref.name).within(&namespace);
    let Some(project) = projects.get(&project_ref) else {
        return Ok(Stage::NoProject);
    };
    let conn = match ctx.connection(&project).await {
        Ok(conn) => conn,
        Err(error) => {
            return Ok(Stage::NoConnection {
                interval,
                project: project.name_any(),
                error,
            });
        }
    };
    let key = conn.source(
        &project.spec.organization,
        &project.project_slug(),
        &env.spec.environment,
    );

    let uid = env.metadata.uid.as_deref().unwrap_or_default();
    let refresh = env
        .annotations()
        .get(REFRESH_ANNOTATION)
        .map(String::as_str);
    let force = ctx.refresh_pending(uid, refresh);
    let reader = ObjectRef::from_obj(env);
    let data = ctx
        .sources
        .snapshot(&key, &conn.client, interval, force, &reader)
        .await;
    ctx.sources.follow(&key, &conn.client);
    let sync_mode = ctx.sources.sync_mode(&key).await;
    // Carried out only once the data was fetched: a refresh asked for during an outage
    // happens when coffer-server is back.
    if let (true, Ok(_), Some(refresh)) = (force, &data, refresh) {
        ctx.refresh_done(uid, refresh);
    }
    let wanted = match &data {
        Ok(_) => true,
        Err(e) => e.missing == Some(Missing::Environment),
    };
    let secret = if wanted {
        ctx.stores
            .secret(&ctx.kube, &namespace, &env.secret_name())
            .await?
    } else {
        None
    };
    Ok(Stage::Read(Box::new(Read {
        interval,
        source: key,
        connection: conn,
        data,
        secret,
        sync_mode,
    })))
}
