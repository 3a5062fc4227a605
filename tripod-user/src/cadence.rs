//! When a recording wakes up, and what it does then. Nothing runs at a
//! fixed rate unless the user can see it: the rings are read when the
//! kernel says they hold something, the kernel's counts when a report or
//! the status line needs them or before its maps could fill. An idle
//! machine leaves tripod-bpf asleep.
//!
//! Pure bookkeeping over instants, so it is tested without a clock; `app`
//! does the waiting.
use std::time::{Duration, Instant};

/// How long records wait in the ring buffer after the first of a batch woke
/// us. The kernel wakes the reader only for a record that finds the ring
/// empty (or one that makes it a quarter full), so the records of these
/// 250 ms cost no wake-up: at most four batches a second, whatever the
/// sampling rate, and a lone sample is read within 250 ms.
pub const BATCH_DELAY: Duration = Duration::from_millis(250);

/// With [`Pacing::prompt`], how soon after a batch read at once the next
/// may be: short, so that a new process found just after another (its
/// shell's copy before the exec, say) still gets its rows within
/// milliseconds; long enough that lone records wake us at most 20 times
/// a second (records closer together make a batch that waits).
pub const PROMPT_INTERVAL: Duration = Duration::from_millis(50);

/// How often the pipeline's housekeeping runs while records arrive (it
/// rides on the drain of the counts): new stacks located while their
/// processes live, the sideband history trimmed, exited processes retired
/// (which takes two rounds after a process's last sample). The rings are
/// read then too: while it ticks, the kernel wakes us only for a ring
/// filling up (`tripod_common::CONTROL_READER_TICKING`).
pub const HOUSEKEEPING: Duration = Duration::from_millis(500);

/// Housekeeping's period after a round that found only a few records: the
/// odd sample of an idle machine (a kernel worker, a shell) costs one
/// wake-up a second rather than two.
pub const QUIET_HOUSEKEEPING: Duration = Duration::from_secs(1);

/// A round that found fewer records than this is quiet.
const BUSY_RECORDS: usize = 32;

/// Rounds of housekeeping after the last records arrived, so that the
/// processes they came from are retired before the recording falls asleep.
const SETTLE_ROUNDS: u32 = 3;

/// How often the status line is redrawn (only on a terminal).
pub const STATUS_PERIOD: Duration = Duration::from_secs(1);

/// How a recording is paced.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pacing {
    /// Drain the kernel's counts at least this often (they would fill).
    pub counts: Option<Duration>,
    /// Redraw the status line every [`STATUS_PERIOD`].
    pub status: bool,
    /// Write a report this often (`--interval`).
    pub report: Option<Duration>,
    /// The source cannot wake us: read it every [`BATCH_DELAY`].
    pub polled: bool,
    /// Read the record that opens a batch at once, at most once per
    /// [`PROMPT_INTERVAL`] (`--unwind tables`: records are rare, and a copied
    /// stack there most likely means a new process whose rows the kernel
    /// lacks; each of its samples is copied until they are sent).
    pub prompt: bool,
}

/// What is due now (see [`Cadence::due`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Read the ring buffer and the sideband.
    pub pull: bool,
    /// Drain the counts kept in the kernel.
    pub counts: bool,
    /// Write a report.
    pub report: bool,
    /// Redraw the status line.
    pub status: bool,
}

/// The next time each kind of work is due.
#[derive(Debug)]
pub struct Cadence {
    pacing: Pacing,
    pull_at: Option<Instant>,
    /// A ring has woken us since the last read: the batch is open, and
    /// another wake-up means a ring is filling up.
    batch_open: bool,
    /// Rounds of housekeeping still due since records last arrived.
    settle: u32,
    /// Housekeeping's period now: [`HOUSEKEEPING`] or [`QUIET_HOUSEKEEPING`].
    tick: Duration,
    /// Whether housekeeping ticks (records arrived lately): the rings are
    /// read on its timer, and the kernel wakes us only for a filling ring
    /// (see [`Cadence::quiet_ring`]).
    ticking: bool,
    /// What [`Cadence::ticking_change`] last said.
    ticking_told: bool,
    /// With [`Pacing::prompt`]: until when batches wait as usual, after one
    /// was read at once.
    prompt_again_at: Option<Instant>,
    counts_at: Option<Instant>,
    status_at: Option<Instant>,
    report_at: Option<Instant>,
}

impl Cadence {
    pub fn new(now: Instant, pacing: Pacing) -> Cadence {
        Cadence {
            pacing,
            pull_at: pacing.polled.then_some(now + BATCH_DELAY),
            batch_open: false,
            settle: 0,
            tick: HOUSEKEEPING,
            ticking: false,
            ticking_told: false,
            prompt_again_at: None,
            counts_at: pacing.counts.map(|every| now + every),
            status_at: pacing.status.then_some(now + STATUS_PERIOD),
            report_at: pacing.report.map(|every| now + every),
        }
    }

    /// A ring woke us. The first wake-up of a batch waits [`BATCH_DELAY`]
    /// for the records that follow; another one before that means a ring
    /// is filling up, and it is read now. With [`Pacing::prompt`], a batch
    /// is read at once unless one was within [`PROMPT_INTERVAL`]: the ring is
    /// then empty, so the next record wakes us again and opens a batch that
    /// waits (at most twice the wake-ups, never one per record).
    pub fn woken(&mut self, now: Instant) {
        if self.batch_open || self.quiet_ring() {
            // The kernel wakes us only for a ring filling up.
            self.pull_at = Some(now);
        } else if self.pacing.prompt && self.prompt_again_at.is_none_or(|at| at <= now) {
            self.prompt_again_at = Some(now + PROMPT_INTERVAL);
            self.pull_at = Some(now);
        } else {
            self.batch_open = true;
            self.pull_within(now + BATCH_DELAY);
        }
    }

    /// Records were held back (their processes' mappings not seen yet):
    /// read again after [`BATCH_DELAY`], even if no ring wakes us. This
    /// opens no batch: the next wake-up is still the first of one.
    pub fn pull_again(&mut self, now: Instant) {
        self.pull_within(now + BATCH_DELAY);
    }

    /// A process got its first rows (`--unwind tables`): read again within
    /// [`PROMPT_INTERVAL`], not a [`BATCH_DELAY`] later, so that copies
    /// showing them incomplete (a library mapped since) are read, and the
    /// rows rebuilt, before a quarter of a second of its stacks is copied.
    pub fn pull_soon(&mut self, now: Instant) {
        self.pull_within(now + PROMPT_INTERVAL);
    }

    /// Reads the rings at `at` at the latest.
    fn pull_within(&mut self, at: Instant) {
        self.pull_at = Some(self.pull_at.map_or(at, |sooner| sooner.min(at)));
    }

    /// `records` arrived (in the rings, or counted in the kernel for a
    /// process new to the run):
    /// housekeeping follows them every [`HOUSEKEEPING`] (or
    /// [`QUIET_HOUSEKEEPING`] when they were few), the counts are drained
    /// and the rings read with it, as long as records keep coming and
    /// [`SETTLE_ROUNDS`] rounds after.
    pub fn active(&mut self, now: Instant, records: usize) {
        if records == 0 {
            return;
        }
        self.settle = SETTLE_ROUNDS;
        self.ticking = true;
        self.tick = match records >= BUSY_RECORDS {
            true => HOUSEKEEPING,
            false => QUIET_HOUSEKEEPING,
        };
        let soon = now + self.tick;
        self.counts_at = Some(self.counts_at.map_or(soon, |at| at.min(soon)));
    }

    /// Whether housekeeping ticks (the rings are read on its timer, see
    /// [`tripod_common::CONTROL_READER_TICKING`]), when that changed since
    /// the last call.
    pub fn ticking_change(&mut self) -> Option<bool> {
        let ticking = self.quiet_ring();
        (ticking != self.ticking_told).then(|| {
            self.ticking_told = ticking;
            ticking
        })
    }

    /// Whether the kernel is asked to send records without waking us: while
    /// housekeeping ticks, but never with [`Pacing::prompt`], whose rare
    /// records (a new process's first stacks) are wanted at once.
    fn quiet_ring(&self) -> bool {
        self.ticking && !self.pacing.prompt
    }

    /// When the next work is due; `None`: only a ring or the end wakes us.
    pub fn next(&self) -> Option<Instant> {
        [self.pull_at, self.counts_at, self.status_at, self.report_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// What is due at `now`, with each of it scheduled again. A report and
    /// the status line drain the counts and read the rings first, so they
    /// show everything sampled until now.
    pub fn due(&mut self, now: Instant) -> Due {
        let report = take_due(&mut self.report_at, now, self.pacing.report, true);
        let status = take_due(&mut self.status_at, now, Some(STATUS_PERIOD), false);
        let counts = take_due(&mut self.counts_at, now, self.pacing.counts, false);
        let pull = take_due(&mut self.pull_at, now, None, false);
        let counts = counts || report || status;
        if counts {
            self.counts_at = self.next_counts(now);
        }
        if pull || counts {
            // Read now, whatever asked: the batch is closed.
            (self.pull_at, self.batch_open) = (None, false);
        }
        if self.pacing.polled && self.pull_at.is_none() {
            self.pull_at = Some(now + BATCH_DELAY);
        }
        Due {
            pull: pull || counts,
            counts,
            report,
            status,
        }
    }
}

impl Cadence {
    /// When the counts are drained next, after a drain at `now`: soon while
    /// housekeeping settles, else at their own period (or never).
    fn next_counts(&mut self, now: Instant) -> Option<Instant> {
        if self.settle > 0 {
            self.settle -= 1;
            let every = self.pacing.counts.map_or(self.tick, |e| e.min(self.tick));
            return Some(now + every);
        }
        self.ticking = false;
        self.pacing.counts.map(|every| now + every)
    }
}

/// Whether `at` has come by `now`; if so it moves on by `every` (from `at`
/// when `steady`, keeping a report's rhythm; else from `now`), or is
/// cleared without `every`.
fn take_due(at: &mut Option<Instant>, now: Instant, every: Option<Duration>, steady: bool) -> bool {
    let Some(when) = *at else { return false };
    if when > now {
        return false;
    }
    *at = every.map(|every| if steady { when + every } else { now + every });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_idle_recording_without_a_terminal_never_wakes_on_its_own() {
        let cadence = Cadence::new(Instant::now(), Pacing::default());
        assert_eq!(cadence.next(), None);
    }

    #[test]
    fn the_first_wake_up_of_a_batch_waits_and_the_next_reads_at_once() {
        let start = Instant::now();
        let mut cadence = Cadence::new(start, Pacing::default());
        cadence.woken(start);
        assert_eq!(cadence.next(), Some(start + BATCH_DELAY));
        assert_eq!(cadence.due(start + ms(10)), Due::default());
        // A ring filling up wakes us again within the batch: read now.
        cadence.woken(start + ms(20));
        assert_eq!(cadence.next(), Some(start + ms(20)));
        let due = cadence.due(start + ms(20));
        assert!(due.pull && !due.counts && !due.report && !due.status);
        // The read found many records: only housekeeping is scheduled, and
        // the kernel is told that we tick.
        cadence.active(start + ms(20), BUSY_RECORDS);
        assert_eq!(cadence.ticking_change(), Some(true));
        assert_eq!(cadence.ticking_change(), None);
        // A few rounds of it, then nothing until the next wake-up.
        let mut at = start + ms(20);
        for _ in 0..=SETTLE_ROUNDS {
            at += HOUSEKEEPING;
            assert_eq!(cadence.next(), Some(at));
            assert_eq!(
                cadence.due(at),
                Due {
                    pull: true,
                    counts: true,
                    ..Due::default()
                }
            );
        }
        assert_eq!(cadence.next(), None);
        assert_eq!(cadence.ticking_change(), Some(false));
    }

    #[test]
    fn a_ticking_reader_reads_at_once_when_woken_and_slows_when_quiet() {
        let start = Instant::now();
        let mut cadence = Cadence::new(start, Pacing::default());
        cadence.active(start, 3);
        // A few records: the next round is a second away, not half of one.
        assert_eq!(cadence.next(), Some(start + QUIET_HOUSEKEEPING));
        // Ticking, the kernel wakes us only for a ring filling up: read now.
        cadence.woken(start + ms(100));
        assert_eq!(cadence.next(), Some(start + ms(100)));
        assert!(cadence.due(start + ms(100)).pull);
        // Many records: rounds every half second again.
        cadence.active(start + ms(100), BUSY_RECORDS);
        assert_eq!(cadence.next(), Some(start + ms(100) + HOUSEKEEPING));
    }

    #[test]
    fn a_prompt_source_keeps_its_records_waking_us_while_ticking() {
        let start = Instant::now();
        let pacing = Pacing {
            prompt: true,
            ..Pacing::default()
        };
        let mut cadence = Cadence::new(start, pacing);
        cadence.active(start, BUSY_RECORDS);
        assert_eq!(cadence.ticking_change(), None);
        assert_eq!(cadence.next(), Some(start + HOUSEKEEPING));
    }

    #[test]
    fn a_read_that_found_nothing_starts_no_housekeeping() {
        let start = Instant::now();
        let mut cadence = Cadence::new(start, Pacing::default());
        cadence.active(start, 0);
        assert_eq!(cadence.next(), None);
        assert_eq!(cadence.ticking_change(), None);
    }

    #[test]
    fn a_lone_sample_is_read_within_the_batch_delay() {
        let start = Instant::now();
        let mut cadence = Cadence::new(start, Pacing::default());
        cadence.woken(start + ms(3_000));
        let at = cadence.next().unwrap();
        assert_eq!(at, start + ms(3_000) + BATCH_DELAY);
        assert!(cadence.due(at).pull);
    }

    #[test]
    fn held_records_are_read_again_without_a_wake_up() {
        let start = Instant::now();
        let mut cadence = Cadence::new(start, Pacing::default());
        cadence.pull_again(start);
        assert_eq!(cadence.next(), Some(start + BATCH_DELAY));
        // A pull already sooner stays sooner.
        cadence.woken(start);
        cadence.woken(start + ms(5));
        cadence.pull_again(start + ms(5));
        assert_eq!(cadence.next(), Some(start + ms(5)));
    }

    #[test]
    fn held_records_do_not_turn_each_wake_up_into_a_read() {
        // Busy: every read leaves a record or two younger than the
        // sideband's watermark, and the first record after each read wakes
        // us. That wake-up opens a batch; it must not read at once.
        let start = Instant::now();
        let mut cadence = Cadence::new(start, Pacing::default());
        cadence.woken(start);
        assert!(cadence.due(start + BATCH_DELAY).pull);
        let read = start + BATCH_DELAY;
        cadence.pull_again(read);
        cadence.woken(read + ms(1));
        assert_eq!(cadence.next(), Some(read + BATCH_DELAY));
        assert_eq!(cadence.due(read + ms(2)), Due::default());
    }

    /// A prompt source's cadence (`--unwind tables`) whose first record,
    /// at `start`, was read at once.
    fn prompt_cadence_after_first_read(start: Instant) -> Cadence {
        let pacing = Pacing {
            prompt: true,
            ..Pacing::default()
        };
        let mut cadence = Cadence::new(start, pacing);
        cadence.woken(start);
        assert_eq!(cadence.next(), Some(start));
        assert!(cadence.due(start).pull);
        cadence
    }

    #[test]
    fn a_prompt_source_reads_a_batch_at_once_at_most_once_per_prompt_interval() {
        let start = Instant::now();
        // The first record is read at once...
        let mut cadence = prompt_cadence_after_first_read(start);
        // ...the next one, finding the ring empty, opens a batch that waits...
        cadence.woken(start + ms(5));
        assert_eq!(cadence.next(), Some(start + ms(5) + BATCH_DELAY));
        assert!(!cadence.due(start + ms(6)).pull);
        // ...which a ring filling up still cuts short.
        cadence.woken(start + ms(7));
        assert!(cadence.due(start + ms(7)).pull);
        // Once PROMPT_INTERVAL has passed, a record is read at once again.
        cadence.woken(start + ms(7) + PROMPT_INTERVAL);
        assert!(cadence.due(start + ms(7) + PROMPT_INTERVAL).pull);
    }

    #[test]
    fn a_batch_after_first_rows_waits_only_the_prompt_interval() {
        let start = Instant::now();
        let mut cadence = prompt_cadence_after_first_read(start);
        // That read sent a new process its first rows.
        cadence.pull_soon(start);
        // Its next copy opens a batch, read when the prompt interval ends.
        cadence.woken(start + ms(5));
        assert_eq!(cadence.next(), Some(start + PROMPT_INTERVAL));
        assert!(!cadence.due(start + ms(6)).pull);
        assert!(cadence.due(start + PROMPT_INTERVAL).pull);
    }

    #[test]
    fn a_read_for_the_status_line_closes_the_batch() {
        let start = Instant::now();
        let pacing = Pacing {
            status: true,
            ..Pacing::default()
        };
        let mut cadence = Cadence::new(start, pacing);
        cadence.woken(start + STATUS_PERIOD - ms(10));
        assert!(cadence.due(start + STATUS_PERIOD).pull);
        // Read: the next wake-up is the first of a new batch.
        cadence.woken(start + STATUS_PERIOD + ms(1));
        assert_eq!(
            cadence.next(),
            Some(start + STATUS_PERIOD + ms(1) + BATCH_DELAY)
        );
    }

    #[test]
    fn counts_are_drained_at_their_period_and_with_each_report_and_status() {
        let start = Instant::now();
        let pacing = Pacing {
            counts: Some(ms(5_000)),
            status: true,
            report: Some(ms(3_000)),
            polled: false,
            prompt: false,
        };
        let mut cadence = Cadence::new(start, pacing);
        assert_eq!(cadence.next(), Some(start + STATUS_PERIOD));
        let due = cadence.due(start + STATUS_PERIOD);
        assert_eq!(
            due,
            Due {
                pull: true,
                counts: true,
                report: false,
                status: true
            }
        );
        // The status line drained them: their own timer starts again.
        assert_eq!(cadence.counts_at, Some(start + STATUS_PERIOD + ms(5_000)));
        let due = cadence.due(start + ms(3_010));
        assert!(due.report && due.counts && due.pull);
        // Reports keep their rhythm even when served late.
        assert_eq!(cadence.report_at, Some(start + ms(6_000)));
    }

    #[test]
    fn without_a_terminal_counts_wake_us_only_at_their_period() {
        let start = Instant::now();
        let pacing = Pacing {
            counts: Some(ms(10_000)),
            ..Pacing::default()
        };
        let mut cadence = Cadence::new(start, pacing);
        assert_eq!(cadence.next(), Some(start + ms(10_000)));
        assert!(cadence.due(start + ms(10_000)).counts);
        assert_eq!(cadence.next(), Some(start + ms(20_000)));
    }

    #[test]
    fn counts_that_keep_coming_are_drained_with_the_housekeeping() {
        // `--unwind fp` at 99 Hz: 10 s apart when nothing was counted, every
        // 500 ms while something is, so short-lived processes are located.
        let start = Instant::now();
        let pacing = Pacing {
            counts: Some(ms(10_000)),
            ..Pacing::default()
        };
        let mut cadence = Cadence::new(start, pacing);
        cadence.active(start, BUSY_RECORDS);
        assert_eq!(cadence.next(), Some(start + HOUSEKEEPING));
        assert!(cadence.due(start + HOUSEKEEPING).counts);
        assert_eq!(cadence.next(), Some(start + HOUSEKEEPING * 2));
    }

    #[test]
    fn a_source_that_cannot_wake_us_is_read_on_a_timer() {
        let start = Instant::now();
        let pacing = Pacing {
            polled: true,
            ..Pacing::default()
        };
        let mut cadence = Cadence::new(start, pacing);
        assert_eq!(cadence.next(), Some(start + BATCH_DELAY));
        assert!(cadence.due(start + BATCH_DELAY).pull);
        assert_eq!(cadence.next(), Some(start + BATCH_DELAY * 2));
    }
}
