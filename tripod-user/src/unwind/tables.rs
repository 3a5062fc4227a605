//! `--unwind tables`: a file's call frame information compiled once into
//! the rows the eBPF program walks stacks with (`tripod_common::UnwindRow`),
//! as the OpenTelemetry profiler's "stack deltas" and parca-agent's
//! unwinder do. Pure: bytes in, rows out; the sampler loads them.
//!
//! Each row says, from its address on, how to find the canonical frame
//! address (rsp or rbp plus an offset, the PLT expression, or "outermost
//! frame") and where the caller's rbp is saved. The return address is
//! always just below the CFA on x86-64; a row where it is not, or whose CFA
//! is another expression, is [`cfa_rule::CFA_UNSUPPORTED`] and the kernel
//! copies such stacks instead. Gaps between functions are
//! [`cfa_rule::CFA_NONE`] rows. Consecutive rows with the same rule are merged.
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, Reader as _,
    RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use tripod_common::{cfa_rule, rbp_rule, UnwindRow, MAX_UNWIND_FILE_ROWS};

use super::elf::UnwindFile;

/// Why a file's call frame information was not compiled: its stacks are
/// copied and unwound in userspace instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncompilable {
    /// `.eh_frame` / `.debug_frame` could not be parsed.
    Malformed,
    /// More rows than the kernel's search covers ([`MAX_UNWIND_FILE_ROWS`]).
    TooManyRows,
}

/// The rows of `file`, sorted by address.
pub fn compile(file: &UnwindFile) -> Result<Vec<UnwindRow>, Uncompilable> {
    let mut rows = Vec::new();
    if let Some(eh_frame) = &file.eh_frame {
        let section = EhFrame::new(&eh_frame.data, LittleEndian);
        let mut bases = BaseAddresses::default().set_eh_frame(eh_frame.svma.start);
        if let Some(text) = &file.text_svma {
            bases = bases.set_text(text.start);
        }
        if let Some(got) = &file.got_svma {
            bases = bases.set_got(got.start);
        }
        collect(&section, &bases, &mut rows).map_err(|_| Uncompilable::Malformed)?;
    } else if let Some(debug_frame) = &file.debug_frame {
        let mut section = DebugFrame::new(debug_frame, LittleEndian);
        section.set_address_size(8);
        collect(&section, &BaseAddresses::default(), &mut rows)
            .map_err(|_| Uncompilable::Malformed)?;
    }
    let rows = tidy(rows);
    if rows.len() > MAX_UNWIND_FILE_ROWS as usize {
        return Err(Uncompilable::TooManyRows);
    }
    Ok(rows)
}

/// A row and whether it ends a function's information (a gap row, which
/// a function starting at the same address overrides).
type Pending = (UnwindRow, bool);

/// Every row of every FDE of `section`, unsorted, each FDE followed by a gap row.
fn collect<'a, S>(section: &S, bases: &BaseAddresses, rows: &mut Vec<Pending>) -> gimli::Result<()>
where
    S: UnwindSection<EndianSlice<'a, LittleEndian>>,
{
    let mut context = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial.parse(S::cie_from_offset)?;
        let mut table = fde.rows(section, bases, &mut context)?;
        while let Some(row) = table.next_row()? {
            rows.push((convert(section, row), false));
        }
        rows.push((gap(fde.end_address()), true));
    }
    Ok(())
}

/// One gimli row as the kernel's rule.
fn convert<'a, S>(section: &S, row: &gimli::UnwindTableRow<usize, gimli::StoreOnHeap>) -> UnwindRow
where
    S: UnwindSection<EndianSlice<'a, LittleEndian>>,
{
    let mut out = UnwindRow {
        pc: row.start_address(),
        cfa_offset: 0,
        rbp_offset: 0,
        cfa_rule: cfa_rule::CFA_UNSUPPORTED,
        rbp_rule: rbp_rule::RBP_SAME,
    };
    match row.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => {
            out.cfa_rule = cfa_rule::CFA_END;
            return out;
        }
        Some(RegisterRule::Offset(-8)) | None => {}
        Some(_) => return out,
    }
    let (rule, offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => {
            (cfa_rule::CFA_RSP, *offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => {
            (cfa_rule::CFA_RBP, *offset)
        }
        CfaRule::Expression(expression) => {
            match expression.get(section).ok().and_then(plt_threshold) {
                Some(threshold) => (cfa_rule::CFA_PLT, threshold),
                None => return out,
            }
        }
        _ => return out,
    };
    let Ok(offset) = i32::try_from(offset) else {
        return out;
    };
    out.cfa_rule = rule;
    out.cfa_offset = offset;
    match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => {}
        Some(RegisterRule::Offset(at)) => match i16::try_from(at) {
            Ok(at) => {
                out.rbp_rule = rbp_rule::RBP_AT_CFA;
                out.rbp_offset = at;
            }
            Err(_) => out.rbp_rule = rbp_rule::RBP_UNKNOWN,
        },
        Some(_) => out.rbp_rule = rbp_rule::RBP_UNKNOWN,
    }
    out
}

/// The expression binutils writes for lazy-binding PLT entries:
/// `rsp + 8 + ((rip & 15) >= N) << 3`, with N 11 (or 10); `Some(N)`.
fn plt_threshold(expression: gimli::Expression<EndianSlice<'_, LittleEndian>>) -> Option<i64> {
    let bytes = expression.0.to_slice().ok()?;
    // DW_OP_breg7 8, DW_OP_breg16 0, DW_OP_lit15, DW_OP_and, DW_OP_litN,
    // DW_OP_ge, DW_OP_lit3, DW_OP_shl, DW_OP_plus.
    match &bytes[..] {
        [0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, lit @ 0x3a..=0x3b, 0x2a, 0x33, 0x24, 0x22] => {
            Some(i64::from(*lit - 0x30))
        }
        _ => None,
    }
}

fn gap(pc: u64) -> UnwindRow {
    UnwindRow {
        pc,
        cfa_offset: 0,
        rbp_offset: 0,
        cfa_rule: cfa_rule::CFA_NONE,
        rbp_rule: rbp_rule::RBP_SAME,
    }
}

/// Sorted by address, one row per address (a function's first row wins
/// over the previous one's end gap), runs of equal rules merged.
fn tidy(mut rows: Vec<Pending>) -> Vec<UnwindRow> {
    // At one address, gap rows sort first so that the real row is kept.
    rows.sort_by_key(|(row, is_gap)| (row.pc, !is_gap));
    let mut out: Vec<UnwindRow> = Vec::with_capacity(rows.len());
    for (row, _) in rows {
        if out.last().is_some_and(|last| last.pc == row.pc) {
            out.pop();
        }
        let same_rule = out.last().is_some_and(|last| {
            (
                last.cfa_rule,
                last.cfa_offset,
                last.rbp_rule,
                last.rbp_offset,
            ) == (row.cfa_rule, row.cfa_offset, row.rbp_rule, row.rbp_offset)
        });
        if !same_rule {
            out.push(row);
        }
    }
    out
}

#[cfg(test)]
mod tests;
