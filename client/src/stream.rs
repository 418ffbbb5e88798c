//! Server-Sent Events: the wire format of a project's event stream
//! (`GET /api/v1/orgs/{org}/projects/{project}/events`, `Accept: text/event-stream`), parsed as
//! the WHATWG HTML standard says (§ 9.2 "Server-sent events"), and its messages read as the
//! types the server writes.

use std::collections::VecDeque;
use std::time::Duration;

use reqwest::Response;

use crate::Error;
use crate::error::describe_json_error;
use crate::types::{Event, EventType, Resync};

/// The largest message an [`EventStream`] accepts: far above any event coffer-server sends (an
/// event names keys, never values), small enough that a broken or hostile server cannot make
/// the reader hold more.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// How long an [`EventStream`] waits for the next bytes before it takes the connection for
/// dead: three of coffer-server's heartbeats (one at least every 15 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// A message of a project's event stream. Nearly every message is an event, each taken once by
/// its reader: boxing it would cost an allocation per message to save space nobody keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum StreamMessage {
    /// A change of an environment's secrets, or of the environment.
    Event(Event),
    /// The current revision of every environment the stream delivers, and the position it
    /// continues from: where a stream opened without a position starts, and what a stream
    /// resumed from a position the server no longer retains gets instead of what was missed.
    Resync(Resync),
}

/// An open event stream of a project (see [`crate::Client::project_events`]). Messages arrive in
/// the order the changes were committed; comments (heartbeats) and messages of types this
/// version does not know are skipped, but their ids still count for
/// [`EventStream::last_event_id`].
pub struct EventStream {
    response: Response,
    parser: Parser,
    idle_timeout: Duration,
    /// The response body ended (or broke off): nothing more comes.
    ended: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("path", &self.response.url().path())
            .field("last_event_id", &self.parser.last_id)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    pub(crate) fn new(response: Response) -> Self {
        Self {
            response,
            parser: Parser::new(MAX_MESSAGE_BYTES),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            ended: false,
        }
    }

    /// The same stream, taken for dead when nothing (not even a heartbeat) arrives for
    /// `timeout` (default [`DEFAULT_IDLE_TIMEOUT`]).
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The next message; `Ok(None)` once the server ended the stream (it does after an hour,
    /// when it shuts down, or when the credentials lose access): open it again from
    /// [`EventStream::last_event_id`] to go on with every later event exactly once.
    ///
    /// A message that is not the JSON its type documents is an [`Error::Decode`] (which does not
    /// quote it), and the stream goes on after it. A message larger than
    /// [`MAX_MESSAGE_BYTES`], a broken connection or [`Error::StreamIdle`] end the stream:
    /// every later call answers `Ok(None)`.
    pub async fn next(&mut self) -> Result<Option<StreamMessage>, Error> {
        loop {
            if let Some(raw) = self.parser.ready.pop_front() {
                match decode(raw) {
                    Ok(Some(message)) => return Ok(Some(message)),
                    Ok(None) => continue,
                    Err(e) => return Err(e),
                }
            }
            if self.ended {
                return Ok(None);
            }
            let chunk = tokio::time::timeout(self.idle_timeout, self.response.chunk()).await;
            let chunk = match chunk {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => {
                    self.ended = true;
                    return Err(Error::Transport(e));
                }
                Err(_) => {
                    self.ended = true;
                    return Err(Error::StreamIdle(self.idle_timeout));
                }
            };
            match chunk {
                Some(bytes) => {
                    if let Err(TooLarge) = self.parser.feed(&bytes) {
                        self.ended = true;
                        self.parser.ready.clear();
                        return Err(Error::Decode(format!(
                            "{}: a message of the event stream is larger than the limit of \
                             {} bytes",
                            self.response.url().path(),
                            self.parser.limit
                        )));
                    }
                }
                // An incomplete message at the end is discarded, as the standard says.
                None => self.ended = true,
            }
        }
    }

    /// The id of the last message received (`Last-Event-ID`), whatever its type, when it is an
    /// event id.
    pub fn last_event_id(&self) -> Option<i64> {
        self.parser
            .last_id
            .as_deref()
            .and_then(|id| id.parse().ok())
    }

    /// How long the server asked clients to wait before they reconnect (`retry:`), if it did.
    pub fn retry(&self) -> Option<Duration> {
        self.parser.retry.map(Duration::from_millis)
    }
}

/// A message as the standard dispatches it: its type and data, and the last event id then.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawMessage {
    id: Option<String>,
    event: String,
    data: String,
}

/// The message types coffer-server sends besides the events.
const RESYNC: &str = "resync";

/// The message as the type it names; `None` for a type this version does not know.
fn decode(raw: RawMessage) -> Result<Option<StreamMessage>, Error> {
    let failed = |e: serde_json::Error| {
        Error::Decode(format!(
            "the {:?} message {} of the event stream: {}",
            raw.event,
            raw.id.as_deref().unwrap_or("without id"),
            describe_json_error(&e)
        ))
    };
    if raw.event == RESYNC {
        let resync = serde_json::from_str(&raw.data).map_err(failed)?;
        return Ok(Some(StreamMessage::Resync(resync)));
    }
    if raw.event.parse::<EventType>().is_err() {
        return Ok(None);
    }
    let event = serde_json::from_str(&raw.data).map_err(failed)?;
    Ok(Some(StreamMessage::Event(event)))
}

/// The message being assembled grew beyond the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TooLarge;

/// The event-stream interpretation of the standard: lines end with CRLF, LF or CR; a blank
/// line dispatches the message; `:` starts a comment; fields are `event`, `data`, `id` and
/// `retry`.
#[derive(Debug)]
struct Parser {
    /// Bytes of the line being received (split on bytes: in UTF-8 neither CR nor LF is ever
    /// part of another character).
    line: Vec<u8>,
    /// The last byte was a CR: a LF right after it ends no further line.
    after_cr: bool,
    /// No line has ended yet: a byte order mark at the start is dropped.
    first_line: bool,
    event: String,
    data: String,
    /// The "last event ID buffer": kept from message to message until an `id` field changes it.
    id: Option<String>,
    /// The "last event ID string": the buffer as of the last dispatched message.
    last_id: Option<String>,
    retry: Option<u64>,
    /// At most this many bytes of one message (its pending line, type and data) are held.
    limit: usize,
    ready: VecDeque<RawMessage>,
}

impl Parser {
    fn new(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            event: String::new(),
            data: String::new(),
            id: None,
            last_id: None,
            retry: None,
            limit,
            ready: VecDeque::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), TooLarge> {
        while let Some(at) = bytes.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let (head, rest) = bytes.split_at(at);
            let end = rest[0];
            bytes = &rest[1..];
            let lf_of_crlf = end == b'\n' && self.after_cr && head.is_empty();
            self.after_cr = end == b'\r';
            if lf_of_crlf {
                continue;
            }
            self.extend(head)?;
            self.end_line();
        }
        if !bytes.is_empty() {
            self.after_cr = false;
            self.extend(bytes)?;
        }
        Ok(())
    }

    fn extend(&mut self, bytes: &[u8]) -> Result<(), TooLarge> {
        let held = self.line.len() + self.event.len() + self.data.len();
        if bytes.len() > self.limit.saturating_sub(held) {
            return Err(TooLarge);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self) {
        let bytes = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&bytes);
        let mut line: &str = &text;
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                self.id = (!value.is_empty()).then(|| value.to_owned());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        self.last_id.clone_from(&self.id);
        let mut data = std::mem::take(&mut self.data);
        let event = std::mem::take(&mut self.event);
        if data.is_empty() {
            return;
        }
        data.pop();
        self.ready.push_back(RawMessage {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(chunks: &[&[u8]]) -> (Vec<RawMessage>, Parser) {
        let mut parser = Parser::new(MAX_MESSAGE_BYTES);
        for chunk in chunks {
            parser.feed(chunk).unwrap();
        }
        (parser.ready.drain(..).collect(), parser)
    }

    fn raw(id: Option<&str>, event: &str, data: &str) -> RawMessage {
        RawMessage {
            id: id.map(str::to_owned),
            event: event.to_owned(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn fields_make_a_message_at_a_blank_line() {
        let (messages, parser) = parse(&[b"id: 7\nevent: secrets.changed\ndata: {\"a\":1}\n\n"]);
        assert_eq!(messages, [raw(Some("7"), "secrets.changed", "{\"a\":1}")]);
        assert_eq!(parser.last_id.as_deref(), Some("7"));
    }

    #[test]
    fn lines_end_with_crlf_lf_or_cr_even_when_split_between_chunks() {
        let whole = b"id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\rid: 3\ndata: c\n\n";
        let (expected, _) = parse(&[whole]);
        assert_eq!(
            expected,
            [
                raw(Some("1"), "message", "a"),
                raw(Some("2"), "message", "b"),
                raw(Some("3"), "message", "c")
            ]
        );
        // Every split, in particular between the CR and the LF of a CRLF.
        for at in 0..whole.len() {
            let (messages, _) = parse(&[&whole[..at], &whole[at..]]);
            assert_eq!(messages, expected, "split at {at}");
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(parse(&bytes).0, expected);
    }

    #[test]
    fn data_lines_join_with_newlines_and_one_leading_space_is_dropped() {
        let (messages, _) = parse(&[b"data:first\ndata:  second\ndata\ndata: \n\n"]);
        assert_eq!(messages, [raw(None, "message", "first\n second\n\n")]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored_and_a_message_without_data_is_not_sent() {
        let (messages, parser) =
            parse(&[b":heartbeat\n\n: another\nfoo: bar\nevent: resync\nid: 9\n\ndata: x\n\n"]);
        // The message without data dispatches nothing, but its id counts.
        assert_eq!(messages, [raw(Some("9"), "message", "x")]);
        assert_eq!(parser.last_id.as_deref(), Some("9"));
    }

    #[test]
    fn the_id_stays_until_changed_and_an_empty_id_clears_it() {
        let (messages, parser) = parse(&[b"id: 4\ndata: a\n\ndata: b\n\nid\ndata: c\n\n"]);
        assert_eq!(
            messages,
            [
                raw(Some("4"), "message", "a"),
                raw(Some("4"), "message", "b"),
                raw(None, "message", "c")
            ]
        );
        assert_eq!(parser.last_id, None);
        let (_, parser) = parse(&[b"id: 5\n\nid: 6\0\n\n"]);
        assert_eq!(
            parser.last_id.as_deref(),
            Some("5"),
            "an id with NUL is ignored"
        );
    }

    #[test]
    fn retry_takes_only_digits() {
        let (_, parser) = parse(&[b"retry: 1500\n\nretry: 2s\n\n"]);
        assert_eq!(parser.retry, Some(1500));
    }

    #[test]
    fn a_leading_byte_order_mark_is_dropped_and_invalid_utf8_replaced() {
        let (messages, _) = parse(&[b"\xef\xbb", b"\xbfdata: a\xff\n\n"]);
        assert_eq!(messages, [raw(None, "message", "a\u{fffd}")]);
    }

    #[test]
    fn an_incomplete_message_is_not_dispatched() {
        let (messages, _) = parse(&[b"data: a\n\ndata: b\n"]);
        assert_eq!(messages, [raw(None, "message", "a")]);
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_it_is_held() {
        let mut parser = Parser::new(16);
        assert_eq!(parser.feed(b"data: 0123456789\n"), Ok(()));
        assert_eq!(parser.feed(b"data: 0123456789"), Err(TooLarge));
        let mut parser = Parser::new(16);
        assert_eq!(parser.feed(&[b'x'; 17]), Err(TooLarge));
        // Many small messages are fine: the limit is per message.
        let mut parser = Parser::new(16);
        for _ in 0..100 {
            parser.feed(b"data: 012345\n\n").unwrap();
        }
        assert_eq!(parser.ready.len(), 100);
    }

    #[test]
    fn messages_are_read_as_the_types_they_name() {
        let event = r#"{"id":3,"type":"secrets.changed","org":"acme","project":"web","environment":"production","revision":2,"changes":[{"key":"A","action":"updated"}],"actor":{"kind":"api_key","id":null},"time":"2026-11-30T12:00:00Z"}"#;
        let Some(StreamMessage::Event(e)) =
            decode(raw(Some("3"), "secrets.changed", event)).unwrap()
        else {
            panic!("not an event");
        };
        assert_eq!(
            (e.id, e.kind, e.revision),
            (3, EventType::SecretsChanged, 2)
        );
        assert!(!e.via_reference);
        let resync = r#"{"reason":"start","last_event_id":3,"environments":[{"environment":"production","revision":2}]}"#;
        let Some(StreamMessage::Resync(r)) = decode(raw(Some("3"), "resync", resync)).unwrap()
        else {
            panic!("not a resync");
        };
        assert_eq!((r.last_event_id, r.environments.len()), (3, 1));
        assert_eq!(decode(raw(None, "message", "hello")).unwrap(), None);
        assert_eq!(decode(raw(None, "webhook.sent", "{}")).unwrap(), None);
    }

    #[test]
    fn a_message_that_is_not_its_json_is_an_error_that_does_not_quote_it() {
        let err = decode(raw(
            Some("8"),
            "secrets.changed",
            r#"{"id":"hunter2","type":"secrets.changed"}"#,
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Decode(_)), "{err:?}");
        assert!(
            text.contains("secrets.changed") && text.contains('8'),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// A server on a local port answering one request with `head`, then each of `parts` after
    /// a pause, then holding the connection open for `hold`.
    async fn serve(head: &'static str, parts: Vec<String>, hold: Duration) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0_u8; 4096];
            let _ = socket.read(&mut request).await;
            socket.write_all(head.as_bytes()).await.unwrap();
            for part in parts {
                tokio::time::sleep(Duration::from_millis(20)).await;
                socket.write_all(part.as_bytes()).await.unwrap();
            }
            tokio::time::sleep(hold).await;
        });
        format!("http://{addr}")
    }

    const HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";

    async fn open(base: &str) -> EventStream {
        let response = reqwest::get(format!("{base}/events")).await.unwrap();
        EventStream::new(response)
    }

    #[tokio::test]
    async fn a_stream_yields_its_messages_then_ends_and_keeps_the_last_id() {
        let resync = "id: 5\nevent: resync\ndata: {\"reason\":\"start\",\"last_event_id\":5,\"environments\":[]}\n\n";
        let base = serve(
            HEAD,
            vec![
                resync.to_owned(),
                ":heartbeat\n\n".to_owned(),
                "id: 6\nevent: later.kind\ndata: {}\n\n".to_owned(),
            ],
            Duration::ZERO,
        )
        .await;
        let mut stream = open(&base).await;
        let first = stream.next().await.unwrap();
        assert!(matches!(first, Some(StreamMessage::Resync(r)) if r.last_event_id == 5));
        assert_eq!(stream.last_event_id(), Some(5));
        // The unknown type is skipped, its id kept; then the server closes.
        assert_eq!(stream.next().await.unwrap(), None);
        assert_eq!(stream.last_event_id(), Some(6));
        assert_eq!(stream.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_silent_stream_is_taken_for_dead() {
        let base = serve(
            HEAD,
            vec![":heartbeat\n\n".to_owned()],
            Duration::from_secs(5),
        )
        .await;
        let mut stream = open(&base)
            .await
            .with_idle_timeout(Duration::from_millis(200));
        let err = stream.next().await.unwrap_err();
        assert!(matches!(err, Error::StreamIdle(_)), "{err:?}");
        assert_eq!(stream.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_endless_message_ends_the_stream_without_quoting_it() {
        let long = "data: secret-marker".repeat(60_000);
        let base = serve(HEAD, vec![long], Duration::from_secs(5)).await;
        let mut stream = open(&base).await;
        let err = stream.next().await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("larger than the limit"), "{text}");
        assert!(!text.contains("secret-marker"), "{text}");
        assert_eq!(stream.next().await.unwrap(), None);
    }
}
