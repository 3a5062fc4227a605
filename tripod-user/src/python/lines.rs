//! Line tables of CPython code objects: which source line an instruction
//! belongs to. Each interpreter generation encodes this differently, so the
//! caller says which encoding a table uses ([`LineTable`]), usually from the
//! target's version. Tables come from another process's memory and may be
//! anything: every decoder here only walks forward through the bytes it was
//! given, never indexes past them, and saturates its arithmetic, so any
//! input ends in an answer (possibly a wrong one), never a panic or a hang.

/// How a code object's line table is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTable {
    /// `co_lnotab` of CPython 3.6 to 3.9.
    Lnotab,
    /// `co_linetable` of CPython 3.10.
    Linetable310,
    /// The location table (`co_linetable`) of CPython 3.11 and later.
    Locations,
}

/// The line of the instruction at byte `offset` of the bytecode; a negative offset (a frame that has not started) is on `first_line`.
pub fn line_at(format: LineTable, table: &[u8], first_line: i32, offset: i64) -> Option<i32> {
    if offset < 0 {
        return Some(first_line);
    }
    match format {
        LineTable::Lnotab => Some(lnotab_line(table, first_line, offset)),
        LineTable::Linetable310 => linetable310_line(table, first_line, offset),
        LineTable::Locations => location_line(table, first_line, offset),
    }
}

/// 3.6 to 3.9: pairs of (bytes since the previous entry, unsigned; lines
/// since the previous entry, signed). An entry's line delta applies from
/// its byte offset on, so the line at `offset` is the first line plus the
/// deltas of every entry that starts at or before it. Big jumps are split
/// into several entries (bytes 255 at most, lines -128..=127), which this
/// sum handles without special cases. Every instruction has a line here:
/// past the last entry it is the last line, as CPython answers.
fn lnotab_line(table: &[u8], first_line: i32, offset: i64) -> i32 {
    let mut line = first_line;
    let mut start = 0i64;
    for pair in table.chunks_exact(2) {
        start += i64::from(pair[0]);
        if start > offset {
            break;
        }
        line = line.saturating_add(i32::from(pair[1] as i8));
    }
    line
}

/// The line delta of a 3.10 entry that says its bytes have no line.
const NO_LINE_310: i8 = -128;

/// 3.10: pairs of (length of the range in bytes, unsigned; line delta,
/// signed), ranges back to back from offset 0. Unlike `co_lnotab`, an
/// entry's delta applies to its own range, and -128 means the range has no
/// line (and leaves the running line alone). Deltas of zero-length ranges
/// still count: CPython splits line jumps beyond -127..=127 into them. Past
/// the last range there is no line.
fn linetable310_line(table: &[u8], first_line: i32, offset: i64) -> Option<i32> {
    let mut line = first_line;
    let mut end = 0i64;
    for pair in table.chunks_exact(2) {
        end += i64::from(pair[0]);
        let delta = pair[1] as i8;
        if delta != NO_LINE_310 {
            line = line.saturating_add(i32::from(delta));
        }
        if offset < end {
            // Earlier ranges ended at or before `offset`, so it is in this one.
            return (delta != NO_LINE_310).then_some(line);
        }
    }
    None
}

/// The location code of a 3.11+ entry without a line.
const NO_LOCATION: u8 = 15;

/// 3.11+ (`Objects/locations.md`): entries of one header byte (bit 7 set;
/// bits 3-6 a code, bits 0-2 the number of 2-byte code units covered, minus
/// one), then varints. Codes 0-9 keep the line, 10-12 add `code - 10`, 13
/// and 14 add a signed varint, 15 means no line. Only the line is decoded;
/// columns are skipped by looking for the next header byte. Past the last
/// entry there is no line.
fn location_line(table: &[u8], first_line: i32, offset: i64) -> Option<i32> {
    let mut line = first_line;
    let mut start = 0i64;
    let mut at = 0;
    while let Some(&header) = table.get(at) {
        let code = (header >> 3) & 15;
        let units = i64::from(header & 7) + 1;
        line = line.saturating_add(location_line_delta(code, &table[at + 1..]));
        let end = start + 2 * units;
        if offset < end {
            return (code != NO_LOCATION).then_some(line);
        }
        start = end;
        at = next_entry(table, at);
    }
    None
}

/// How much a 3.11+ entry of location code `code`, followed by `rest`,
/// moves the line.
fn location_line_delta(code: u8, rest: &[u8]) -> i32 {
    match code {
        10..=12 => i32::from(code - 10),
        13 | 14 => signed_varint(rest),
        _ => 0,
    }
}

/// The index of the 3.11+ entry after the one at `at`: the next byte with
/// bit 7 set (varints and column bytes never have it), or the table's end.
fn next_entry(table: &[u8], at: usize) -> usize {
    let rest = table.get(at + 1..).unwrap_or_default();
    rest.iter()
        .position(|&b| b & 0x80 != 0)
        .map_or(table.len(), |i| at + 1 + i)
}

/// 6-bit chunks, least significant first; bit 6 says another chunk follows.
/// At most six chunks are read (CPython's values fit in 32 bits), so a
/// hostile run of continuation bits cannot overflow the shift.
fn varint(bytes: &[u8]) -> u32 {
    let mut value = 0u32;
    for (i, &b) in bytes.iter().enumerate().take(6) {
        value |= u32::from(b & 63) << (6 * i);
        if b & 64 == 0 {
            break;
        }
    }
    value
}

/// A varint whose lowest bit is the sign.
fn signed_varint(bytes: &[u8]) -> i32 {
    let value = varint(bytes);
    // `value >> 1` < 2^31, so it fits and negating it cannot overflow.
    let magnitude = (value >> 1) as i32;
    if value & 1 == 1 {
        -magnitude
    } else {
        magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `co_linetable` of this function, from CPython 3.11.7, with the line
    /// of every instruction as `dis` reports it:
    /// ```python
    /// def f(x):               # line 2
    ///     a = 1
    ///     b = [i for i in range(x)]
    ///
    ///     return (a +
    ///             len(b) +
    ///             x)
    /// ```
    const TABLE: [u8; 62] = [
        128, 0, 216, 8, 9, 128, 65, 216, 8, 29, 208, 8, 29, 149, 69, 152, 33, 145, 72, 148, 72,
        208, 8, 29, 209, 8, 29, 212, 8, 29, 128, 65, 224, 12, 13, 221, 12, 15, 144, 1, 137, 70,
        140, 70, 241, 3, 1, 13, 19, 224, 12, 13, 241, 5, 2, 13, 14, 240, 0, 2, 5, 15,
    ];

    fn locations(table: &[u8], first_line: i32, offset: i64) -> Option<i32> {
        line_at(LineTable::Locations, table, first_line, offset)
    }

    #[test]
    fn lines_match_what_cpython_reports() {
        let mut expected = vec![(0, 2), (2, 3), (4, 3)];
        expected.extend((6..=54).step_by(2).map(|o| (o, 4)));
        expected.push((56, 6));
        expected.extend((58..=84).step_by(2).map(|o| (o, 7)));
        expected.extend([(86, 6), (88, 6), (90, 8), (92, 6), (94, 6), (96, 6)]);
        for (offset, line) in expected {
            assert_eq!(locations(&TABLE, 2, offset), Some(line), "offset {offset}");
        }
        assert_eq!(locations(&TABLE, 2, -2), Some(2));
        assert_eq!(locations(&TABLE, 2, 1000), None);
    }

    #[test]
    fn entries_without_a_line_have_none() {
        // Code 15 (no location) covering one unit, then code 13 with +3.
        let table = [0x80 | (15 << 3), 0x80 | (13 << 3), 6];
        assert_eq!(locations(&table, 10, 0), None);
        assert_eq!(locations(&table, 10, 2), Some(13));
    }

    #[test]
    fn varints_are_six_bits_at_a_time() {
        assert_eq!(varint(&[5]), 5);
        assert_eq!(varint(&[64 | 1, 2]), 1 | (2 << 6));
        assert_eq!(signed_varint(&[7]), -3);
        assert_eq!(signed_varint(&[6]), 3);
    }

    /// A 3.6-3.10 table from (unsigned byte, signed line delta) pairs.
    fn pairs(entries: &[(u8, i8)]) -> Vec<u8> {
        entries.iter().flat_map(|&(b, l)| [b, l as u8]).collect()
    }

    #[test]
    fn lnotab_deltas_apply_from_their_offset_on() {
        // Line 5 from 0, line 7 from 4, line 6 from 10.
        let table = pairs(&[(0, 0), (4, 2), (6, -1)]);
        let lines: Vec<_> = (0..14)
            .step_by(2)
            .map(|o| line_at(LineTable::Lnotab, &table, 5, o))
            .collect();
        let want = [5, 5, 7, 7, 7, 6, 6].map(Some);
        assert_eq!(lines, want);
        assert_eq!(line_at(LineTable::Lnotab, &table, 5, -1), Some(5));
        assert_eq!(line_at(LineTable::Lnotab, &[], 5, 40), Some(5));
    }

    #[test]
    fn lnotab_splits_big_jumps_over_entries() {
        // 600 bytes on line 1, then +200 lines, then back -300 lines 4 bytes on.
        let table = pairs(&[
            (255, 0),
            (255, 0),
            (90, 127),
            (0, 73),
            (4, -128),
            (0, -128),
            (0, -44),
        ]);
        let at = |o| line_at(LineTable::Lnotab, &table, 1, o);
        assert_eq!(at(0), Some(1));
        assert_eq!(at(598), Some(1));
        assert_eq!(at(600), Some(201));
        assert_eq!(at(602), Some(201));
        // -128 is an ordinary delta in co_lnotab, not "no line".
        assert_eq!(at(604), Some(-99));
        assert_eq!(at(10_000), Some(-99));
    }

    #[test]
    fn linetable310_deltas_apply_to_their_own_range() {
        // Bytes 0-3 on line 2 (first 1, +1), 4-5 without a line, 6-9 on 3.
        let table = pairs(&[(4, 1), (2, -128), (4, 1)]);
        let at = |o| line_at(LineTable::Linetable310, &table, 1, o);
        assert_eq!(
            [0, 2, 4, 6, 8].map(at),
            [Some(2), Some(2), None, Some(3), Some(3)]
        );
        assert_eq!(at(10), None, "past the table");
        assert_eq!(at(-2), Some(1));
    }

    #[test]
    fn linetable310_splits_big_jumps_over_entries() {
        // 2 bytes on line 1; +200 lines (+127 on an empty range); 600 bytes on
        // line 201 in three ranges; -300 lines, then 2 bytes on line -99.
        let table = pairs(&[
            (2, 0),
            (0, 127),
            (254, 73),
            (254, 0),
            (92, 0),
            (0, -127),
            (0, -127),
            (2, -46),
        ]);
        let at = |o| line_at(LineTable::Linetable310, &table, 1, o);
        assert_eq!(at(0), Some(1));
        assert_eq!(at(2), Some(201));
        assert_eq!(at(601), Some(201));
        assert_eq!(at(602), Some(-99));
        assert_eq!(at(604), None);
    }

    #[test]
    fn linetable310_no_line_keeps_the_running_line() {
        // A no-line range between +3 and +1: the second range is on first + 4.
        let table = pairs(&[(2, 3), (2, -128), (0, -128), (2, 1)]);
        let at = |o| line_at(LineTable::Linetable310, &table, 10, o);
        assert_eq!([0, 2, 4].map(at), [Some(13), None, Some(14)]);
    }

    /// A small deterministic generator (xorshift), to avoid a dependency.
    fn noise(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn any_bytes_give_an_answer() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let formats = [
            LineTable::Lnotab,
            LineTable::Linetable310,
            LineTable::Locations,
        ];
        for _ in 0..2000 {
            let len = (noise(&mut seed) % 64) as usize;
            let table: Vec<u8> = (0..len).map(|_| noise(&mut seed) as u8).collect();
            for format in formats {
                for offset in [0, 1, 7, 255, 4096, i64::MAX, i64::MIN] {
                    for first in [0, 1, i32::MAX, i32::MIN] {
                        let _ = line_at(format, &table, first, offset);
                    }
                }
            }
        }
        // Deltas that would overflow the line saturate instead.
        let up = [0x80 | (14 << 3), 0x7e, 0x7f, 0x7f, 0x7f, 0x7f, 0x03];
        assert_eq!(locations(&up, i32::MAX, 0), Some(i32::MAX));
        assert_eq!(
            line_at(LineTable::Lnotab, &[0, 127], i32::MAX, 0),
            Some(i32::MAX)
        );
        assert_eq!(
            line_at(LineTable::Linetable310, &pairs(&[(2, -127)]), i32::MIN, 0),
            Some(i32::MIN)
        );
    }

    /// Checks `line_at` against what each installed CPython says about its
    /// own code objects.
    mod against_cpython {
        use std::{path::PathBuf, process::Command};

        use serde_json::Value;

        use super::super::{line_at, LineTable};

        /// Interpreters the CI image has; a missing one fails the test there.
        const PYENV_VERSIONS: [&str; 8] = [
            "3.6.15", "3.7.16", "3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0",
        ];
        const SYSTEM_PYTHON: &str = "/usr/bin/python3.11";

        /// Compiles functions with awkward line patterns and prints, for
        /// every code object, its first line, its line table and the line
        /// CPython gives each instruction offset. Must run on 3.6 too.
        const SCRIPT: &str = r##"
import dis, json, sys, types

SOURCE = '''
def multi(a, b):
    x = (a +
         b *
         a)
    return max(
        x,
        a,
    )

def loops(n):
    total = 0
    for i in range(n):
        if i % 2:
            continue
        total += i
    while n > 0:
        n -= 1
        if n == 3:
            break
    return total

def comprehensions(xs):
    a = [x * 2 for x in xs if x]
    b = {x: [y for y in range(x)]
         for x in xs}
    return a, b, (lambda q:
                  q + 1)

def tried(f):
    try:
        f()
    except ValueError as e:
        print(e)
    finally:
        print("done")
    with open(f) as g:
        return g.read()

def gen(xs):
    for x in xs:
        yield x
    yield from xs

class Thing:
    attr = 1

    def method(self):
        return self.attr
'''
# A line jump of more than 130 lines, forwards and (at the loop's end) back.
SOURCE += 'def far(n):\n    for i in range(n):\n        a = i\n' + '\n' * 200 + '        b = i\n    return n\n'
# A call whose arguments span more than 130 lines.
SOURCE += 'def spread(f):\n    return f(\n' + '\n' * 150 + '        1,\n' + '\n' * 140 + '        2)\n'
# A function of more than 300 lines.
SOURCE += 'def big(a):\n' + ''.join('    v%d = a + %d\n' % (i, i) for i in range(320)) + '    return v0\n'
# One line whose bytecode is longer than 255 bytes.
SOURCE += 'def wide(a):\n    x = [' + ', '.join(['a'] * 300) + ']\n    return x\n'

version = sys.version_info[:2]

def lines_of(co):
    if version >= (3, 10):
        lines = {}
        for start, end, line in co.co_lines():
            for offset in range(start, end, 2):
                lines[offset] = line
        return [[o, lines.get(o)] for o in range(0, len(co.co_code), 2)]
    starts = list(dis.findlinestarts(co))
    out = []
    for o in range(0, len(co.co_code), 2):
        line = None
        for start, l in starts:
            if start <= o:
                line = l
        out.append([o, line])
    return out

def walk(co, out):
    table = co.co_linetable if version >= (3, 10) else co.co_lnotab
    out.append({"name": co.co_name, "first_line": co.co_firstlineno,
                "table": list(table), "lines": lines_of(co)})
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            walk(c, out)

codes = []
walk(compile(SOURCE, "<lines>", "exec"), codes)
print(json.dumps({"version": list(version), "codes": codes}))
"##;

        /// pyenv's root: what `pyenv root` says, else `$PYENV_ROOT`, else
        /// the default under /root.
        fn pyenv_root() -> PathBuf {
            let asked = Command::new("pyenv")
                .arg("root")
                .output()
                .ok()
                .filter(|out| out.status.success())
                .and_then(|out| String::from_utf8(out.stdout).ok())
                .map(|text| text.trim().to_owned())
                .filter(|text| !text.is_empty());
            asked
                .or_else(|| std::env::var("PYENV_ROOT").ok())
                .map_or_else(|| PathBuf::from("/root/.pyenv"), PathBuf::from)
        }

        /// The interpreters to compare with: the expected pyenv versions,
        /// any other 3.6+ pyenv versions installed, and Debian's 3.11.
        fn interpreters() -> Vec<PathBuf> {
            let versions = pyenv_root().join("versions");
            let mut names: Vec<String> = PYENV_VERSIONS.iter().map(|v| v.to_string()).collect();
            let installed = std::fs::read_dir(&versions).into_iter().flatten().flatten();
            for entry in installed {
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_py36_or_later(&name) && !names.contains(&name) {
                    names.push(name);
                }
            }
            let mut pythons: Vec<PathBuf> = names
                .iter()
                .map(|n| versions.join(n).join("bin/python3"))
                .collect();
            pythons.push(PathBuf::from(SYSTEM_PYTHON));
            pythons
        }

        /// Whether a pyenv version name is CPython 3.6 or later ("3.12.1").
        fn is_py36_or_later(name: &str) -> bool {
            let mut parts = name.split('.');
            let major = parts.next().and_then(|p| p.parse::<u32>().ok());
            let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
            major == Some(3) && minor.is_some_and(|m| m >= 6)
        }

        fn format_of(version: (u64, u64)) -> LineTable {
            match version {
                (3, ..=9) => LineTable::Lnotab,
                (3, 10) => LineTable::Linetable310,
                _ => LineTable::Locations,
            }
        }

        /// Runs the script on `python`; `None` (with a note) if it is
        /// missing outside CI.
        fn dump(python: &PathBuf) -> Option<Value> {
            if !python.exists() {
                let why = format!("{} is not installed", python.display());
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
                eprintln!("skipping: {why}");
                return None;
            }
            let out = Command::new(python)
                .args(["-I", "-c", SCRIPT])
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{}: {stderr}", python.display());
            Some(serde_json::from_slice(&out.stdout).expect("the script prints JSON"))
        }

        /// Every offset of every code object where `line_at` disagrees.
        fn mismatches(dump: &Value, label: &str) -> Vec<String> {
            let version = (
                dump["version"][0].as_u64().unwrap(),
                dump["version"][1].as_u64().unwrap(),
            );
            let format = format_of(version);
            let mut wrong = Vec::new();
            for code in dump["codes"].as_array().unwrap() {
                let name = code["name"].as_str().unwrap();
                let first_line = i32::try_from(code["first_line"].as_i64().unwrap()).unwrap();
                let table: Vec<u8> = code["table"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
                    .collect();
                for pair in code["lines"].as_array().unwrap() {
                    let offset = pair[0].as_i64().unwrap();
                    let want = pair[1].as_i64().map(|l| i32::try_from(l).unwrap());
                    let got = line_at(format, &table, first_line, offset);
                    if got != want {
                        wrong.push(format!(
                            "{label} ({format:?}) {name}: offset {offset}: got {got:?}, CPython says {want:?}"
                        ));
                    }
                }
            }
            wrong
        }

        #[test]
        fn lines_agree_with_every_installed_cpython() {
            let mut wrong = Vec::new();
            let mut checked = 0;
            for python in interpreters() {
                let Some(dump) = dump(&python) else { continue };
                let label = format!(
                    "{} (Python {}.{})",
                    python.display(),
                    dump["version"][0],
                    dump["version"][1]
                );
                wrong.extend(mismatches(&dump, &label));
                checked += 1;
            }
            eprintln!("compared with {checked} interpreters");
            assert!(
                wrong.is_empty(),
                "{} mismatches:\n{}",
                wrong.len(),
                wrong
                    .iter()
                    .take(50)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}
