//! `coffer run --watch`: notices when the environment's values change. It follows the
//! project's event stream (one connection, narrowed to the environment), and polls with
//! conditional reads (`If-None-Match`, which the server answers 304 without decrypting
//! anything) when asked to or while the stream cannot be opened.

use std::time::{Duration, Instant};

use coffer_client::{Client, EventStream, EventType, Fetched, StreamMessage};

use super::Values;
use crate::config::Target;
use crate::error::CliError;
use crate::output;
use crate::session::{Retry, Session};

/// While polling because the stream could not be opened, try it again this often.
const STREAM_RETRY: Duration = Duration::from_secs(60);
/// Waits after a failure grow from this…
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// …to at most this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How changes are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The event stream, polling while it cannot be opened.
    Stream,
    /// Polling only.
    Poll,
}

/// What the watcher knows of the environment.
#[derive(Debug)]
pub struct Watcher {
    target: Target,
    mode: Mode,
    interval: Duration,
    /// The values last seen: a change is a difference from these.
    current: Values,
    etag: Option<String>,
    revision: Option<i64>,
    stream: Option<EventStream>,
    last_event_id: Option<i64>,
    /// Polling since then because the stream could not be opened.
    stream_failed_at: Option<Instant>,
    backoff: Duration,
    /// The last problem reported, so that a repeated one is not reported again.
    last_warning: Option<String>,
}

/// What one step of watching found.
enum Step {
    /// Maybe changed: read the environment (conditionally).
    Check,
    /// Nothing to do.
    Nothing,
}

impl Watcher {
    pub fn new(
        target: Target,
        mode: Mode,
        interval: Duration,
        current: Values,
        etag: Option<String>,
        revision: Option<i64>,
    ) -> Self {
        Self {
            target,
            mode,
            interval,
            current,
            etag,
            revision,
            stream: None,
            last_event_id: None,
            stream_failed_at: None,
            backoff: MIN_BACKOFF,
            last_warning: None,
        }
    }

    /// Waits until the environment's values differ from the last ones seen, and returns the
    /// new ones. Failures are reported on stderr (once each) and retried with a growing delay:
    /// the command keeps running with what it has. Cancel-safe: dropping the future loses at
    /// most a stream connection, which the next call opens again from where it was.
    pub async fn changed(&mut self, session: &mut Session) -> Values {
        loop {
            match self.step(session).await {
                Ok(Step::Nothing) => {}
                Ok(Step::Check) => match self.read(session).await {
                    Ok(Some(values)) if values != self.current => {
                        self.current = values.clone();
                        self.recovered();
                        return values;
                    }
                    Ok(_) => self.recovered(),
                    Err(e) => self.failed(&e).await,
                },
                Err(e) => self.failed(&e).await,
            }
        }
    }

    fn polling(&self) -> bool {
        match self.mode {
            Mode::Poll => true,
            Mode::Stream => self
                .stream_failed_at
                .is_some_and(|at| at.elapsed() < STREAM_RETRY),
        }
    }

    /// Waits for a reason to read the environment: the next poll, or an event of the stream.
    async fn step(&mut self, session: &mut Session) -> Result<Step, CliError> {
        if self.polling() {
            tokio::time::sleep(self.interval).await;
            return Ok(Step::Check);
        }
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let client = session.fresh_client().await?;
                let environments = [self.target.env.clone()];
                match client
                    .project_events(
                        &self.target.org,
                        &self.target.project,
                        Some(&environments),
                        self.last_event_id,
                    )
                    .await
                {
                    // What happened while no stream was open, the events after
                    // `last_event_id` tell (or a resync, compared below, when the server no
                    // longer keeps them; a first stream starts with one).
                    Ok(stream) => {
                        if self.stream_failed_at.take().is_some() {
                            output::note("following the event stream again");
                        }
                        self.stream.insert(stream)
                    }
                    Err(e) => {
                        self.stream_failed_at = Some(Instant::now());
                        self.warn_once(&format!(
                            "cannot open the event stream ({}): checking every {} s instead",
                            CliError::from_client(session.server(), e),
                            self.interval.as_secs_f32()
                        ));
                        return Ok(Step::Check);
                    }
                }
            }
        };
        let next = stream.next().await;
        self.last_event_id = stream.last_event_id().or(self.last_event_id);
        match next {
            Ok(Some(StreamMessage::Resync(resync))) => {
                let revision = resync
                    .environments
                    .iter()
                    .find(|e| e.environment == self.target.env)
                    .map(|e| e.revision);
                Ok(if revision.is_some() && revision == self.revision {
                    Step::Nothing
                } else {
                    Step::Check
                })
            }
            Ok(Some(StreamMessage::Event(event))) => Ok(
                if event.environment == self.target.env
                    && matches!(
                        event.kind,
                        EventType::SecretsChanged | EventType::EnvironmentDeleted
                    )
                {
                    Step::Check
                } else {
                    Step::Nothing
                },
            ),
            // The server ended the stream (it does every hour): open it again from where it was.
            Ok(None) => {
                self.stream = None;
                Ok(Step::Nothing)
            }
            Err(e) => {
                self.stream = None;
                Err(CliError::from_client(session.server(), e))
            }
        }
    }

    /// The environment's values if they changed since the last read (by `ETag`).
    async fn read(&mut self, session: &mut Session) -> Result<Option<Values>, CliError> {
        let t = &self.target;
        let etag = self.etag.clone();
        let fetched = session
            .call(Retry::Idempotent, async |c: &Client| {
                c.read_secrets(&t.org, &t.project, &t.env, etag.as_deref())
                    .await
            })
            .await?;
        match fetched {
            Fetched::NotModified { .. } => Ok(None),
            Fetched::Modified { etag, value } => {
                self.etag = etag;
                self.revision = Some(value.revision);
                Ok(Some(Values::from_page(value)))
            }
        }
    }

    fn recovered(&mut self) {
        self.backoff = MIN_BACKOFF;
        if self.last_warning.take().is_some() {
            output::note("watching again");
        }
    }

    async fn failed(&mut self, e: &CliError) {
        self.warn_once(&format!(
            "cannot check {} for changes: {e}; the command keeps its current values",
            self.target.label()
        ));
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn warn_once(&mut self, text: &str) {
        if self.last_warning.as_deref() != Some(text) {
            output::warn(text);
            self.last_warning = Some(text.to_owned());
        }
    }
}
