//! Code objects: the function name, file and line table of a Python frame,
//! read once per code object, and the line of an instruction in it. Names
//! are the script's choice (`co_name` can be anything), so they are kept
//! with control characters escaped (see [`crate::text`]).
use std::sync::Arc;

use crate::text::{escape_controls, escape_controls_owned};

use super::{
    layout::{Instruction, Layout, LineTable},
    memory::{i32_at, u64_at, Memory},
    objects,
};

/// Longest name or file name read.
const MAX_NAME: usize = 1024;
/// Largest line table read; longer ones (functions of many thousand lines) are cut.
const MAX_LINE_TABLE: usize = 256 * 1024;
/// Most local variable names read per code object.
const MAX_LOCALS: usize = 256;

/// What a frame's code object says about it.
#[derive(Debug)]
pub struct Code {
    pub name: Arc<str>,
    pub file: Arc<str>,
    pub first_line: i32,
    /// Where the bytecode starts in the target's memory.
    code_units: u64,
    line_table: Vec<u8>,
    /// The `PyCodeObject`, for reading local variable names later.
    pub address: u64,
}

impl Code {
    /// Reads the code object at `address`; `None` if it cannot be read.
    pub fn read(memory: &dyn Memory, layout: &Layout, address: u64) -> Option<Code> {
        let fields = memory
            .read_vec(address, layout.code.read_size as usize)
            .ok()?;
        let string = |offset| {
            objects::read_str(memory, &layout.object, u64_at(&fields, offset), MAX_NAME)
                .map(|(text, _)| Arc::<str>::from(escape_controls(&text)))
        };
        let line_table = objects::read_bytes(
            memory,
            &layout.object,
            u64_at(&fields, layout.code.linetable),
            MAX_LINE_TABLE,
        )
        .map(|(bytes, _)| bytes)
        .unwrap_or_default();
        Some(Code {
            name: string(layout.code.name)?,
            file: string(layout.code.filename)?,
            first_line: i32_at(&fields, layout.code.firstlineno),
            code_units: address + layout.code.code_units as u64,
            line_table,
            address,
        })
    }

    /// The line of the frame's current instruction, from the raw
    /// instruction field the eBPF program sent. `None` for instructions
    /// without a line (compiler-generated ones).
    pub fn line(&self, layout: &Layout, instruction: u64) -> Option<u32> {
        let index = match layout.instruction {
            // `prev_instr` points at the 2-byte code unit started last; one
            // before the first when the frame has not started.
            Instruction::Pointer => (instruction as i64 - self.code_units as i64).div_euclid(2),
        };
        let line = match layout.line_table {
            LineTable::Locations => location_line(&self.line_table, self.first_line, index * 2),
        }?;
        u32::try_from(line).ok()
    }
}

/// The names of a code object's fast locals (arguments, locals, cells and
/// free variables), in `localsplus` order.
pub fn local_names(memory: &dyn Memory, layout: &Layout, code: u64) -> Option<Vec<String>> {
    let fields = memory.read_vec(code, layout.code.read_size as usize).ok()?;
    let names = u64_at(&fields, layout.code.localsplusnames);
    let items = objects::read_tuple(memory, &layout.object, names, MAX_LOCALS)?;
    items
        .into_iter()
        .map(|item| {
            objects::read_str(memory, &layout.object, item, MAX_NAME)
                .map(|(name, _)| escape_controls_owned(name))
        })
        .collect()
}

/// The line of the instruction at byte offset `offset` of the bytecode,
/// from a 3.11+ location table: entries of one header byte (bit 7 set;
/// bits 3-6 a code, bits 0-2 the number of code units covered, minus one),
/// then varints. Codes 0-9 keep the line, 10-12 add `code - 10`, 13 and 14
/// add a signed varint, 15 means no line. A negative offset (a frame that
/// has not started) is on the first line.
fn location_line(table: &[u8], first_line: i32, offset: i64) -> Option<i32> {
    if offset < 0 {
        return Some(first_line);
    }
    let mut line = first_line;
    let mut start = 0i64;
    let mut at = 0;
    while at < table.len() {
        let header = table[at];
        let code = (header >> 3) & 15;
        let units = i64::from(header & 7) + 1;
        line += match code {
            10..=12 => i32::from(code - 10),
            13 | 14 => signed_varint(&table[at + 1..]),
            _ => 0,
        };
        let end = start + 2 * units;
        if offset < end {
            return (code != 15).then_some(line);
        }
        start = end;
        // The next entry starts at the next byte with bit 7 set.
        at += 1;
        while at < table.len() && table[at] & 0x80 == 0 {
            at += 1;
        }
    }
    None
}

/// 6-bit chunks, least significant first; bit 6 says another chunk follows.
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
    if value & 1 == 1 {
        -((value >> 1) as i32)
    } else {
        (value >> 1) as i32
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

    #[test]
    fn lines_match_what_cpython_reports() {
        let mut expected = vec![(0, 2), (2, 3), (4, 3)];
        expected.extend((6..=54).step_by(2).map(|o| (o, 4)));
        expected.push((56, 6));
        expected.extend((58..=84).step_by(2).map(|o| (o, 7)));
        expected.extend([(86, 6), (88, 6), (90, 8), (92, 6), (94, 6), (96, 6)]);
        for (offset, line) in expected {
            assert_eq!(
                location_line(&TABLE, 2, offset),
                Some(line),
                "offset {offset}"
            );
        }
        assert_eq!(location_line(&TABLE, 2, -2), Some(2));
        assert_eq!(location_line(&TABLE, 2, 1000), None);
    }

    #[test]
    fn entries_without_a_line_have_none() {
        // Code 15 (no location) covering one unit, then code 13 with +3.
        let table = [0x80 | (15 << 3), 0x80 | (13 << 3), 6];
        assert_eq!(location_line(&table, 10, 0), None);
        assert_eq!(location_line(&table, 10, 2), Some(13));
    }

    #[test]
    fn varints_are_six_bits_at_a_time() {
        assert_eq!(varint(&[5]), 5);
        assert_eq!(varint(&[64 | 1, 2]), 1 | (2 << 6));
        assert_eq!(signed_varint(&[7]), -3);
        assert_eq!(signed_varint(&[6]), 3);
    }
}
