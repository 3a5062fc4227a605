//! Sleeping until the kernel has something for us: one epoll descriptor
//! watches the ring buffer of samples, every sideband ring and a timer, and
//! the async runtime watches that one descriptor.
//!
//! Who wakes it, and how often:
//! - the ring buffer, for the first record of a batch (only while the
//!   reader is not ticking, see `tripod_common::CONTROL_READER_TICKING`)
//!   and when it is a quarter full (the eBPF program's [`tripod_common::ring_wakeup_flags`]);
//! - each sideband ring, when it is half full (its `wakeup_watermark`);
//! - the timer, when the recording's next work is due ([`Wakeup::set_timer`]).
//!   A timer of the runtime's own wheel fires early for a deadline more
//!   than 64 ms away and then again at it: two wake-ups for each round of
//!   housekeeping instead of one.
use std::{
    os::fd::{AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::io::{unix::AsyncFd, Interest};

/// An epoll descriptor over the sampler's rings and a timer, registered
/// with the runtime: [`Wakeup::ready`] returns when one of them has news.
pub struct Wakeup {
    epoll: AsyncFd<OwnedFd>,
    timer: OwnedFd,
}

/// Why [`Wakeup::ready`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum News {
    /// A ring was written (or nothing said otherwise).
    Ring,
    /// The deadline of [`Wakeup::set_timer`] came.
    Timer,
}

impl Wakeup {
    /// Watches `rings` for data. Must be called inside the runtime.
    pub(super) fn watch(rings: &[BorrowedFd<'_>]) -> Result<Wakeup> {
        // SAFETY: epoll_create1 takes a flag; a non-negative result is a new descriptor.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("creating an epoll descriptor");
        }
        // SAFETY: the descriptor was just created and is owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for ring in rings {
            add(&epoll, ring.as_raw_fd()).context("watching a ring buffer with epoll")?;
        }
        let timer = timerfd().context("creating a timer descriptor")?;
        add(&epoll, timer.as_raw_fd()).context("watching a timer with epoll")?;
        // SAFETY: an OwnedFd stays open, and the same descriptor, for as
        // long as the AsyncFd that owns it.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the rings with the async runtime")?;
        Ok(Wakeup { epoll, timer })
    }

    /// Returns once a ring has been written since the last call returned
    /// (or since [`Wakeup::watch`]), or the timer's deadline came. The
    /// runtime learns of it by an edge: the readiness is cleared here,
    /// before the caller reads the rings, so a record written while they
    /// are read wakes the next call.
    pub async fn ready(&mut self) -> Result<News> {
        let mut guard = self
            .epoll
            .readable()
            .await
            .context("waiting for the rings")?;
        guard.clear_ready();
        let mut expirations = [0u8; 8];
        // SAFETY: the buffer is 8 writable bytes, what a timerfd read takes;
        // the descriptor is non-blocking, so an unexpired timer fails at once.
        let read =
            unsafe { libc::read(self.timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
        Ok(if read == 8 { News::Timer } else { News::Ring })
    }

    /// Arms the timer for `deadline` (`None`: disarmed). Arming it again
    /// forgets an expiry not read yet.
    pub fn set_timer(&self, deadline: Option<Instant>) -> Result<()> {
        let value = match deadline {
            // A zero value would disarm it: a deadline already past is 1 ns away.
            Some(at) => at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1)),
            None => Duration::ZERO,
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: value.as_secs() as libc::time_t,
                tv_nsec: value.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid local the call only reads; no old value is asked for.
        let set = unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error()).context("arming the wake-up timer");
        }
        Ok(())
    }
}

/// A non-blocking monotonic timer descriptor, disarmed.
fn timerfd() -> std::io::Result<OwnedFd> {
    let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
    // SAFETY: timerfd_create takes plain integers; a non-negative result is a new descriptor.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds `fd` to `epoll`, level-triggered: the outer (runtime's) epoll is
/// told each time the kernel wakes a ring's readers.
fn add(epoll: &OwnedFd, fd: RawFd) -> std::io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: both descriptors are open; `event` is a valid local the call only reads.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tripod_common::{ring_wakeup_flags, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};

    const RING: u64 = 8 << 20;

    #[test]
    fn records_of_a_batch_leave_the_kernel_its_default() {
        // The default (0) wakes the reader only for a record that finds the
        // ring empty: the first of a batch.
        assert_eq!(ring_wakeup_flags(0, 16_640, RING, false), 0);
        assert_eq!(ring_wakeup_flags(RING / 8, 16_640, RING, false), 0);
    }

    #[test]
    fn a_record_that_fills_a_quarter_of_the_ring_wakes_the_reader_now() {
        let quarter = RING / 4;
        assert_eq!(ring_wakeup_flags(quarter - 100, 99, RING, false), 0);
        assert_eq!(
            ring_wakeup_flags(quarter - 100, 100, RING, false),
            BPF_RB_FORCE_WAKEUP
        );
        assert_eq!(
            ring_wakeup_flags(RING, 40, RING, false),
            BPF_RB_FORCE_WAKEUP
        );
        // Nonsense from the kernel cannot overflow.
        assert_eq!(
            ring_wakeup_flags(u64::MAX, u64::MAX, RING, false),
            BPF_RB_FORCE_WAKEUP
        );
    }

    #[test]
    fn a_ticking_reader_is_woken_only_by_a_filling_ring() {
        // It reads on its own timer: the first record after a read, which
        // would wake it by default, wakes no one.
        assert_eq!(ring_wakeup_flags(0, 16_640, RING, true), BPF_RB_NO_WAKEUP);
        let quarter = RING / 4;
        assert_eq!(
            ring_wakeup_flags(quarter - 100, 100, RING, true),
            BPF_RB_FORCE_WAKEUP
        );
    }
}
