//! The compiled rows checked against framehop (the unwinder of
//! `--unwind dwarf`) on real files of this machine: at addresses spread
//! over each file's code, one step of each must give the same caller.
use std::{fs::File, path::Path, sync::Arc};

use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    FrameAddress, Unwinder as _,
};
use tripod_common::{cfa_rule, rbp_rule, UnwindRow};

use super::{compile, plt_threshold};
use crate::unwind::elf::{Bytes, UnwindFile};

/// Fake stack memory: every word reads as a value derived from its address,
/// so a wrong CFA or a wrong slot gives a different caller.
fn memory(address: u64) -> u64 {
    address ^ 0x5a5a_0000_0000
}

/// The caller's (ip, sp, bp) by the rows, one step from a return address.
fn step_by_rows(
    rows: &[UnwindRow],
    return_address: u64,
    regs: (u64, u64),
) -> Option<(u64, u64, u64)> {
    let lookup = return_address - 1;
    let index = rows.partition_point(|r| r.pc <= lookup).checked_sub(1)?;
    let row = rows[index];
    let (sp, bp) = regs;
    let cfa = match row.cfa_rule {
        cfa_rule::CFA_RSP => sp.wrapping_add(row.cfa_offset as i64 as u64),
        cfa_rule::CFA_RBP => bp.wrapping_add(row.cfa_offset as i64 as u64),
        cfa_rule::CFA_PLT => {
            sp + if return_address & 15 >= row.cfa_offset as u64 {
                16
            } else {
                8
            }
        }
        _ => return None,
    };
    let bp = match row.rbp_rule {
        rbp_rule::RBP_SAME => bp,
        rbp_rule::RBP_AT_CFA => memory(cfa.wrapping_add(row.rbp_offset as i64 as u64)),
        _ => return None,
    };
    Some((memory(cfa - 8), cfa, bp))
}

/// Compares the rows of `path` with framehop at `samples` addresses spread
/// over its executable segments; returns (compared, agreed).
fn compare_with_framehop(path: &Path, samples: u64) -> (u64, u64) {
    let file = UnwindFile::read(File::open(path).unwrap()).expect("unwind sections");
    let rows = compile(&file).expect("compilable");
    assert!(rows.windows(2).all(|w| w[0].pc < w[1].pc), "rows sorted");
    let mut unwinder: UnwinderX86_64<Bytes> = UnwinderX86_64::new();
    let text = file.loads.iter().find(|l| l.executable).unwrap();
    let code = text.vaddr..text.vaddr + text.filesz;
    // Mapped where it was linked: addresses are the file's own.
    unwinder.add_module(framehop::Module::new(
        path.display().to_string(),
        file.base_svma..code.end,
        file.base_svma,
        file.section_info(),
    ));
    let mut cache = CacheX86_64::new();
    let (mut compared, mut agreed) = (0, 0);
    let stride = ((code.end - code.start) / samples).max(1);
    let (sp, bp) = (0x7ff0_0000_1000u64, 0x7ff0_0000_8000u64);
    for address in (code.start..code.end).step_by(stride as usize) {
        // As a return address: framehop then follows the tables alone,
        // without looking at the instructions.
        let Some(frame) = FrameAddress::from_return_address(address + 1) else {
            continue;
        };
        let mut regs = UnwindRegsX86_64::new(address + 1, sp, bp);
        let mut read = |a: u64| Ok(memory(a));
        let Ok(Some(return_address)) =
            unwinder.unwind_frame(frame, &mut regs, &mut cache, &mut read)
        else {
            continue;
        };
        let Some(ours) = step_by_rows(&rows, address + 1, (sp, bp)) else {
            continue;
        };
        compared += 1;
        if ours == (return_address, regs.sp(), regs.bp()) {
            agreed += 1;
        } else {
            eprintln!(
                "{}: at {address:#x} rows give {ours:x?}, framehop {:x?}",
                path.display(),
                (return_address, regs.sp(), regs.bp())
            );
        }
    }
    (compared, agreed)
}

fn check_file(path: &str) {
    let path = Path::new(path);
    if !path.exists() {
        // Both are part of this machine's base image (see README, Tests).
        panic!("{} is missing", path.display());
    }
    let (compared, agreed) = compare_with_framehop(path, 20_000);
    println!("{}: {agreed}/{compared} addresses agree", path.display());
    assert!(compared >= 5_000, "too few addresses compared: {compared}");
    assert!(
        agreed as f64 >= 0.999 * compared as f64,
        "rows and framehop disagree: {agreed}/{compared}"
    );
}

#[test]
fn libc_rows_agree_with_framehop() {
    check_file("/lib/x86_64-linux-gnu/libc.so.6");
}

#[test]
fn python_rows_agree_with_framehop() {
    check_file("/usr/bin/python3.11");
}

#[test]
fn our_own_rows_agree_with_framehop() {
    check_file(std::env::current_exe().unwrap().to_str().unwrap());
}

#[test]
fn plt_expression_is_recognized() {
    use gimli::{EndianSlice, Expression, LittleEndian};
    let eleven = [
        0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
    ];
    let expression = Expression(EndianSlice::new(&eleven, LittleEndian));
    assert_eq!(plt_threshold(expression), Some(11));
    let other = [0x77, 0x08];
    let expression = Expression(EndianSlice::new(&other, LittleEndian));
    assert_eq!(plt_threshold(expression), None);
}

#[test]
fn garbage_is_not_compiled() {
    let mut file = UnwindFile::read(File::open(std::env::current_exe().unwrap()).unwrap()).unwrap();
    let section = file.eh_frame.as_mut().unwrap();
    let mut bytes = section.data.to_vec();
    // A CIE claiming to be longer than the section.
    bytes[..4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    section.data = Arc::from(bytes);
    assert_eq!(compile(&file), Err(super::Uncompilable::Malformed));
}
