//! How long `coffer run -- true` takes against a coffer-server in this process (one bulk read of
//! an environment of 50 secrets, then the command), beside `env true` as the floor: starting a
//! process that starts another. The difference is what coffer adds; the target is under 100 ms.
//!
//! `cargo bench -p coffer-cli --bench startup` (optionally `-- ROUNDS`, default 30).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[allow(dead_code)]
#[path = "../tests/cli/support.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{User, server};

const TARGET: Duration = Duration::from_millis(100);

/// The durations of `rounds` runs of `command` (each must succeed), sorted.
fn time(rounds: usize, mut command: impl FnMut() -> Command) -> Vec<Duration> {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let mut command = command();
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            let started = Instant::now();
            let status = command.status().unwrap();
            let took = started.elapsed();
            assert!(status.success(), "{command:?}: {status}");
            took
        })
        .collect();
    times.sort();
    times
}

fn median(times: &[Duration]) -> Duration {
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let project = server().project("bench");
    for i in 0..50 {
        server().put(
            &project,
            "development",
            &format!("KEY_{i}"),
            &"v".repeat(40),
        );
    }
    let user = User::with_token(&project);
    // Warm up both (page cache, the server's caches, the connection pool of nothing).
    time(3, || user.command(["run", "--", "true"]));
    time(3, || {
        let mut c = Command::new("env");
        c.arg("true");
        c
    });

    let coffer = time(rounds, || user.command(["run", "--", "true"]));
    let floor = time(rounds, || {
        let mut c = Command::new("env");
        c.arg("true");
        c
    });
    let (coffer_median, floor_median) = (median(&coffer), median(&floor));
    let overhead = coffer_median.saturating_sub(floor_median);
    println!("startup: {rounds} rounds each, medians (min .. max)");
    println!(
        "  coffer run -- true   {:>10}   ({} .. {})",
        ms(coffer_median),
        ms(coffer[0]),
        ms(coffer[coffer.len() - 1])
    );
    println!(
        "  env true (floor)     {:>10}   ({} .. {})",
        ms(floor_median),
        ms(floor[0]),
        ms(floor[floor.len() - 1])
    );
    println!(
        "  difference           {:>10}   target < {}: {}",
        ms(overhead),
        ms(TARGET),
        if overhead < TARGET { "met" } else { "MISSED" }
    );
}
