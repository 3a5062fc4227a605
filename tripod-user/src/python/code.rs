//! Code objects: the function name, file and line table of a Python frame,
//! read once per code object, and the line of an instruction in it. Names
//! are the script's choice (`co_name` can be anything), so they are kept
//! with control characters escaped (see [`crate::text`]).
use std::sync::Arc;

use crate::text::{escape_controls, escape_controls_owned};

use super::{
    layout::{Instruction, Layout, LocalNames},
    lines,
    memory::{i32_at, u64_at, Memory},
    objects,
};

/// Longest name or file name read; longer ones are cut with a visible marker.
const MAX_NAME: usize = 1024;
/// Largest line table read; longer ones (functions of many thousand lines) are cut.
const MAX_LINE_TABLE: usize = 256 * 1024;
/// Most local variable names read per code object.
const MAX_LOCALS: usize = 256;

/// What a frame's code object says about it.
#[derive(Debug)]
pub struct Code {
    /// The qualified name (`Class.method`) where the version has one
    /// (`co_qualname`, 3.11 and later), else `co_name`.
    pub name: Arc<str>,
    pub file: Arc<str>,
    pub first_line: i32,
    /// Where the bytecode starts in the target's memory (3.11 and later,
    /// whose frames point into it).
    code_units: u64,
    line_table: Vec<u8>,
    /// The `PyCodeObject`, for reading local variable names later.
    pub address: u64,
}

impl Code {
    /// Reads the code object at `address`; `None` if it cannot be read or
    /// is not a code object (a frame chain that does not match the layout
    /// gives nothing rather than garbage names).
    pub fn read(memory: &dyn Memory, layout: &Layout, address: u64) -> Option<Code> {
        if !objects::has_type(memory, &layout.object, address, "code") {
            return None;
        }
        let fields = memory
            .read_vec(address, layout.code.read_size as usize)
            .ok()?;
        let string = |offset| name_at(memory, layout, u64_at(&fields, offset));
        let name = match layout.code.qualname {
            Some(qualname) => string(qualname).or_else(|| string(layout.code.name)),
            None => string(layout.code.name),
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
            name: name?,
            file: string(layout.code.filename)?,
            first_line: i32_at(&fields, layout.code.firstlineno),
            code_units: address.wrapping_add(layout.code.code_units.unwrap_or(0) as u64),
            line_table,
            address,
        })
    }

    /// The line of the frame's current instruction, from the raw
    /// instruction field the eBPF program sent. `None` for instructions
    /// without a line (compiler-generated ones).
    pub fn line(&self, layout: &Layout, instruction: u64) -> Option<u32> {
        // `f_lasti` is a C int in the low half of the 8 bytes read.
        let lasti = i64::from(instruction as u32 as i32);
        let offset = match layout.instruction {
            Instruction::LastiBytes => lasti,
            Instruction::LastiUnits => lasti * 2,
            // A pointer to a 2-byte code unit: `prev_instr` (one before
            // the first when the frame has not started) or `instr_ptr`.
            Instruction::Pointer => {
                (instruction as i64)
                    .wrapping_sub(self.code_units as i64)
                    .div_euclid(2)
                    * 2
            }
        };
        let line = lines::line_at(layout.line_table, &self.line_table, self.first_line, offset)?;
        u32::try_from(line).ok()
    }
}

/// A name or file name (a `str` object), escaped, and cut with a visible
/// marker past [`MAX_NAME`] characters.
fn name_at(memory: &dyn Memory, layout: &Layout, address: u64) -> Option<Arc<str>> {
    let (text, length) = objects::read_str(memory, &layout.object, address, MAX_NAME)?;
    let mut shown = escape_controls(&text).into_owned();
    if length > MAX_NAME {
        shown.push_str(&format!("...[cut: {length} characters]"));
    }
    Some(Arc::from(shown))
}

/// The names of a code object's fast locals (arguments, locals, cells and
/// free variables), in the order of the frame's slots.
pub fn local_names(memory: &dyn Memory, layout: &Layout, code: u64) -> Option<Vec<String>> {
    let fields = memory.read_vec(code, layout.code.read_size as usize).ok()?;
    let tuples: &[u32] = match &layout.code.locals {
        LocalNames::Plus { names } => &[*names],
        // Before 3.11 the slots are the locals, then the cells, then the free variables.
        LocalNames::Split {
            varnames,
            cellvars,
            freevars,
        } => &[*varnames, *cellvars, *freevars],
    };
    let mut names = Vec::new();
    for &tuple in tuples {
        let left = MAX_LOCALS.saturating_sub(names.len());
        let items = objects::read_tuple(memory, &layout.object, u64_at(&fields, tuple), left)?;
        for item in items {
            let (name, _) = objects::read_str(memory, &layout.object, item, MAX_NAME)?;
            names.push(escape_controls_owned(name));
        }
    }
    Some(names)
}
