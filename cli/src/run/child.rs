//! The command `coffer run` starts: its environment, the signals passed on to it, and the exit
//! code it ends with.

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};

use rustix::process::{Pid, Signal};
use tokio::signal::unix::{SignalKind, signal};

use super::Values;

/// A signal `coffer run` receives and passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    Interrupt,
    Terminate,
    Hangup,
}

impl Forwarded {
    fn signal(self) -> Signal {
        match self {
            Self::Interrupt => Signal::INT,
            Self::Terminate => Signal::TERM,
            Self::Hangup => Signal::HUP,
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught from before the command starts (so none is lost, and
/// none kills `coffer` instead of reaching the command).
#[derive(Debug)]
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn catch() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal received.
    pub async fn recv(&mut self) -> Forwarded {
        tokio::select! {
            _ = self.interrupt.recv() => Forwarded::Interrupt,
            _ = self.terminate.recv() => Forwarded::Terminate,
            _ = self.hangup.recv() => Forwarded::Hangup,
        }
    }
}

/// Whether a SIGINT that `coffer` receives must be passed on. The command runs in `coffer`'s
/// process group, so that it can use the terminal; when that group is the terminal's
/// foreground one, Ctrl-C already sent SIGINT to the command itself, and passing it on would
/// deliver it twice (many programs take a second Ctrl-C as "quit now").
pub fn interrupts_need_forwarding() -> bool {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return true;
    }
    rustix::termios::tcgetpgrp(&stdin)
        .map_or(true, |foreground| foreground != rustix::process::getpgrp())
}

/// The running command.
#[derive(Debug)]
pub struct Child {
    child: tokio::process::Child,
    forward_interrupts: bool,
}

/// Why the command could not be started, and the exit code shells use for that.
#[derive(Debug)]
pub struct SpawnError {
    pub message: String,
    /// 127: not found; 126: found but not executable.
    pub code: u8,
}

impl Child {
    /// Starts `command` (program and arguments) with `values` added to the environment `coffer`
    /// has (a secret replaces a variable of the same name).
    pub fn spawn(
        command: &[OsString],
        values: &Values,
        forward_interrupts: bool,
    ) -> Result<Self, SpawnError> {
        let Some((program, args)) = command.split_first() else {
            return Err(SpawnError {
                message: "no command to run: give it after `--`".into(),
                code: 2,
            });
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        for (key, value) in values.exposed() {
            cmd.env(key, value);
        }
        let child = cmd.spawn().map_err(|e| {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            SpawnError {
                message: format!("cannot start {}: {e}", program.to_string_lossy()),
                code,
            }
        })?;
        Ok(Self {
            child,
            forward_interrupts,
        })
    }

    /// Waits for the command to end (cancel-safe).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Passes a signal `coffer` received on to the command.
    pub fn forward(&self, signal: Forwarded) {
        if signal == Forwarded::Interrupt && !self.forward_interrupts {
            return;
        }
        self.send(signal.signal());
    }

    /// Asks the command to stop (SIGTERM).
    pub fn terminate(&self) {
        self.send(Signal::TERM);
    }

    /// Stops the command at once (SIGKILL).
    pub fn kill(&self) {
        self.send(Signal::KILL);
    }

    fn send(&self, signal: Signal) {
        // Without an id the command has been reaped already: nothing to signal.
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
        {
            // It may end between the check and the signal (ESRCH): nothing to do then.
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

/// The exit code that reports `status` the way shells do: the command's own code, or 128+N
/// when signal N killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    status
        .signal()
        .and_then(|signal| u8::try_from(128 + signal).ok())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exit_codes_are_the_commands_own_or_128_plus_the_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(42 << 8)), 42);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[tokio::test]
    async fn a_missing_program_is_127_as_in_a_shell() {
        let err = Child::spawn(
            &[OsString::from("/nonexistent/coffer-test-program")],
            &Values::default(),
            true,
        )
        .unwrap_err();
        assert_eq!(err.code, 127);
        assert!(err.message.contains("cannot start"), "{}", err.message);
    }
}
