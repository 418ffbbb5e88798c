//! `coffer run`: the command's environment, signals, exit codes, `--watch` and
//! `--fallback-file`.

use std::process::{Child, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};

use crate::support::{User, closed_port_url, finish, mode, server, wait, wait_until};

const WAIT: Duration = Duration::from_secs(30);

fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

fn spawn(user: &User, args: &[&str]) -> Child {
    user.command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_command_gets_the_secrets_over_its_environment_and_coffer_exits_with_its_code() {
    let project = server().project("run");
    server().put(&project, "development", "GREETING", "hello");
    server().put(&project, "development", "TARGET", "${GREETING} world");
    let user = User::with_token(&project).var("GREETING", "from the parent");
    let out = user.run([
        "run",
        "--",
        "sh",
        "-c",
        "printf '%s|%s' \"$GREETING\" \"$TARGET\"; exit 7",
    ]);
    assert_eq!(out.code, Some(7), "{out:#?}");
    // References are resolved, and a secret replaces a variable of the same name.
    assert_eq!(out.stdout, "hello|hello world");

    // A command killed by a signal is reported as 128+N, as shells do.
    let out = user.run(["run", "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(out.code, Some(128 + 9), "{out:#?}");
    // One that cannot be started is 127.
    let out = user.run(["run", "--", "/nonexistent/program"]);
    assert_eq!(out.code, Some(127), "{out:#?}");
    assert!(out.stderr.contains("cannot start"), "{out:#?}");
}

#[test]
fn sigterm_and_sigint_sent_to_coffer_reach_the_command() {
    let project = server().project("signals");
    let user = User::with_token(&project);
    for (sig, name, code) in [(Signal::TERM, "TERM", 42), (Signal::INT, "INT", 43)] {
        let ready = user.path(&format!("ready-{name}"));
        let mark = user.path(&format!("got-{name}"));
        let script = format!(
            "trap 'echo got > \"{mark}\"; exit {code}' {name}; echo > \"{ready}\"; \
             while :; do sleep 0.05; done",
            mark = mark.display(),
            ready = ready.display(),
        );
        let mut child = spawn(&user, &["run", "--", "sh", "-c", &script]);
        wait_until("the command started", WAIT, || ready.exists());
        signal(&child, sig);
        let status = wait(&mut child, WAIT);
        assert_eq!(status.code(), Some(code), "{name}");
        assert_eq!(read(&mark).trim(), "got", "{name}");
    }
}

/// Runs `coffer run ARGS -- sh -c 'echo $GREETING >> log; exec sleep 30'`, changes GREETING
/// through the API, and checks that the command was started again with the new value.
fn restarts_after_a_change(name: &str, args: &[&str]) {
    let project = server().project(name);
    server().put(&project, "development", "GREETING", "one");
    let user = User::with_token(&project);
    let log = user.path("log");
    let script = format!("echo \"$GREETING\" >> \"{}\"; exec sleep 30", log.display());
    let mut command = vec!["run"];
    command.extend(args);
    command.extend(["--", "sh", "-c", &script]);
    let child = spawn(&user, &command);
    wait_until("the command started", WAIT, || read(&log) == "one\n");
    // An unrelated environment changing restarts nothing.
    server().put(&project, "staging", "GREETING", "elsewhere");
    server().put(&project, "development", "GREETING", "two");
    wait_until("the command restarted", WAIT, || read(&log) == "one\ntwo\n");
    signal(&child, Signal::TERM);
    let out = finish(child, WAIT);
    // The command (sleep) was killed by the SIGTERM passed on.
    assert_eq!(out.code, Some(128 + 15), "{out:#?}");
    assert!(out.stderr.contains("restarted the command"), "{out:#?}");
    assert!(!out.stderr.contains("two"), "{out:#?}");
    assert_eq!(read(&log), "one\ntwo\n");
}

#[test]
fn with_watch_the_command_restarts_when_the_event_stream_reports_a_change() {
    restarts_after_a_change("watch", &["--watch"]);
}

#[test]
fn with_watch_and_poll_the_command_restarts_when_a_conditional_read_finds_a_change() {
    restarts_after_a_change("poll", &["--watch", "--poll", "--poll-interval", "200ms"]);
}

#[test]
fn the_fallback_file_is_sealed_0600_and_used_only_when_the_server_is_unreachable() {
    let project = server().project("fallback");
    server().put(&project, "development", "GREETING", "sealed-value");
    let user = User::with_token(&project);
    let print = [
        "run",
        "--fallback-file",
        "cache",
        "--",
        "sh",
        "-c",
        "printf %s \"$GREETING\"",
    ];
    let out = user.run(print);
    assert_eq!(out.ok(), "sealed-value");
    assert!(out.stderr.is_empty(), "{out:#?}");
    let cache = user.path("cache");
    assert_eq!(mode(&cache), 0o600);
    assert_eq!(mode(&user.config_dir().join("fallback.key")), 0o600);
    assert!(!read(&cache).contains("sealed-value"));

    let offline = User::with_token(&project).var("COFFER_SERVER_URL", &closed_port_url());
    std::fs::copy(&cache, offline.path("cache")).unwrap();
    std::fs::create_dir_all(offline.config_dir()).unwrap();
    std::fs::copy(
        user.config_dir().join("fallback.key"),
        offline.config_dir().join("fallback.key"),
    )
    .unwrap();
    let out = offline.run(print);
    assert_eq!(out.ok(), "sealed-value");
    assert!(out.stderr.contains("warning: cannot reach"), "{out:#?}");

    // Only with the option: otherwise an unreachable server is an error.
    let out = offline.run(["run", "--", "true"]);
    out.fails_with(6);
    // And only for the environment it was made for.
    let out = offline.run([
        "run",
        "--env",
        "staging",
        "--fallback-file",
        "cache",
        "--",
        "true",
    ]);
    let err = out.fails_with(1);
    assert!(err.contains("another environment"), "{err}");
}
