//! jitdump files (`jit-PID.dump`, the kernel's
//! `tools/perf/Documentation/jitdump-specification.txt`): a 40-byte header,
//! then records of a 16-byte header (id, total size, time) and a body. The
//! runtime maps the file executable so that profilers find it among its
//! mappings (Node's `--perf-prof`, a JVM agent); only `JIT_CODE_LOAD` (a
//! function's address, size and name, then its code) and `JIT_CODE_MOVE`
//! are read, the rest skipped by their size.
//!
//! Hostile input like the perf map: a record is handled once its header,
//! fixed fields and at most [`super::MAX_LINE`] bytes of name are there, its
//! code is skipped without being buffered, and a header that lies (a wrong
//! magic or version, a record shorter than its own header) ends the reading
//! of that file; what was read stays.
use super::{PerfMap, MAX_LINE};

/// `JiTD`, as the runtime's (little-endian) integers write it.
pub const MAGIC: u32 = 0x4A69_5444;
const FILE_HEADER: u64 = 40;
const RECORD_HEADER: usize = 16;
const CODE_LOAD: u32 = 0;
const CODE_MOVE: u32 = 1;
/// A load's fields after the record header: pid, tid, vma, code address,
/// code size, code index; then the name.
const LOAD_FIELDS: usize = 40;
/// The most of a record needed to handle it: headers, fields and a name.
const RECORD_HEAD: usize = RECORD_HEADER + LOAD_FIELDS + MAX_LINE + 1;

/// Where the reading of one jitdump stands.
#[derive(Debug, Default)]
pub struct DumpReader {
    /// Bytes of the file consumed.
    pub consumed: u64,
    /// Bytes still to pass over (the rest of a record handled, or of the header).
    skip: u64,
    header_read: bool,
    /// Not a dump this reads, or one whose records stopped making sense.
    pub broken: bool,
}

impl DumpReader {
    /// Feeds `bytes`, the file from `self.consumed` on, into `map`.
    pub fn feed(&mut self, mut bytes: &[u8], map: &mut PerfMap) {
        if !self.header_read {
            let Some(header_size) = header(bytes) else {
                self.broken |= bytes.len() as u64 >= FILE_HEADER;
                return;
            };
            self.header_read = true;
            self.skip = header_size;
        }
        while !self.broken && !map.capped {
            bytes = self.pass(bytes);
            if self.skip > 0 || bytes.len() < RECORD_HEADER {
                return;
            }
            let (id, size) = (u32_at(bytes, 0), u32_at(bytes, 4) as usize);
            if size < RECORD_HEADER {
                self.broken = true;
                return;
            }
            let head = size.min(RECORD_HEAD);
            if bytes.len() < head {
                // The rest of the record is still being written.
                return;
            }
            record(id, &bytes[..head], map);
            self.skip = size as u64;
        }
    }

    /// Passes over what is to be skipped of `bytes`.
    fn pass<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let n = self.skip.min(bytes.len() as u64);
        self.skip -= n;
        self.consumed += n;
        &bytes[n as usize..]
    }
}

/// The size of the file header, if `bytes` start with one this reads.
fn header(bytes: &[u8]) -> Option<u64> {
    if (bytes.len() as u64) < FILE_HEADER || u32_at(bytes, 0) != MAGIC || u32_at(bytes, 4) != 1 {
        return None;
    }
    Some(u64::from(u32_at(bytes, 8))).filter(|&size| size >= FILE_HEADER)
}

/// Handles one record, `bytes` its first bytes (all of it, or enough).
fn record(id: u32, bytes: &[u8], map: &mut PerfMap) {
    let fields = &bytes[RECORD_HEADER..];
    match id {
        CODE_LOAD if fields.len() > LOAD_FIELDS => {
            let (address, size) = (u64_at(fields, 16), u64_at(fields, 24));
            let name = &fields[LOAD_FIELDS..];
            match name.iter().position(|&b| b == 0) {
                Some(end) => map.add(address, size, &String::from_utf8_lossy(&name[..end])),
                None => map.skipped += 1,
            }
        }
        CODE_MOVE if fields.len() >= LOAD_FIELDS + 8 => {
            let (old, new, size) = (u64_at(fields, 16), u64_at(fields, 24), u64_at(fields, 32));
            match map.lookup(old).cloned() {
                Some(name) => map.add(new, size, &name),
                None => map.skipped += 1,
            }
        }
        CODE_LOAD | CODE_MOVE => map.skipped += 1,
        // Debug info, unwinding info, close: not needed for names.
        _ => {}
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_header() -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [MAGIC, 1, 40, 62, 0, 4242] {
            bytes.extend(word.to_le_bytes());
        }
        bytes.extend([0u8; 16]);
        bytes
    }

    fn load(address: u64, size: u64, name: &str, code: usize) -> Vec<u8> {
        let total = RECORD_HEADER + LOAD_FIELDS + name.len() + 1 + code;
        let mut bytes = Vec::new();
        bytes.extend(CODE_LOAD.to_le_bytes());
        bytes.extend((total as u32).to_le_bytes());
        bytes.extend(7u64.to_le_bytes());
        bytes.extend(4242u32.to_le_bytes());
        bytes.extend(4243u32.to_le_bytes());
        for word in [address, address, size, 1] {
            bytes.extend(word.to_le_bytes());
        }
        bytes.extend(name.as_bytes());
        bytes.push(0);
        bytes.extend(std::iter::repeat_n(0xcc, code));
        bytes
    }

    fn other(id: u32, body: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(id.to_le_bytes());
        bytes.extend(((RECORD_HEADER + body) as u32).to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(std::iter::repeat_n(0, body));
        bytes
    }

    fn name(map: &PerfMap, address: u64) -> Option<&str> {
        map.lookup(address).map(|n| &**n)
    }

    #[test]
    fn loads_are_named_and_other_records_skipped() {
        let mut dump = file_header();
        dump.extend(load(0x1000, 0x100, "JS:*hot /srv/a.js:1:1", 0x100));
        dump.extend(other(4, 64));
        dump.extend(load(0x2000, 0x10, "evil\x1b[2J", 0x10));
        let (mut reader, mut map) = (DumpReader::default(), PerfMap::default());
        reader.feed(&dump, &mut map);
        assert_eq!(name(&map, 0x10ff), Some("JS:*hot /srv/a.js:1:1"));
        assert_eq!(name(&map, 0x2000), Some("evil\\x1b[2J"));
        assert_eq!(reader.consumed, dump.len() as u64);
        assert!(!reader.broken);
    }

    /// Fed a byte at a time, as a file being written is read: the same.
    #[test]
    fn records_arriving_in_pieces_are_read_when_whole() {
        let mut dump = file_header();
        dump.extend(load(0x1000, 0x100, "first", 5000));
        dump.extend(load(0x3000, 0x100, "second", 3));
        let (mut reader, mut map) = (DumpReader::default(), PerfMap::default());
        let mut at = 0;
        while at < dump.len() {
            let end = (at + 7).min(dump.len());
            reader.feed(&dump[reader.consumed as usize..end], &mut map);
            at = end;
        }
        assert_eq!(name(&map, 0x1000), Some("first"));
        assert_eq!(name(&map, 0x3000), Some("second"));
        assert_eq!(reader.consumed, dump.len() as u64);
    }

    #[test]
    fn moves_carry_the_name_to_the_new_address() {
        let mut dump = file_header();
        dump.extend(load(0x1000, 0x100, "moved", 0));
        let mut record = other(CODE_MOVE, LOAD_FIELDS + 8);
        for (i, word) in [0x1000u64, 0x5000, 0x100].iter().enumerate() {
            let at = RECORD_HEADER + 16 + i * 8;
            record[at..at + 8].copy_from_slice(&word.to_le_bytes());
        }
        dump.extend(record);
        let (mut reader, mut map) = (DumpReader::default(), PerfMap::default());
        reader.feed(&dump, &mut map);
        assert_eq!(name(&map, 0x5080), Some("moved"));
    }

    #[test]
    fn a_lying_header_ends_the_reading() {
        let (mut reader, mut map) = (DumpReader::default(), PerfMap::default());
        let mut wrong = file_header();
        wrong[0] ^= 1;
        reader.feed(&wrong, &mut map);
        assert!(reader.broken);
        // A record shorter than its own header.
        let mut dump = file_header();
        dump.extend(load(0x1000, 0x10, "kept", 0));
        dump.extend(2u32.to_le_bytes());
        dump.extend(3u32.to_le_bytes());
        dump.extend([0u8; 8]);
        dump.extend(load(0x2000, 0x10, "not reached", 0));
        let (mut reader, mut map) = (DumpReader::default(), PerfMap::default());
        reader.feed(&dump, &mut map);
        assert!(reader.broken);
        assert_eq!(name(&map, 0x1000), Some("kept"));
        assert_eq!(name(&map, 0x2000), None);
        // A name without its NUL inside the record: skipped, counted.
        let mut dump = file_header();
        let mut unterminated = load(0x1000, 0x10, "x", 0);
        unterminated.pop();
        let size = unterminated.len() as u32;
        unterminated[4..8].copy_from_slice(&size.to_le_bytes());
        dump.extend(unterminated);
        let (mut reader, mut map) = (DumpReader::default(), PerfMap::default());
        reader.feed(&dump, &mut map);
        assert_eq!((map.skipped, map.len()), (1, 0));
        assert!(!reader.broken);
    }
}
