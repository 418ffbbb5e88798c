//! The read-audit journal: how the audit events of reads are kept before a read is answered,
//! without a database transaction per read.
//!
//! A read's events are appended, as one line of JSON each, to a file of this process (a
//! *segment*) in the journal directory, and the read is answered once that `write` returned:
//! the events are then in the kernel's page cache, so a crash of the process (`kill -9`, an
//! out-of-memory kill) loses none of them. A read whose events cannot be appended is refused
//! (fail closed). One task, the drainer, copies what was appended into the `audit_events`
//! table shortly after (every [`JournalLimits::drain_delay`] while reads come in), in durable
//! transactions of up to [`JournalLimits::batch_rows`] events, then forgets the segment. What
//! power loss can take is what was appended and not yet drained: a few milliseconds of events.
//!
//! Segments are locked (`flock`) by the process writing them. At start a process adopts every
//! segment no live process holds, that a crashed one left, and drains it like its own; an event
//! is stored once even if it is drained twice (`ON CONFLICT DO NOTHING` on its id), and the
//! unfinished last line of a crashed append is ignored (its read was never answered).
//!
//! The events not yet drained are bounded ([`JournalLimits::max_backlog_bytes`]): when reads
//! come faster than the database takes their events, or while it refuses them, a read waits
//! for room (at most [`JournalLimits::wait`], then 503) once the bound is reached. Nothing is
//! ever dropped.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use crate::db::Db;
use crate::db::audit::AuditRow;
use crate::error::{ApiError, ApiResult};
use crate::service::audit::AuditEvent;

/// Where the drainer stores events: all of one call in one durable transaction, or none. An
/// event already stored (same id) is not stored again.
pub trait AuditSink: Send + Sync + 'static {
    fn write(
        &self,
        rows: &[AuditRow],
        pace: Pace,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

pub use crate::db::audit::Pace;

impl AuditSink for Db {
    async fn write(&self, rows: &[AuditRow], pace: Pace) -> Result<(), sqlx::Error> {
        crate::db::audit::commit_batch(self, rows, pace).await
    }
}

/// The bounds and pace of a journal.
#[derive(Debug, Clone, Copy)]
pub struct JournalLimits {
    /// Bytes appended and not yet in the database above which reads wait for room.
    pub max_backlog_bytes: u64,
    /// Events per drained batch (one transaction) at most.
    pub batch_rows: usize,
    /// Size from which the drainer starts a new segment (the full one is deleted once drained).
    pub segment_bytes: u64,
    /// How long the drainer lets events gather after the first one before it drains them.
    pub drain_delay: Duration,
    /// How long a read waits for room, and an audit listing for this process's events to
    /// reach the database, before either is answered 503.
    pub wait: Duration,
}

impl JournalLimits {
    pub fn new(max_backlog_bytes: u64) -> Self {
        Self {
            max_backlog_bytes,
            batch_rows: crate::db::audit::MAX_DRAINED_PER_STATEMENT,
            segment_bytes: 4 * 1024 * 1024,
            drain_delay: Duration::from_millis(10),
            wait: Duration::from_secs(5),
        }
    }
}

/// The drainer's pause after a failed transaction: doubles from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_LAST: Duration = Duration::from_secs(2);
/// What the drainer reads at a time (more when one line is longer).
const READ_BYTES: u64 = 1024 * 1024;
/// Name endings of segments, and of segments being created (not yet locked, never adopted).
const SEGMENT: &str = ".journal";
const CREATING: &str = ".journal.new";

/// Appends the audit events of reads to the journal and drains them into the database.
pub struct AuditWriter {
    journal: Arc<Journal>,
    stop: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("dir", &self.journal.dir)
            .finish_non_exhaustive()
    }
}

impl AuditWriter {
    /// Opens the journal in `dir` (created if missing), adopts the segments a crashed process
    /// left there, and starts the drainer on the current Tokio runtime.
    pub fn start(dir: &Path, sink: impl AuditSink, limits: JournalLimits) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let adopted = adopt(dir)?;
        let appended = adopted.iter().map(|s| s.len).sum();
        if !adopted.is_empty() {
            tracing::info!(
                segments = adopted.len(),
                bytes = appended,
                "adopting read-audit journal segments left by a stopped process"
            );
        }
        let journal = Arc::new(Journal {
            dir: dir.to_owned(),
            files: Mutex::new(Files {
                current: None,
                sealed: adopted.into(),
                appended,
                closed: false,
            }),
            wake: Notify::new(),
            waiting: AtomicUsize::new(0),
            drained: watch::Sender::new(0),
            limits,
        });
        if appended > 0 {
            journal.wake.notify_one();
        }
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(drain(journal.clone(), sink, stopped));
        Ok(Self {
            journal,
            stop: Mutex::new(Some((stop, task))),
        })
    }

    /// Keeps `events` together (all or none) before the read they audit is answered: a read
    /// whose events this refuses must be refused too. Waits while the backlog is full.
    pub async fn record(&self, events: Vec<AuditEvent>) -> ApiResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut line = Vec::with_capacity(events.len() * 512);
        for event in &events {
            serde_json::to_writer(&mut line, event.row()).map_err(|e| {
                ApiError::internal(anyhow::anyhow!("cannot encode an audit event: {e}"))
            })?;
            line.push(b'\n');
        }
        let journal = &self.journal;
        let mut drained = journal.drained.subscribe();
        let deadline = tokio::time::Instant::now() + journal.limits.wait;
        loop {
            match journal.append(&line)? {
                Appended::Yes => return Ok(()),
                Appended::Full => {
                    journal.waiting.fetch_add(1, Ordering::Relaxed);
                    let room = tokio::time::timeout_at(deadline, drained.changed()).await;
                    journal.waiting.fetch_sub(1, Ordering::Relaxed);
                    if !matches!(room, Ok(Ok(()))) {
                        return Err(ApiError::Unavailable {
                            message: "the audit log is behind; try again".into(),
                            retry_after: Some(Duration::from_secs(1)),
                        });
                    }
                }
            }
        }
    }

    /// Waits until every event recorded so far by this process is in the database, so that a
    /// listing sees them (503 when that takes longer than [`JournalLimits::wait`]).
    pub async fn flush(&self) -> ApiResult<()> {
        let target = self.journal.lock().appended;
        let mut drained = self.journal.drained.subscribe();
        self.journal.wake.notify_one();
        match tokio::time::timeout(self.journal.limits.wait, drained.wait_for(|d| *d >= target))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ApiError::Unavailable {
                message: "the audit log is catching up; try again".into(),
                retry_after: Some(Duration::from_secs(1)),
            }),
        }
    }

    /// Refuses further events, drains what was recorded (what the database refuses stays in
    /// the journal for the next start), stops the drainer and lets go of the segments.
    pub async fn shutdown(&self) {
        self.journal.lock().closed = true;
        let stop = self.stop.lock().ok().and_then(|mut s| s.take());
        if let Some((stop, task)) = stop {
            let _ = stop.send(());
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the read-audit drainer ended abnormally");
            }
        }
        // Closed, so unlocked: whatever is left is for the next process to adopt.
        let mut files = self.journal.lock();
        files.current = None;
        files.sealed.clear();
    }
}

struct Journal {
    dir: PathBuf,
    files: Mutex<Files>,
    /// Raised by every append; the drainer waits for it.
    wake: Notify,
    /// Reads waiting for room: the drainer then catches up rather than stay in the background.
    waiting: AtomicUsize,
    /// Bytes of events in the database, counted like [`Files::appended`].
    drained: watch::Sender<u64>,
    limits: JournalLimits,
}

struct Files {
    /// The segment appends go to; created by the first append after the last one was sealed.
    current: Option<Segment>,
    /// Full segments (and adopted ones), oldest first, deleted once drained.
    sealed: VecDeque<Segment>,
    /// Bytes of events appended since start (adopted ones included).
    appended: u64,
    closed: bool,
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes of whole events: appends write at this offset, the drainer reads up to it.
    len: u64,
    /// Bytes from the start that are in the database.
    drained: u64,
}

impl Journal {
    fn lock(&self) -> MutexGuard<'_, Files> {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `line` (whole events) unless the backlog is full; events larger than the whole
    /// backlog go in alone.
    fn append(&self, line: &[u8]) -> ApiResult<Appended> {
        let size = line.len() as u64;
        let mut files = self.lock();
        if files.closed {
            return Err(ApiError::Unavailable {
                message: "the server is shutting down".into(),
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        let backlog = files.appended - *self.drained.borrow();
        if backlog + size > self.limits.max_backlog_bytes && backlog > 0 {
            return Ok(Appended::Full);
        }
        let current = match &mut files.current {
            Some(current) => current,
            empty => empty.insert(Segment::create(&self.dir).map_err(|e| journal_failed(&e))?),
        };
        if let Err(e) = current.file.write_all_at(line, current.len) {
            // Whatever part of the events reached the file is cut off, so that the next append
            // overwrites it; if even that fails, the segment takes no more appends.
            if current.file.set_len(current.len).is_err() {
                let broken = files.current.take();
                files.sealed.extend(broken);
            }
            return Err(journal_failed(&e));
        }
        current.len += size;
        files.appended += size;
        drop(files);
        self.wake.notify_one();
        Ok(Appended::Yes)
    }

    /// Stores what the oldest segment with events not yet in the database holds, as far as one
    /// read takes it, in `sink`: batches of at most [`JournalLimits::batch_rows`], each counted
    /// as drained once stored. `Ok(false)` when there is nothing to drain.
    async fn drain_batch(&self, sink: &impl AuditSink) -> Result<bool, sqlx::Error> {
        let (file, from, to) = {
            let mut files = self.lock();
            if files
                .current
                .as_ref()
                .is_some_and(|c| c.len >= self.limits.segment_bytes)
            {
                let full = files.current.take();
                files.sealed.extend(full);
            }
            let next = files
                .sealed
                .front()
                .or(files.current.as_ref().filter(|c| c.drained < c.len));
            let Some(s) = next else { return Ok(false) };
            (s.file.clone(), s.drained, s.len)
        };
        if from == to {
            self.drained_up_to(&file, from, from);
            return Ok(true);
        }
        let bytes = read_lines(&file, from, to)?;
        let mut lines = bytes.split_inclusive(|b| *b == b'\n').peekable();
        let mut start = from;
        while lines.peek().is_some() {
            let (rows, end) = parse(&mut lines, start, self.limits.batch_rows);
            if !rows.is_empty() {
                // In the background while it keeps up; at full speed once it falls behind.
                let behind = self.lock().appended - *self.drained.borrow() > end - start;
                let pace = if behind || self.waiting.load(Ordering::Relaxed) > 0 {
                    Pace::CatchUp
                } else {
                    Pace::Background
                };
                sink.write(&rows, pace).await?;
            }
            self.drained_up_to(&file, start, end);
            start = end;
        }
        Ok(true)
    }

    /// Records that the bytes `from..end` of the segment of `file` are in the database, and
    /// deletes the segment once it is sealed and drained.
    fn drained_up_to(&self, file: &Arc<File>, from: u64, end: u64) {
        let mut files = self.lock();
        let files = &mut *files;
        let same = |s: &Segment| Arc::ptr_eq(&s.file, file);
        let segment = files
            .sealed
            .iter_mut()
            .chain(files.current.as_mut())
            .find(|s| same(s));
        if let Some(segment) = segment {
            segment.drained = end;
        }
        self.drained.send_modify(|d| *d += end - from);
        if let Some(done) = files
            .sealed
            .front()
            .filter(|s| same(s) && s.drained == s.len)
        {
            if let Err(e) = std::fs::remove_file(&done.path) {
                tracing::warn!(error = %e, path = %done.path.display(), "cannot delete a drained read-audit segment");
            }
            files.sealed.pop_front();
        }
    }
}

/// Whether [`Journal::append`] took the events.
enum Appended {
    Yes,
    /// The backlog is full: wait for the drainer.
    Full,
}

fn journal_failed(e: &std::io::Error) -> ApiError {
    ApiError::internal(anyhow::anyhow!("cannot write the read-audit journal: {e}"))
}

impl Segment {
    /// A new segment of this process, locked before other processes can see it.
    fn create(dir: &Path) -> std::io::Result<Self> {
        let name = uuid::Uuid::now_v7().to_string();
        let creating = dir.join(format!("{name}{CREATING}"));
        let path = dir.join(format!("{name}{SEGMENT}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&creating)?;
        file.try_lock().map_err(std::io::Error::other)?;
        std::fs::rename(&creating, &path)?;
        Ok(Self {
            file: Arc::new(file),
            path,
            len: 0,
            drained: 0,
        })
    }
}

/// The segments in `dir` that no live process holds, oldest first, locked by this one; each up
/// to the end of its last whole event. Removes the files of segments a crash left half-created.
fn adopt(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.to_str()
                .is_some_and(|p| p.ends_with(SEGMENT) || p.ends_with(CREATING))
        })
        .collect();
    names.sort();
    let mut adopted = Vec::new();
    for path in names {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        if file.try_lock().is_err() {
            continue; // another process's
        }
        if path.to_str().is_some_and(|p| p.ends_with(CREATING)) {
            std::fs::remove_file(&path)?;
            continue;
        }
        let len = whole_lines_len(&file)?;
        if len == 0 {
            // Nothing whole in it: at most the start of an append whose read was never answered.
            std::fs::remove_file(&path)?;
            continue;
        }
        adopted.push(Segment {
            file: Arc::new(file),
            path,
            len,
            drained: 0,
        });
    }
    Ok(adopted)
}

/// The length of `file` up to the end of its last whole line (0 when it has none), read from
/// the end.
fn whole_lines_len(file: &File) -> std::io::Result<u64> {
    let mut end = file.metadata()?.len();
    let mut chunk = vec![0; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..usize::try_from(end - start).unwrap_or(0)];
        file.read_exact_at(part, start)?;
        if let Some(last) = part.iter().rposition(|b| *b == b'\n') {
            return Ok(start + last as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The bytes of `file` from `from` (before `to`) up to the end of the last whole line read:
/// [`READ_BYTES`] at a time, or as much as it takes to hold one whole line.
fn read_lines(file: &File, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    let mut want = (to - from).min(READ_BYTES);
    loop {
        let mut bytes = vec![0; usize::try_from(want).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut bytes, from)?;
        match bytes.iter().rposition(|b| *b == b'\n') {
            Some(last) => {
                bytes.truncate(last + 1);
                return Ok(bytes);
            }
            // Appends end with a newline, so up to `to` there is one.
            None if want < to - from => want = (want * 2).min(to - from),
            None => {
                return Err(std::io::Error::other(
                    "a journal segment does not end with a newline",
                ));
            }
        }
    }
}

/// Up to `max_rows` events from the next whole `lines` (the first starting at offset `base`),
/// and the offset after the last line taken. A line that is not an event is logged and skipped.
fn parse<'a>(
    lines: &mut impl Iterator<Item = &'a [u8]>,
    base: u64,
    max_rows: usize,
) -> (Vec<AuditRow>, u64) {
    let mut rows = Vec::new();
    let mut end = base;
    while rows.len() < max_rows {
        let Some(line) = lines.next() else { break };
        match serde_json::from_slice::<AuditRow>(line) {
            Ok(row) => rows.push(row),
            Err(e) => {
                tracing::error!(error = %e, offset = end, "skipping an unreadable line of the read-audit journal")
            }
        }
        end += line.len() as u64;
    }
    (rows, end)
}

/// The drainer: after an append (and [`JournalLimits::drain_delay`] more), drains everything
/// appended until then; on failure retries with growing pauses. Once stopped it drains what is
/// left (one try: what fails stays for the next start) and ends.
async fn drain(journal: Arc<Journal>, sink: impl AuditSink, mut stop: oneshot::Receiver<()>) {
    let mut stopping = false;
    let mut retry = RETRY_FIRST;
    loop {
        if !stopping {
            tokio::select! {
                () = journal.wake.notified() => {
                    tokio::select! {
                        () = tokio::time::sleep(journal.limits.drain_delay) => {}
                        _ = &mut stop => stopping = true,
                    }
                }
                _ = &mut stop => stopping = true,
            }
        }
        let target = journal.lock().appended;
        while *journal.drained.borrow() < target {
            match journal.drain_batch(&sink).await {
                Ok(true) => retry = RETRY_FIRST,
                Ok(false) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot store read-audit events; they stay in the journal and are retried");
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        _ = &mut stop => stopping = true,
                    }
                    retry = (retry * 2).min(RETRY_LAST);
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::service::ClientMeta;
    use crate::service::audit::Outcome;

    /// Stores events in memory, or refuses every batch while `refuse` is set.
    #[derive(Clone, Default)]
    struct Memory {
        stored: Arc<Mutex<Vec<(String, String)>>>,
        batches: Arc<Mutex<Vec<usize>>>,
        refuse: Arc<AtomicBool>,
    }

    impl AuditSink for Memory {
        async fn write(&self, rows: &[AuditRow], _: Pace) -> Result<(), sqlx::Error> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(sqlx::Error::Protocol("refused".into()));
            }
            let mut stored = self.stored.lock().unwrap();
            for row in rows {
                // Stored once per id, as the database does.
                let id = row.id.to_string();
                if !stored.iter().any(|(i, _)| *i == id) {
                    stored.push((id, row.action.clone()));
                }
            }
            self.batches.lock().unwrap().push(rows.len());
            Ok(())
        }
    }

    impl Memory {
        fn refusing() -> Self {
            let sink = Self::default();
            sink.refuse.store(true, Ordering::SeqCst);
            sink
        }

        fn actions(&self) -> Vec<String> {
            let stored = self.stored.lock().unwrap();
            stored.iter().map(|(_, a)| a.clone()).collect()
        }
    }

    fn events(action: &'static str, n: usize) -> Vec<AuditEvent> {
        (0..n)
            .map(|_| AuditEvent::new(action, Outcome::Success, &ClientMeta::default()))
            .collect()
    }

    fn limits() -> JournalLimits {
        JournalLimits {
            max_backlog_bytes: 1 << 20,
            batch_rows: 8,
            segment_bytes: 2048,
            drain_delay: Duration::from_millis(1),
            wait: Duration::from_secs(30),
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn events_reach_the_sink_in_order_in_bounded_batches_and_drained_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Memory::default();
        let writer = AuditWriter::start(dir.path(), sink.clone(), limits()).unwrap();
        let mut expected = Vec::new();
        for i in 0..40 {
            let action = if i % 2 == 0 { "even" } else { "odd" };
            writer.record(events(action, 3)).await.unwrap();
            expected.extend([action; 3]);
        }
        writer.flush().await.unwrap();
        assert_eq!(sink.actions(), expected);
        let batches = sink.batches.lock().unwrap().clone();
        assert!(batches.iter().all(|b| *b <= 8), "{batches:?}");
        // 120 events of about 300 bytes went through segments of 2 KiB: all drained and deleted
        // but the one appends go to.
        assert!(files(dir.path()).len() <= 1, "{:?}", files(dir.path()));
        writer.shutdown().await;
    }

    #[tokio::test]
    async fn segments_left_by_a_stopped_process_are_adopted_and_stored_once_without_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let refusing = Memory::refusing();
        let first = AuditWriter::start(dir.path(), refusing.clone(), limits()).unwrap();
        for _ in 0..10 {
            first.record(events("before-crash", 2)).await.unwrap();
        }
        // A live process's segments are its own.
        let beside = Memory::default();
        let other = AuditWriter::start(dir.path(), beside.clone(), limits()).unwrap();
        other.flush().await.unwrap();
        assert!(beside.actions().is_empty());
        other.shutdown().await;

        // The database refused everything: the process stops with its events in the journal,
        // and the last append of a crash was cut short.
        first.shutdown().await;
        drop(first);
        let segments = files(dir.path());
        assert!(!segments.is_empty());
        let last = dir.path().join(segments.last().unwrap());
        let mut file = OpenOptions::new().append(true).open(&last).unwrap();
        std::io::Write::write_all(&mut file, br#"{"id":"0190"#).unwrap();

        let sink = Memory::default();
        let next = AuditWriter::start(dir.path(), sink.clone(), limits()).unwrap();
        next.record(events("after-restart", 1)).await.unwrap();
        next.flush().await.unwrap();
        let mut expected = vec!["before-crash"; 20];
        expected.push("after-restart");
        assert_eq!(sink.actions(), expected);
        next.shutdown().await;
        assert!(
            files(dir.path()).iter().all(|f| !segments.contains(f)),
            "adopted segments are deleted once drained"
        );
    }

    #[tokio::test]
    async fn while_the_database_refuses_events_reads_go_on_until_the_bound_then_wait_then_503() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Memory::refusing();
        let small = JournalLimits {
            max_backlog_bytes: 4096,
            wait: Duration::from_millis(100),
            ..limits()
        };
        let writer = Arc::new(AuditWriter::start(dir.path(), sink.clone(), small).unwrap());
        let mut kept = 0;
        let refused = loop {
            match writer.record(events("held", 1)).await {
                Ok(()) => kept += 1,
                Err(e) => break e,
            }
            assert!(kept < 1000, "the backlog is bounded");
        };
        assert!(
            matches!(
                refused,
                ApiError::Unavailable {
                    retry_after: Some(_),
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(kept > 1);
        assert!(
            writer.flush().await.is_err(),
            "nothing reaches the database"
        );

        sink.refuse.store(false, Ordering::SeqCst);
        // The drainer retries after a pause that grew while it was refused (at most 2 s).
        let mut flushed = writer.flush().await;
        for _ in 0..100 {
            if flushed.is_ok() {
                break;
            }
            flushed = writer.flush().await;
        }
        flushed.unwrap();
        assert_eq!(
            sink.actions().len(),
            kept,
            "nothing kept is lost or stored twice"
        );
        writer.record(events("later", 1)).await.unwrap();
        writer.shutdown().await;
        assert_eq!(
            sink.actions().len(),
            kept + 1,
            "shutdown drains what is left"
        );
    }

    #[tokio::test]
    async fn reads_faster_than_the_database_wait_for_room_and_all_get_in() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Memory::refusing();
        let small = JournalLimits {
            max_backlog_bytes: 4096,
            ..limits()
        };
        let writer = Arc::new(AuditWriter::start(dir.path(), sink.clone(), small).unwrap());
        // About 40 × 300 bytes: more than the backlog holds.
        let reads = {
            let writer = writer.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    writer.record(events("read", 1)).await?;
                }
                ApiResult::Ok(())
            })
        };
        tokio::time::timeout(Duration::from_secs(30), async {
            while writer.journal.waiting.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("a read waits for room");
        sink.refuse.store(false, Ordering::SeqCst);
        reads.await.unwrap().unwrap();
        writer.flush().await.unwrap();
        assert_eq!(sink.actions().len(), 40);
        writer.shutdown().await;
    }

    #[tokio::test]
    async fn an_event_that_cannot_be_written_is_refused_and_the_journal_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        let sink = Memory::default();
        let writer = AuditWriter::start(&journal, sink.clone(), limits()).unwrap();
        // No segment exists until the first event; where it would go is not a directory.
        std::fs::remove_dir(&journal).unwrap();
        std::fs::write(&journal, b"").unwrap();
        let refused = writer.record(events("refused", 1)).await.unwrap_err();
        assert!(matches!(refused, ApiError::Internal(_)), "{refused:?}");

        std::fs::remove_file(&journal).unwrap();
        std::fs::create_dir(&journal).unwrap();
        writer.record(events("kept", 1)).await.unwrap();
        writer.flush().await.unwrap();
        assert_eq!(sink.actions(), ["kept"]);
        writer.shutdown().await;
        assert!(matches!(
            writer.record(events("late", 1)).await,
            Err(ApiError::Unavailable { .. })
        ));
    }
}
