//! Sleeping until the kernel has something for us: one epoll descriptor
//! watches the ring buffer of samples and every sideband ring, and the
//! async runtime watches that one descriptor. Nothing polls on a timer.
//!
//! Who wakes it, and how often:
//! - the ring buffer, for the first record of a batch and when it is a
//!   quarter full (the eBPF program's [`tripod_common::ring_wakeup_flags`]);
//! - each sideband ring, when it is half full (its `wakeup_watermark`).
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};

use anyhow::{Context as _, Result};
use tokio::io::{unix::AsyncFd, Interest};

/// An epoll descriptor over the sampler's rings, registered with the
/// runtime: [`Wakeup::ready`] returns when one of them has news.
pub struct Wakeup {
    epoll: AsyncFd<OwnedFd>,
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
        // SAFETY: an OwnedFd stays open, and the same descriptor, for as
        // long as the AsyncFd that owns it.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the rings with the async runtime")?;
        Ok(Wakeup { epoll })
    }

    /// Returns once a ring has been written since the last call returned
    /// (or since [`Wakeup::watch`]). The runtime learns of it by an edge:
    /// the readiness is cleared here, before the caller reads the rings, so
    /// a record written while they are read wakes the next call.
    pub async fn ready(&mut self) -> Result<()> {
        let mut guard = self
            .epoll
            .readable()
            .await
            .context("waiting for the rings")?;
        guard.clear_ready();
        Ok(())
    }
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
    use tripod_common::{ring_wakeup_flags, BPF_RB_FORCE_WAKEUP};

    const RING: u64 = 8 << 20;

    #[test]
    fn records_of_a_batch_leave_the_kernel_its_default() {
        // The default (0) wakes the reader only for a record that finds the
        // ring empty: the first of a batch.
        assert_eq!(ring_wakeup_flags(0, 16_640, RING), 0);
        assert_eq!(ring_wakeup_flags(RING / 8, 16_640, RING), 0);
    }

    #[test]
    fn a_record_that_fills_a_quarter_of_the_ring_wakes_the_reader_now() {
        let quarter = RING / 4;
        assert_eq!(ring_wakeup_flags(quarter - 100, 99, RING), 0);
        assert_eq!(
            ring_wakeup_flags(quarter - 100, 100, RING),
            BPF_RB_FORCE_WAKEUP
        );
        assert_eq!(ring_wakeup_flags(RING, 40, RING), BPF_RB_FORCE_WAKEUP);
        // Nonsense from the kernel cannot overflow.
        assert_eq!(
            ring_wakeup_flags(u64::MAX, u64::MAX, RING),
            BPF_RB_FORCE_WAKEUP
        );
    }
}
