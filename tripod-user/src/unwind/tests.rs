//! Unwinding our own thread (release test binaries have no frame pointers,
//! so this exercises `.eh_frame` for real), garbage input, and rebuilds.
use std::{arch::asm, hint::black_box, time::Instant};

use super::*;
use crate::{
    process::Location,
    symbolize::{Resolved, Symbolizer},
};

/// Registers and stack bytes of a thread, as the kernel would send them.
struct Captured {
    regs: UserRegs,
    stack: Vec<u8>,
}

/// The highest address of the calling thread's stack.
fn stack_top() -> u64 {
    // SAFETY: `attr` is initialised by pthread_getattr_np before use and destroyed after.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_getattr_np(libc::pthread_self(), &mut attr), 0);
        let mut low: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        assert_eq!(libc::pthread_attr_getstack(&attr, &mut low, &mut size), 0);
        libc::pthread_attr_destroy(&mut attr);
        low as u64 + size as u64
    }
}

/// Copies the registers and the whole stack of this thread from inside this
/// frame, so every caller's frame is still intact.
#[inline(never)]
fn capture() -> Captured {
    let top = stack_top();
    // Allocate before reading the registers: nothing below runs a call that
    // could change the bytes above sp that the unwinder needs.
    let mut stack: Vec<u8> = Vec::with_capacity(1 << 20);
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers; touches neither memory nor the stack.
    unsafe {
        asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let len = (top.saturating_sub(sp) as usize).min(stack.capacity());
    // SAFETY: [sp, top) is this thread's mapped stack, and `stack` has room for `len` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(sp as *const u8, stack.as_mut_ptr(), len);
        stack.set_len(len);
    }
    Captured {
        regs: UserRegs { ip, sp, bp },
        stack,
    }
}

// Each level does work after its call, so none is a tail call.
#[inline(never)]
fn level3(x: u64) -> (Captured, u64) {
    let captured = capture();
    (captured, black_box(x) * 3)
}

#[inline(never)]
fn level2(x: u64) -> (Captured, u64) {
    let (captured, y) = level3(black_box(x) + 1);
    (captured, black_box(y) ^ 2)
}

#[inline(never)]
fn level1(x: u64) -> (Captured, u64) {
    let (captured, y) = level2(black_box(x) + 5);
    (captured, black_box(y).wrapping_mul(7))
}

/// The function names at each frame, innermost first (a function inlined
/// into its caller before it), `?` when unknown.
fn function_names(frames: &[RawFrame], processes: &mut ProcessTable) -> Vec<String> {
    let pid = std::process::id();
    let mut symbolizer = Symbolizer::new();
    let mut names = Vec::new();
    for frame in frames {
        let Some(address) = frame.lookup_address() else {
            names.push("[gap]".to_string());
            continue;
        };
        let Location::File {
            module,
            file_offset,
        } = processes.locate(pid, address)
        else {
            names.push("?".to_string());
            continue;
        };
        symbolizer.resolve_user(&module, &[file_offset]);
        match symbolizer.user(&module, file_offset).as_deref() {
            Some(Resolved::Symbols(symbols)) => {
                names.extend(symbols.iter().rev().map(|s| s.function.to_string()))
            }
            _ => names.push("?".to_string()),
        }
    }
    names
}

fn assert_chain(names: &[String]) {
    let test = "unwind::tests::unwinds_our_own_thread_without_frame_pointers";
    assert_chain_in(names, test);
}

/// `names` begins with capture, its three levels, then `test`.
fn assert_chain_in(names: &[String], test: &str) {
    let expected = ["capture", "level3", "level2", "level1"];
    assert!(names.len() > expected.len(), "too short: {names:?}");
    for (name, suffix) in names.iter().zip(expected) {
        assert!(
            name.ends_with(&format!("unwind::tests::{suffix}")),
            "expected {expected:?} innermost first, got {names:?}"
        );
    }
    assert!(names[4].ends_with(test), "caller of level1: {names:?}");
}

#[test]
fn unwinds_our_own_thread_without_frame_pointers() {
    let (captured, _) = level1(black_box(1));
    let pid = std::process::id();
    let mut processes = ProcessTable::new();
    let mut unwinder = Unwinder::new();

    // The whole stack: the walk reaches the thread's root and is not truncated.
    // The first call reads /proc/self/maps and the unwind sections of every file.
    let start = Instant::now();
    let full = unwinder.unwind(pid, captured.regs, &captured.stack, &mut processes);
    let first = start.elapsed();
    assert_eq!(
        full[0],
        RawFrame::InstructionPointer(Space::User, captured.regs.ip)
    );
    assert!(full[1..]
        .iter()
        .all(|f| matches!(f, RawFrame::ReturnAddress(Space::User, _))));
    let names = function_names(&full, &mut processes);
    assert_chain(&names);

    assert!(!full.contains(&RawFrame::Gap(Space::User, Gap::Truncated)));

    // What the kernel sends: at most 16 KiB. The innermost frames are the same.
    let kernel_copy = &captured.stack[..captured.stack.len().min(16 << 10)];
    let kernel_frames = unwinder.unwind(pid, captured.regs, kernel_copy, &mut processes);
    assert_eq!(kernel_frames[..5], full[..5]);

    // A cut copy (the test harness's frames are much deeper than 512 bytes):
    // a prefix of the full walk, then truncated.
    let cut = &captured.stack[..512];
    let frames = unwinder.unwind(pid, captured.regs, cut, &mut processes);
    let (last, walked) = frames.split_last().unwrap();
    assert_eq!(*last, RawFrame::Gap(Space::User, Gap::Truncated));
    assert!(
        walked.len() >= 2 && full.starts_with(walked),
        "{frames:?} vs {full:?}"
    );

    // A copy too short for the second return address: IP, one caller, truncated.
    let short = unwinder.unwind(pid, captured.regs, &captured.stack[..8], &mut processes);
    assert_eq!(short[0], full[0]);
    assert_eq!(
        short.last(),
        Some(&RawFrame::Gap(Space::User, Gap::Truncated))
    );
    assert!(short.len() <= 3, "{short:?}");

    // Cost per sample, for the README: the 16 KiB copy, warm caches.
    let runs = 10_000;
    let start = Instant::now();
    for _ in 0..runs {
        black_box(unwinder.unwind(pid, captured.regs, black_box(kernel_copy), &mut processes));
    }
    let per = start.elapsed() / runs;
    eprintln!(
        "unwind: {} frames ({} in the full stack) from {} bytes: {per:?} per sample, \
         {first:?} for the first (reading the files)",
        kernel_frames.len(),
        full.len(),
        kernel_copy.len()
    );
    // Built once: the mappings did not change between calls.
    assert_eq!(unwinder.processes[&pid].builds, 1);
}

/// The address of a function exported by the vDSO.
fn vdso_symbol(name: &str) -> u64 {
    use object::{Object as _, ObjectSymbol as _};
    // SAFETY: AT_SYSINFO_EHDR is the vDSO's ELF header, mapped for the life of the process.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps.lines().find(|l| l.ends_with(" [vdso]")).unwrap();
    let (start, end) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    let start = u64::from_str_radix(start, 16).unwrap();
    let end = u64::from_str_radix(end, 16).unwrap();
    assert_eq!(start, base);
    // SAFETY: the vDSO mapping is readable.
    let image = unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    let file = object::read::elf::ElfFile64::<object::Endianness>::parse(image).unwrap();
    let symbol = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap();
    let vaddr = file
        .segments()
        .next()
        .map(|s| object::ObjectSegment::address(&s))
        .unwrap();
    start + symbol.address() - (vaddr & !0xfff)
}

#[test]
fn unwinds_through_the_vdso() {
    // As if `capture` had been sampled on the first instruction of
    // clock_gettime, called from where it read its registers: the return
    // address is pushed, and nothing else changed.
    let (captured, _) = level1(black_box(3));
    let pid = std::process::id();
    let mut processes = ProcessTable::new();
    let mut unwinder = Unwinder::new();
    let full = unwinder.unwind(pid, captured.regs, &captured.stack, &mut processes);

    let entry = vdso_symbol("__vdso_clock_gettime");
    let mut stack = captured.regs.ip.to_le_bytes().to_vec();
    stack.extend_from_slice(&captured.stack);
    // Only the vDSO's CFI (CFA = rsp + 8) gives this caller: frame pointers
    // would take the return address from rbp's frame, one level further out.
    let regs = UserRegs {
        ip: entry,
        sp: captured.regs.sp - 8,
        bp: captured.regs.bp,
    };
    let frames = unwinder.unwind(pid, regs, &stack, &mut processes);
    assert_eq!(frames[0], RawFrame::InstructionPointer(Space::User, entry));
    assert_eq!(
        frames[1],
        RawFrame::ReturnAddress(Space::User, captured.regs.ip)
    );
    assert_eq!(frames[2..], full[1..]);

    // A return address in no mapping is garbage: dropped, and the stack is truncated.
    let mut stack = 0x10u64.to_le_bytes().to_vec();
    stack.extend_from_slice(&captured.stack);
    let frames = unwinder.unwind(pid, regs, &stack, &mut processes);
    assert_eq!(
        frames,
        vec![
            RawFrame::InstructionPointer(Space::User, entry),
            RawFrame::Gap(Space::User, Gap::Truncated)
        ]
    );
}

#[inline(never)]
fn recurse(depth: u32) -> (Captured, u64) {
    if depth == 0 {
        return (capture(), 0);
    }
    let (captured, x) = recurse(black_box(depth - 1));
    (captured, black_box(x) + 1)
}

#[test]
fn deep_stacks_are_cut_at_the_limit() {
    let (captured, _) = recurse(black_box(600));
    let pid = std::process::id();
    let frames = Unwinder::new().unwind(
        pid,
        captured.regs,
        &captured.stack,
        &mut ProcessTable::new(),
    );
    assert_eq!(frames.len(), MAX_UNWIND_DEPTH + 1);
    assert_eq!(
        frames[MAX_UNWIND_DEPTH],
        RawFrame::Gap(Space::User, Gap::Truncated)
    );
    // All the return addresses are the same call in `recurse`, but the first two.
    assert_eq!(frames[10], frames[MAX_UNWIND_DEPTH - 1]);
}

/// xorshift64*: deterministic garbage without a dependency.
fn garbage(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn garbage_input_gives_short_truncated_stacks() {
    let pid = std::process::id();
    let mut processes = ProcessTable::new();
    let mut unwinder = Unwinder::new();
    let truncated = RawFrame::Gap(Space::User, Gap::Truncated);

    let regs = UserRegs {
        ip: 0,
        sp: 0,
        bp: 0,
    };
    assert_eq!(
        unwinder.unwind(pid, regs, &[], &mut processes),
        vec![RawFrame::InstructionPointer(Space::User, 0), truncated]
    );
    // An ip in no mapping: nothing to trust beyond it.
    assert_eq!(
        unwinder.unwind(pid, regs, &[0xff; 64], &mut processes),
        vec![RawFrame::InstructionPointer(Space::User, 0), truncated]
    );
    // sp at the very top of the address space: reads must not overflow.
    let here = garbage_input_gives_short_truncated_stacks as fn() as usize as u64;
    let top = UserRegs {
        ip: here,
        sp: u64::MAX - 3,
        bp: u64::MAX,
    };
    let frames = unwinder.unwind(pid, top, &[0xff; 64], &mut processes);
    assert_eq!(frames.last(), Some(&truncated), "{frames:?}");

    let mut state = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = vec![0u8; 16 << 10];
    for round in 0..2000 {
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&garbage(&mut state).to_le_bytes()[..chunk.len()]);
        }
        let len = (garbage(&mut state) % bytes.len() as u64) as usize;
        // Half the rounds start in real code, so framehop gets to run real rules on garbage.
        let ip = if round % 2 == 0 {
            here + garbage(&mut state) % 256
        } else {
            garbage(&mut state)
        };
        let sp = garbage(&mut state);
        let bp = match round % 3 {
            0 => sp.wrapping_add(garbage(&mut state) % 4096),
            1 => 0,
            _ => garbage(&mut state),
        };
        let regs = UserRegs { ip, sp, bp };
        let frames = unwinder.unwind(pid, regs, &bytes[..len], &mut processes);
        assert_eq!(frames[0], RawFrame::InstructionPointer(Space::User, ip));
        assert!(frames.len() <= MAX_UNWIND_DEPTH + 1);
        let gaps = frames
            .iter()
            .filter(|f| matches!(f, RawFrame::Gap(..)))
            .count();
        assert!(gaps == 0 || (gaps == 1 && frames.last() == Some(&truncated)));
    }
}

#[test]
fn a_new_mapping_rebuilds_the_process_state() {
    let pid = std::process::id();
    let mut processes = ProcessTable::new();
    let mut unwinder = Unwinder::new();
    let (captured, _) = level1(black_box(2));
    unwinder.unwind(pid, captured.regs, &captured.stack, &mut processes);
    assert_eq!(unwinder.processes[&pid].builds, 1);
    let modules = unwinder.processes[&pid].modules;
    assert!(modules >= 2, "our binary and libc at least");
    let generation = processes.mappings_generation(pid).unwrap();

    // Map the executable part of our own binary a second time, elsewhere.
    let exe = std::env::current_exe().unwrap();
    let file = elf::UnwindFile::read(std::fs::File::open(&exe).unwrap()).unwrap();
    let text = file.loads.iter().find(|l| l.executable).unwrap();
    let offset = text.offset & !0xfff;
    let fd = std::fs::File::open(&exe).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh private read+exec mapping of a file we opened; unmapped below.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            0x1000,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            fd.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    assert_ne!(address, libc::MAP_FAILED);
    let address = address as u64;
    assert!(!unwinder.processes[&pid].covers(address));

    // An ip in the new mapping is outside the snapshot: the unwinder re-reads
    // the mappings (due, as a while after the first read), gets a new
    // generation and rebuilds.
    processes.age_mappings(pid);
    let regs = UserRegs {
        ip: address + 0x10,
        ..captured.regs
    };
    unwinder.unwind(pid, regs, &captured.stack, &mut processes);
    let state = &unwinder.processes[&pid];
    assert!(processes.mappings_generation(pid).unwrap() > generation);
    assert_eq!(state.builds, 2);
    assert!(state.covers(address));
    assert_eq!(state.modules, modules + 1);

    // The same mappings again: no rebuild.
    unwinder.unwind(pid, captured.regs, &captured.stack, &mut processes);
    assert_eq!(unwinder.processes[&pid].builds, 2);

    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(address as *mut libc::c_void, 0x1000) };
    // Forgetting the process drops its state, not the per-file data.
    unwinder.forget(pid);
    assert!(unwinder.processes.is_empty());
    assert!(!unwinder.files.is_empty());
}

#[test]
fn the_unwinder_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<Unwinder>();
}

/// Our own mappings as sideband records: an exec at 100, our binary mapped
/// at 110, every other file (libc among them) at 200.
fn our_history(pid: u32, processes: &mut ProcessTable) -> MappingHistory {
    use crate::sampler::sideband::{CommRecord, FileIdentity, MmapRecord, SideRecord};
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let (_, views) = processes.mappings(pid).unwrap();
    let mut history = MappingHistory::new(crate::mappings::Scope::All);
    history.apply(SideRecord::Comm(CommRecord {
        pid,
        tid: pid,
        time_ns: 100,
        exec: true,
        comm: b"tests".as_slice().into(),
    }));
    for seed in crate::mappings::seeds_from_views(&views) {
        let ours = seed.path.as_ref() == exe.as_os_str().as_encoded_bytes();
        let no_file = FileIdentity::Inode {
            major: 0,
            minor: 0,
            inode: 0,
            generation: None,
        };
        history.apply(SideRecord::Mmap(MmapRecord {
            pid,
            tid: pid,
            time_ns: if ours { 110 } else { 200 },
            start: seed.start,
            len: seed.end - seed.start,
            pgoff: seed.pgoff,
            prot: 5,
            flags: 2,
            identity: seed.identity.unwrap_or(no_file),
            path: seed.path,
        }));
    }
    history
}

#[test]
fn samples_of_one_image_at_two_times_are_walked_in_their_own_mappings() {
    let pid = std::process::id();
    let mut processes = ProcessTable::new();
    let history = our_history(pid, &mut processes);
    let mut unwinder = Unwinder::new();
    let (captured, _) = level1(black_box(4));
    let (regs, stack) = (captured.regs, &captured.stack[..]);
    // At 150 only our binary was mapped: the walk stops where the thread
    // entered it from libc.
    let early = unwinder.unwind_at((pid, 150), regs, stack, &mut processes, &history);
    // At 300 libc is mapped too, though no record came between the two
    // samples: the state is rebuilt, and the walk goes on into libc.
    let late = unwinder.unwind_at((pid, 300), regs, stack, &mut processes, &history);
    assert_eq!(unwinder.processes[&pid].builds, 2);
    assert!(late.len() > early.len(), "early {early:?}\nlate {late:?}");
    let test = "samples_of_one_image_at_two_times_are_walked_in_their_own_mappings";
    assert_chain_in(&function_names(&late, &mut processes), test);
    // Again at 150: rebuilt to the early mappings.
    let again = unwinder.unwind_at((pid, 150), regs, stack, &mut processes, &history);
    assert_eq!(again, early);
}

#[test]
fn a_walk_that_ends_in_an_entry_point_reached_the_root() {
    let state = ProcessUnwinder {
        generation: None,
        unwinder: UnwinderX86_64::new(),
        code: std::iter::once(0x1000..0x2000).collect(),
        unwound: Vec::new(),
        entries: std::iter::once(0x1040..0x1040 + ENTRY_SPAN).collect(),
        last_refresh: None,
        modules: 0,
        builds: 0,
    };
    let ra = |a| RawFrame::ReturnAddress(Space::User, a);
    let ip = RawFrame::InstructionPointer(Space::User, 0x1500);
    // The dynamic loader's `_start` calls `_dl_start` 3 bytes in: it returns to +8.
    assert!(state.ends_at_entry(&[ip, ra(0x1500), ra(0x1048)]));
    // A return to the first byte after the span, or before the entry, is not the root.
    assert!(!state.ends_at_entry(&[ip, ra(0x1040 + ENTRY_SPAN + 1)]));
    assert!(!state.ends_at_entry(&[ip, ra(0x1040)]));
    // A sampled ip says nothing of the root once the entry's first call returned,
    assert!(!state.ends_at_entry(&[RawFrame::InstructionPointer(Space::User, 0x1048)]));
    // but before that call the thread has not left the entry point.
    let ip = |a| [RawFrame::InstructionPointer(Space::User, a)];
    assert!(state.ends_at_entry(&ip(0x1040)));
    assert!(state.ends_at_entry(&ip(0x1043)));
    assert!(!state.ends_at_entry(&ip(0x103f)));
    assert!(!state.ends_at_entry(&ip(0x1040 + ENTRY_BEFORE_CALL)));
}

/// JIT code (here all of 0x1000..0x2000, in no module with unwind
/// information) is walked by its frame pointers, each caller checked: the
/// walk ends, marked truncated, where a return address leads out of code.
#[test]
fn code_without_unwind_information_is_walked_by_its_frame_pointers() {
    const SP: u64 = 0x7ffd_0000_0000;
    let state = ProcessUnwinder {
        generation: Some(Built::Proc(1)),
        unwinder: UnwinderX86_64::new(),
        code: std::iter::once(0x1000..0x2000).collect(),
        unwound: Vec::new(),
        entries: Vec::new(),
        last_refresh: None,
        modules: 0,
        builds: 0,
    };
    let mut words = [0u64; 12];
    // The sampled frame: bp at +0x10 -> [caller's bp][return into B].
    words[2] = SP + 0x30;
    words[3] = 0x1800;
    // B: bp at +0x30 -> [C's bp][return into C].
    words[6] = SP + 0x50;
    words[7] = 0x1900;
    // C: its frame pointer leads to a return address outside any code.
    words[10] = SP + 0x58;
    words[11] = 0x7000;
    let stack: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let regs = UserRegs {
        ip: 0x1100,
        sp: SP,
        bp: SP + 0x10,
    };
    let mut frames = Vec::new();
    let mut cache = CacheX86_64::new();
    walk(&state, &mut cache, regs, &stack, &mut frames);
    let ra = |a| RawFrame::ReturnAddress(Space::User, a);
    assert_eq!(
        frames,
        [
            RawFrame::InstructionPointer(Space::User, 0x1100),
            ra(0x1800),
            ra(0x1900),
            RawFrame::Gap(Space::User, Gap::Truncated),
        ]
    );
}
