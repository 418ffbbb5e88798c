//! A spinner on stderr while a long request runs (`coffer import` of a large file), shown only
//! on a terminal.

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// Whether a spinner would be seen: stderr is a terminal.
pub fn visible() -> bool {
    std::io::stderr().is_terminal()
}

/// Awaits `work`, showing `label`, a spinner and the time elapsed on stderr meanwhile when
/// `show`; the line is cleared afterwards.
pub async fn spin<F: Future>(label: &str, show: bool, work: F) -> F::Output {
    if !show {
        return work.await;
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut frame = 0;
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K");
                let _ = err.flush();
                return done;
            }
            _ = tick.tick() => {
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[2K{} {label} {:.1} s",
                    FRAMES[frame % FRAMES.len()],
                    started.elapsed().as_secs_f32()
                );
                let _ = err.flush();
                frame += 1;
            }
        }
    }
}
