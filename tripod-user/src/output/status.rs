//! The live status line on stderr while recording: elapsed time, what was
//! sampled, what was lost, how many processes. Only on a terminal, and not
//! with `-q`; redrawn in place, and erased before the final messages.
use std::{
    io::{self, IsTerminal as _, Write as _},
    time::Instant,
};

/// What the status line shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Samples so far, or microseconds off-CPU, already in words: `1234 samples`.
    pub sampled: String,
    /// Samples dropped in the kernel (full maps or ring buffer).
    pub lost: u64,
    pub processes: usize,
}

pub struct StatusLine {
    enabled: bool,
    drawn: bool,
    start: Instant,
}

impl StatusLine {
    pub fn new(quiet: bool) -> StatusLine {
        StatusLine {
            enabled: !quiet && io::stderr().is_terminal(),
            drawn: false,
            start: Instant::now(),
        }
    }

    /// Whether [`Self::update`] draws anything (callers skip gathering otherwise).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn update(&mut self, progress: &Progress) {
        if !self.enabled {
            return;
        }
        let line = format_line(self.start.elapsed().as_secs_f64(), progress);
        // \r and "erase to end of line": one line, redrawn in place.
        let mut stderr = io::stderr().lock();
        let _ = write!(stderr, "\r{line}\x1b[K");
        let _ = stderr.flush();
        self.drawn = true;
    }

    /// Erases the line, so the next message starts on a clean one.
    pub fn clear(&mut self) {
        if self.drawn {
            let _ = write!(io::stderr().lock(), "\r\x1b[K");
            self.drawn = false;
        }
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        self.clear();
    }
}

fn format_line(seconds: f64, progress: &Progress) -> String {
    format!(
        "[tripod] {seconds:.0} s: {}, {} lost, {} {} (Ctrl-C to stop)",
        progress.sampled,
        progress.lost,
        progress.processes,
        if progress.processes == 1 {
            "process"
        } else {
            "processes"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_time_samples_losses_and_processes() {
        let progress = Progress {
            sampled: "1234 samples".into(),
            lost: 2,
            processes: 1,
        };
        assert_eq!(
            format_line(12.4, &progress),
            "[tripod] 12 s: 1234 samples, 2 lost, 1 process (Ctrl-C to stop)"
        );
    }

    #[test]
    fn quiet_or_not_a_terminal_draws_nothing() {
        // Test runners capture stderr: never a terminal here.
        assert!(!StatusLine::new(false).enabled());
        assert!(!StatusLine::new(true).enabled());
    }
}
