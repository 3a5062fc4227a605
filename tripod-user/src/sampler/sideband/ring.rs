//! Walking the data area of a perf ring buffer between the reader's tail and
//! the kernel's head, records in the order the kernel wrote them.
//!
//! Pure over bytes: the area is read through [`RingData`], which the live
//! ring implements over its mapping and the tests over a byte array, so a
//! record wrapped across the end of the area is tested with bytes built by
//! hand. Nothing here trusts the bytes: a record whose size cannot be right
//! ends the walk and the rest of the batch is skipped, never a panic.

/// The data area of a ring buffer, read by offset.
pub(crate) trait RingData {
    /// The size of the area in bytes.
    fn len(&self) -> usize;
    /// Copies `out.len()` bytes from `offset`; the range lies inside the area
    /// (the walk splits reads that wrap).
    fn read(&self, offset: usize, out: &mut [u8]);
}

impl RingData for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        out.copy_from_slice(&self[offset..offset + out.len()]);
    }
}

/// The size of `struct perf_event_header`: type (u32), misc (u16), size (u16).
pub(crate) const HEADER_LEN: usize = 8;

/// How a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WalkEnd {
    /// The new tail: every byte before it was read (or skipped).
    pub tail: u64,
    /// Records handed out.
    pub records: u64,
    /// Whether something could not be a record (a size below the header, not
    /// a multiple of 8, or beyond the head; a head more than a ring ahead of
    /// the tail) and the bytes from there to the head were skipped.
    pub skipped: bool,
}

/// Hands each record between `tail` and `head` (free-running byte counters,
/// as the kernel keeps them) to `each`, as one contiguous slice with its
/// header: a record that wraps across the end of the area is copied into
/// `scratch` whole. Returns the tail to publish.
///
/// The kernel writes whole records, each a multiple of 8 bytes, into an area
/// whose size is a power of two, and never writes past the tail the reader
/// published. Anything else means the counters or the bytes are not what
/// the kernel promises: the walk stops there and skips to the head, so the
/// next drain starts on a record boundary again.
pub(crate) fn walk(
    data: &(impl RingData + ?Sized),
    tail: u64,
    head: u64,
    scratch: &mut Vec<u8>,
    mut each: impl FnMut(&[u8]),
) -> WalkEnd {
    let size = data.len();
    let mut end = WalkEnd {
        tail,
        records: 0,
        skipped: false,
    };
    let available = head.wrapping_sub(tail);
    if !size.is_power_of_two() || available > size as u64 {
        end.tail = head;
        end.skipped = available != 0;
        return end;
    }
    while end.tail != head {
        let remaining = head.wrapping_sub(end.tail);
        let Some(len) = record_len(data, end.tail, remaining) else {
            end.tail = head;
            end.skipped = true;
            break;
        };
        scratch.clear();
        scratch.resize(len, 0);
        copy_wrapped(data, end.tail, scratch);
        each(scratch);
        end.records += 1;
        end.tail = end.tail.wrapping_add(len as u64);
    }
    end
}

/// The size of the record at `position`, if its header says a size that can
/// be right with `remaining` bytes up to the head.
fn record_len(data: &(impl RingData + ?Sized), position: u64, remaining: u64) -> Option<usize> {
    if remaining < HEADER_LEN as u64 {
        return None;
    }
    let mut header = [0u8; HEADER_LEN];
    copy_wrapped(data, position, &mut header);
    let len = u16::from_ne_bytes([header[6], header[7]]) as usize;
    let fits = len >= HEADER_LEN && len.is_multiple_of(8) && len as u64 <= remaining;
    fits.then_some(len)
}

/// Copies `out.len()` bytes (at most the area's size) from the free-running
/// `position`, continuing from the start of the area past its end.
fn copy_wrapped(data: &(impl RingData + ?Sized), position: u64, out: &mut [u8]) {
    let size = data.len();
    // The size is a power of two, so the mask is the modulo.
    let offset = (position & (size as u64 - 1)) as usize;
    let first = out.len().min(size - offset);
    let (head, rest) = out.split_at_mut(first);
    data.read(offset, head);
    if !rest.is_empty() {
        data.read(0, rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `len` bytes (header included) of type `ty`, its body
    /// filled with `fill`.
    fn record(ty: u32, len: u16, fill: u8) -> Vec<u8> {
        let mut bytes = ty.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&0u16.to_ne_bytes());
        bytes.extend_from_slice(&len.to_ne_bytes());
        bytes.resize(len as usize, fill);
        bytes
    }

    /// Writes `bytes` into `ring` from the free-running `position`, wrapping.
    fn put(ring: &mut [u8], position: u64, bytes: &[u8]) {
        let size = ring.len() as u64;
        for (i, b) in bytes.iter().enumerate() {
            ring[((position + i as u64) % size) as usize] = *b;
        }
    }

    fn collect(ring: &[u8], tail: u64, head: u64) -> (Vec<Vec<u8>>, WalkEnd) {
        let mut seen = Vec::new();
        let end = walk(ring, tail, head, &mut Vec::new(), |r| seen.push(r.to_vec()));
        (seen, end)
    }

    #[test]
    fn reads_records_in_order_and_stops_at_the_head() {
        let mut ring = vec![0u8; 64];
        let (a, b) = (record(1, 16, 0xaa), record(2, 24, 0xbb));
        put(&mut ring, 0, &a);
        put(&mut ring, 16, &b);
        let (seen, end) = collect(&ring, 0, 40);
        assert_eq!(seen, vec![a, b]);
        assert_eq!((end.tail, end.records, end.skipped), (40, 2, false));
        // Nothing new: nothing handed out, the tail stays.
        let (seen, end) = collect(&ring, 40, 40);
        assert!(seen.is_empty());
        assert_eq!(end.tail, 40);
    }

    #[test]
    fn a_record_wrapped_across_the_end_comes_out_whole() {
        let mut ring = vec![0u8; 64];
        // The counters are free-running: this is the third lap.
        let start = 2 * 64 + 40;
        let first = record(7, 16, 0x11);
        let wrapped = record(9, 32, 0x22); // 8 bytes before the end, 24 after
        put(&mut ring, start, &first);
        put(&mut ring, start + 16, &wrapped);
        let (seen, end) = collect(&ring, start, start + 48);
        assert_eq!(seen, vec![first, wrapped]);
        assert_eq!(end.tail, start + 48);
        assert!(!end.skipped);
    }

    #[test]
    fn a_header_split_by_the_end_is_read_across_it() {
        // Not something the kernel does (records are 8-aligned, the area a
        // power of two), but reading the header must not depend on it.
        let mut ring = vec![0u8; 32];
        let wrapped = record(3, 16, 0x33);
        put(&mut ring, 28, &wrapped);
        let (seen, _) = collect(&ring, 28, 44);
        assert_eq!(seen, vec![wrapped]);
    }

    #[test]
    fn counters_that_wrap_around_u64_still_walk() {
        let mut ring = vec![0u8; 64];
        let start = u64::MAX - 7; // the record straddles the u64 wrap
        let r = record(4, 16, 0x44);
        put(&mut ring, start, &r);
        let (seen, end) = collect(&ring, start, start.wrapping_add(16));
        assert_eq!(seen, vec![r]);
        assert_eq!(end.tail, start.wrapping_add(16));
    }

    #[test]
    fn impossible_sizes_skip_to_the_head_without_panicking() {
        let good = record(1, 16, 0x55);
        for bad_len in [0u16, 4, 12, 200] {
            let mut ring = vec![0u8; 64];
            put(&mut ring, 0, &good);
            let mut bad = record(2, 16, 0x66);
            bad[6..8].copy_from_slice(&bad_len.to_ne_bytes());
            put(&mut ring, 16, &bad);
            let (seen, end) = collect(&ring, 0, 48);
            assert_eq!(seen, vec![good.clone()], "size {bad_len}");
            assert_eq!((end.tail, end.skipped), (48, true), "size {bad_len}");
        }
    }

    #[test]
    fn a_head_short_of_a_whole_record_skips_the_fragment() {
        let mut ring = vec![0u8; 64];
        put(&mut ring, 0, &record(1, 32, 0x77));
        // Four bytes: not even a header.
        let (seen, end) = collect(&ring, 0, 4);
        assert!(seen.is_empty());
        assert_eq!((end.tail, end.skipped), (4, true));
        // A header that promises more than the head allows.
        let (seen, end) = collect(&ring, 0, 16);
        assert!(seen.is_empty());
        assert_eq!((end.tail, end.skipped), (16, true));
    }

    #[test]
    fn a_head_more_than_a_ring_ahead_is_not_walked() {
        let ring = vec![0u8; 64];
        let (seen, end) = collect(&ring, 0, 200);
        assert!(seen.is_empty());
        assert_eq!((end.tail, end.skipped), (200, true));
        // A head behind the tail is the same thing, seen modulo 2^64.
        let (seen, end) = collect(&ring, 100, 50);
        assert!(seen.is_empty());
        assert_eq!((end.tail, end.skipped), (50, true));
    }

    #[test]
    fn an_area_that_is_not_a_power_of_two_is_not_walked() {
        let ring = vec![0u8; 48];
        let (seen, end) = collect(&ring, 0, 16);
        assert!(seen.is_empty());
        assert!(end.skipped);
    }
}
