//! Requests answered 429 or 503 are tried again after `Retry-After` when repeating them is
//! harmless, and never otherwise: against a stand-in server that answers as told.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{User, runtime};

const SECRET: &str = r#"{"key":"A","value":"from-the-server","comment":null,"version":1,"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}"#;

/// A server on a local port answering the n-th request with `answers[n]` (the last one
/// repeated); the number of requests it got.
fn stand_in(answers: Vec<String>) -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let listener = runtime()
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = count.clone();
    runtime().spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let answer = answers[n.min(answers.len() - 1)].clone();
            tokio::spawn(async move {
                // Read the head (and whatever body came with it), then answer and close.
                let mut buf = vec![0_u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, count)
}

fn answer(status: &str, headers: &[&str], body: &str) -> String {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    format!("{head}\r\n{body}")
}

fn busy(status: &str, retry_after: &str) -> String {
    answer(
        status,
        &[&format!("retry-after: {retry_after}")],
        r#"{"error":{"code":"rate_limited","message":"slow down","request_id":"r1"}}"#,
    )
}

fn user(url: &str) -> User {
    User::with_token("web").var("COFFER_SERVER_URL", url)
}

#[test]
fn a_read_answered_503_is_tried_again_after_retry_after() {
    let (url, count) = stand_in(vec![
        busy("503 Service Unavailable", "1"),
        answer("200 OK", &[], SECRET),
    ]);
    let started = Instant::now();
    let out = user(&url).run(["secrets", "get", "A"]);
    assert_eq!(out.ok(), "from-the-server");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(out.stderr.contains("trying again in 1 s"), "{out:#?}");
}

#[test]
fn a_read_answered_429_with_an_http_date_is_tried_again_then_given_up_after_three_tries() {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(60));
    let (url, count) = stand_in(vec![busy("429 Too Many Requests", &date)]);
    let out = user(&url).run(["secrets", "get", "A"]);
    let err = out.fails_with(1);
    assert!(err.contains("slow down"), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn an_import_answered_503_is_not_sent_again() {
    let (url, count) = stand_in(vec![
        busy("503 Service Unavailable", "0"),
        answer("200 OK", &[], "{}"),
    ]);
    let user = user(&url);
    std::fs::write(user.path("a.env"), "A=1\n").unwrap();
    user.run(["import", "a.env"]).fails_with(1);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}
