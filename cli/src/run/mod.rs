//! `coffer run [--watch] [--fallback-file PATH] -- COMMAND…`: starts the command with the
//! environment's secrets (references resolved) in its environment, passes SIGINT, SIGTERM and
//! SIGHUP on to it, and exits with its exit code. With `--watch` the command is restarted
//! (SIGTERM, then SIGKILL after a grace period) when the values change.

mod child;
mod fallback;
mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use coffer_client::{Client, SecretsPage};
use secrecy::{ExposeSecret as _, SecretString};

use self::child::{Child, Forwarded, Signals, exit_code, interrupts_need_forwarding};
use self::fallback::Fallback;
use self::watch::{Mode, Watcher};
use crate::cli::RunArgs;
use crate::commands::Context;
use crate::config::Target;
use crate::error::CliError;
use crate::output;
use crate::session::{Retry, Session};

/// How long a command being restarted has to stop after SIGTERM before it gets SIGKILL.
const RESTART_GRACE: Duration = Duration::from_secs(10);

/// An environment's values by key. `Debug` shows the keys only.
#[derive(Clone, Default)]
pub struct Values(BTreeMap<String, SecretString>);

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl PartialEq for Values {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.exposed().zip(other.exposed()).all(|(a, b)| a == b)
    }
}

impl Values {
    pub fn from_page(page: SecretsPage) -> Self {
        Self::from_pairs(
            page.secrets
                .into_iter()
                .map(|s| (s.key, s.value.into_inner())),
        )
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, SecretString)>) -> Self {
        Self(pairs.into_iter().collect())
    }

    /// Every key and its value, in key order.
    pub fn exposed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.expose_secret()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The environment's values, with the `ETag` and revision of the read.
async fn read(
    session: &mut Session,
    t: &Target,
) -> Result<(Values, Option<String>, i64), CliError> {
    let fetched = session
        .call(Retry::Idempotent, async |c: &Client| {
            c.read_secrets(&t.org, &t.project, &t.env, None).await
        })
        .await?;
    let etag = fetched.etag().map(str::to_owned);
    let page = fetched.into_value().ok_or_else(|| {
        CliError::Other("the server answered 304 to a read that was not conditional".into())
    })?;
    let revision = page.revision;
    Ok((Values::from_page(page), etag, revision))
}

/// Runs `coffer run`; its exit code is the command's.
pub async fn run(ctx: &Context, args: RunArgs) -> Result<u8, CliError> {
    let t = ctx.target()?;
    let fallback = match args.fallback_file.as_deref() {
        Some(path) => Some(Fallback::open(path, ctx.config_dir()?)?),
        None => None,
    };
    let mut session = ctx.session()?;
    let (values, etag, revision) = match read(&mut session, &t).await {
        Ok((values, etag, revision)) => {
            if let Some(fallback) = &fallback
                && let Err(e) = fallback.save(&t, &values)
            {
                output::warn(&format!("the fallback copy was not updated: {e}"));
            }
            (values, etag, Some(revision))
        }
        Err(e) if e.is_unreachable() && fallback.is_some() => {
            let Some(fallback) = &fallback else {
                return Err(e);
            };
            let (values, saved_at) = fallback.load(&t)?;
            output::warn(&format!(
                "cannot reach {}: running with the values of {} saved in {} at {saved_at}",
                session.server(),
                t.label(),
                fallback.path().display()
            ));
            (values, None, None)
        }
        Err(e) => return Err(e),
    };

    // Signals are caught before the command starts, so none is lost in between.
    let mut signals =
        Signals::catch().map_err(|e| CliError::Other(format!("cannot handle signals: {e}")))?;
    let forward_interrupts = interrupts_need_forwarding();
    let spawn = |values: &Values| Child::spawn(&args.command, values, forward_interrupts);
    let mut child = match spawn(&values) {
        Ok(child) => child,
        Err(e) => {
            output::error(&e.message, "spawn", e.code, ctx.out.json);
            return Ok(e.code);
        }
    };
    let mut watcher = args.watch.then(|| {
        let mode = if args.poll { Mode::Poll } else { Mode::Stream };
        Watcher::new(t.clone(), mode, args.poll_interval, values, etag, revision)
    });

    // New values waiting for the running command to stop, to start it again with them.
    let mut pending: Option<Values> = None;
    // A signal asked the command to end: it is not restarted then.
    let mut ending = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status
                    .map_err(|e| CliError::Other(format!("cannot wait for the command: {e}")))?;
                match pending.take() {
                    Some(values) if !ending => {
                        kill_at = None;
                        child = match spawn(&values) {
                            Ok(child) => child,
                            Err(e) => {
                                output::error(&e.message, "spawn", e.code, ctx.out.json);
                                return Ok(e.code);
                            }
                        };
                        output::note(&format!(
                            "coffer: {} changed: restarted the command with its {} values",
                            t.label(),
                            values.len()
                        ));
                    }
                    _ => return Ok(exit_code(status)),
                }
            }
            signal = signals.recv() => {
                child.forward(signal);
                if signal != Forwarded::Hangup {
                    ending = true;
                }
            }
            values = async {
                match watcher.as_mut() {
                    Some(watcher) => watcher.changed(&mut session).await,
                    None => std::future::pending().await,
                }
            } => {
                if !ending {
                    if pending.is_none() {
                        child.terminate();
                        kill_at = Some(tokio::time::Instant::now() + RESTART_GRACE);
                    }
                    pending = Some(values);
                    if let Some(fallback) = &fallback
                        && let Some(values) = &pending
                        && let Err(e) = fallback.save(&t, values)
                    {
                        output::warn(&format!("the fallback copy was not updated: {e}"));
                    }
                }
            }
            () = async {
                match kill_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                output::warn(&format!(
                    "the command did not stop within {} s of SIGTERM: killing it",
                    RESTART_GRACE.as_secs()
                ));
                child.kill();
                kill_at = None;
            }
        }
    }
}
