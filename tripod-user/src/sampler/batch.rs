//! Reading and clearing a whole hash map in a few system calls:
//! `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (Linux 5.6+); and writing many entries
//! of an array in a few: `BPF_MAP_UPDATE_BATCH` (arrays: Linux 5.7+), for
//! the rows of `--unwind tables`.
//!
//! aya 0.14 has no batch operations, so the `bpf(2)` call is made here, the
//! only place outside aya that talks to the kernel's map interface (and
//! inside `sampler`, the only module that touches BPF). Walking the map key
//! by key costs two or three system calls a key, and the kernel's
//! `htab_map_get_next_key` was the top of tripod-bpf's own profile; a batch
//! moves [`BATCH_ENTRIES`] entries a call.
use std::os::fd::RawFd;

use aya::Pod;

/// Most entries asked for per call. A hash bucket holding more than this
/// makes the kernel answer `ENOSPC`; the buffer is then doubled.
pub const BATCH_ENTRIES: usize = 1024;

/// Fewest entries asked for per call, however few are expected.
const MIN_BATCH_ENTRIES: usize = 16;

/// `BPF_MAP_LOOKUP_AND_DELETE_BATCH` from the kernel's uapi.
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
/// `BPF_MAP_UPDATE_BATCH` from the kernel's uapi.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Entries written per `BPF_MAP_UPDATE_BATCH` call: large enough that a
/// big file's rows (libpython, 100,000 and more) take a handful of calls,
/// small enough that one call holds the map's lock for a bounded time.
pub const UPDATE_ENTRIES: usize = 65_536;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// What one call answered: how many entries it filled, and whether the map
/// has more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `n` entries filled; call again from the returned position.
    More(usize),
    /// `n` entries filled and the map is now walked (`ENOENT`).
    Done(usize),
    /// A bucket holds more entries than the buffer (`ENOSPC`): nothing filled.
    TooSmall,
}

/// Every entry of the hash map `fd`, each removed as it is read; about
/// `expected` of them (a hint: more are read in further calls). `Err` with
/// the kernel's error: `EINVAL` from kernels without batch operations, so
/// the caller walks the map key by key instead.
pub fn lookup_and_delete_all<K: Pod, V: Pod>(
    fd: RawFd,
    expected: usize,
) -> std::io::Result<Vec<(K, V)>> {
    let mut position = [0u64; 2];
    let mut first = true;
    let entries = expected.clamp(MIN_BATCH_ENTRIES, BATCH_ENTRIES);
    drive(entries, |keys: &mut Vec<K>, values: &mut Vec<V>| {
        let step = call(fd, keys, values, &mut position, first);
        first = false;
        step
    })
}

/// The loop around the calls, apart from the system call (`step`), so it is
/// tested without a kernel: asks `step` to fill buffers of `entries` until
/// it reports the end, doubling them when a bucket does not fit. The
/// buffers are made once (a drain of an idle machine's few entries used to
/// zero a megabyte of walked stacks a call) and refilled by each call.
pub fn drive<K: Pod, V: Pod>(
    entries: usize,
    mut step: impl FnMut(&mut Vec<K>, &mut Vec<V>) -> std::io::Result<Step>,
) -> std::io::Result<Vec<(K, V)>> {
    let mut all = Vec::new();
    let (mut keys, mut values) = (zeroed_buffer::<K>(entries), zeroed_buffer::<V>(entries));
    loop {
        let (filled, done) = match step(&mut keys, &mut values)? {
            Step::More(n) => (n, false),
            Step::Done(n) => (n, true),
            Step::TooSmall => {
                let doubled = keys.len().saturating_mul(2);
                (keys, values) = (zeroed_buffer(doubled), zeroed_buffer(doubled));
                (0, false)
            }
        };
        let filled = filled.min(keys.len());
        all.extend(
            keys[..filled]
                .iter()
                .copied()
                .zip(values[..filled].iter().copied()),
        );
        if done {
            return Ok(all);
        }
    }
}

/// `entries` zeroed values, for the kernel to fill.
fn zeroed_buffer<T: Pod>(entries: usize) -> Vec<T> {
    // SAFETY: Pod types are plain data, valid for any bytes, zeroes included.
    vec![unsafe { std::mem::zeroed() }; entries]
}

/// One `BPF_MAP_LOOKUP_AND_DELETE_BATCH` into `keys` and `values`, from
/// `position` (the start when `first`), which it advances.
fn call<K: Pod, V: Pod>(
    fd: RawFd,
    keys: &mut [K],
    values: &mut [V],
    position: &mut [u64; 2],
    first: bool,
) -> std::io::Result<Step> {
    let mut attr = BatchAttr {
        in_batch: if first { 0 } else { position.as_ptr() as u64 },
        out_batch: position[1..].as_mut_ptr() as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` points at buffers of `count` keys and values and at a
    // position of 8 bytes (the hash map's is a u32 bucket index), all alive
    // for the call; the kernel writes only inside them.
    let result = unsafe { bpf_batch(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr) };
    let filled = attr.count as usize;
    position[0] = position[1];
    if result == 0 {
        return Ok(Step::More(filled));
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENOENT) => Ok(Step::Done(filled)),
        Some(libc::ENOSPC) if filled == 0 => Ok(Step::TooSmall),
        _ => Err(error),
    }
}

/// Writes `values` into the array map `fd` at indexes `first`, `first + 1`,
/// ...: a few `BPF_MAP_UPDATE_BATCH` calls instead of one update each.
/// `Err` with the kernel's error, after some entries may have been written:
/// `EINVAL` or `ENOTSUPP` from kernels without batch updates of arrays, so
/// the caller writes them one by one instead (which rewrites the same rows).
pub fn update_array<V: Pod>(fd: RawFd, first: u32, values: &[V]) -> std::io::Result<()> {
    drive_updates(values.len(), UPDATE_ENTRIES, |start, len| {
        let keys: Vec<u32> = (0..len as u32).map(|i| first + start as u32 + i).collect();
        update_call(fd, &keys, &values[start..start + len])
    })
}

/// The loop around the update calls, apart from the system call (`step`,
/// given a range of entries: its start and length, and answering how many
/// it wrote), so it is tested without a kernel. A call that writes part of
/// its range is followed by one for the rest.
pub fn drive_updates(
    total: usize,
    per_call: usize,
    mut step: impl FnMut(usize, usize) -> std::io::Result<usize>,
) -> std::io::Result<()> {
    let mut done = 0;
    while done < total {
        let len = (total - done).min(per_call.max(1));
        let written = step(done, len)?;
        if written == 0 {
            // The kernel took nothing without saying why: do not spin.
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        done += written.min(len);
    }
    Ok(())
}

/// One `BPF_MAP_UPDATE_BATCH` of `keys` to `values`; how many entries the
/// kernel wrote (all, unless it failed partway: then its error).
fn update_call<K: Pod, V: Pod>(fd: RawFd, keys: &[K], values: &[V]) -> std::io::Result<usize> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` points at `count` keys and values that stay alive for
    // the call; the kernel only reads them, and writes `attr.count`.
    let result = unsafe { bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr) };
    match result {
        0 => Ok(attr.count as usize),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The bpf(2) system call with `command`, one of the batch commands.
///
/// # Safety
///
/// The buffers `attr` points at must be valid for what `command` reads
/// and writes (`count` keys and values, and the batch position).
unsafe fn bpf_batch(command: libc::c_long, attr: &mut BatchAttr) -> libc::c_long {
    // SAFETY: `attr` is a whole `BatchAttr`; the buffers it names are the
    // caller's to vouch for.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map of `n` entries (key i, value 10 i) handed out `per_call` at a
    /// time, with one bucket too big for the first buffer.
    fn fake(
        n: u32,
        per_call: usize,
    ) -> impl FnMut(&mut Vec<u32>, &mut Vec<u64>) -> std::io::Result<Step> {
        let mut next = 0u32;
        let mut refused = false;
        move |keys, values| {
            if !refused && keys.len() < 4 {
                refused = true;
                return Ok(Step::TooSmall);
            }
            let take = per_call.min(keys.len()).min((n - next) as usize);
            for i in 0..take {
                keys[i] = next + i as u32;
                values[i] = u64::from(next + i as u32) * 10;
            }
            next += take as u32;
            Ok(if next == n {
                Step::Done(take)
            } else {
                Step::More(take)
            })
        }
    }

    #[test]
    fn every_entry_is_read_once_in_order_across_calls() {
        let all = drive(8, fake(20, 3)).unwrap();
        assert_eq!(all.len(), 20);
        for (i, (k, v)) in all.iter().enumerate() {
            assert_eq!((*k, *v), (i as u32, i as u64 * 10));
        }
    }

    #[test]
    fn a_bucket_too_big_doubles_the_buffer() {
        let all = drive(2, fake(5, 5)).unwrap();
        assert_eq!(all.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn the_last_call_may_carry_entries() {
        let mut calls = 0;
        let all = drive(4, |k: &mut Vec<u32>, v: &mut Vec<u32>| {
            calls += 1;
            (k[0], v[0]) = (7, 70);
            Ok(Step::Done(1))
        })
        .unwrap();
        assert_eq!((calls, all), (1, vec![(7, 70)]));
    }

    #[test]
    fn updates_cover_every_entry_once_across_calls_and_partial_writes() {
        let mut written = vec![0u32; 10];
        let mut calls = Vec::new();
        drive_updates(10, 4, |start, len| {
            calls.push((start, len));
            // The second call writes only part of its range.
            let take = if calls.len() == 2 { 1 } else { len };
            written[start..start + take]
                .iter_mut()
                .for_each(|w| *w += 1);
            Ok(take)
        })
        .unwrap();
        assert_eq!(written, [1; 10]);
        assert_eq!(calls, [(0, 4), (4, 4), (5, 4), (9, 1)]);
    }

    #[test]
    fn an_update_error_or_no_progress_stops_the_loop() {
        let refused = drive_updates(5, 4, |_, _| {
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        });
        assert_eq!(refused.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        let stuck = drive_updates(5, 4, |_, _| Ok(0));
        assert_eq!(stuck.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(drive_updates(0, 4, |_, _| -> std::io::Result<usize> { unreachable!() }).is_ok());
    }

    #[test]
    fn an_error_is_handed_back() {
        let error = drive(4, |_: &mut Vec<u32>, _: &mut Vec<u32>| {
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        })
        .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EINVAL));
    }
}
