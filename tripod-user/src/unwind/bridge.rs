//! One step over a frame of code that has no unwind information: code a
//! runtime compiled (V8's functions, CPython's `-X perf` trampolines, a
//! JVM's methods), in anonymous executable memory. framehop knows no module
//! there, so the walk steps over such a frame here and goes back to DWARF
//! in the caller, if the caller's module has unwind information.
//!
//! Two ways to find the caller, each checked before it is believed (a
//! wrong step would make up frames, which is worse than a `[truncated]`):
//! 1. **Frame pointer.** `[bp]` is the caller's frame pointer and `[bp+8]`
//!    the return address, as V8 and the JVM keep them. Believed when `bp`
//!    lies in the copied stack at or above `sp`, 8-byte aligned.
//! 2. **Scan.** Short code that sets up no frame pointer (CPython 3.12's
//!    trampoline is `sub $8,%rsp; call *%rcx`) leaves the return address a
//!    few words above `sp`: the first of [`SCAN_WORDS`] words that the
//!    caller accepts as a return address is taken, with `bp` unchanged (the
//!    code did not touch it).
//!
//! "Accepts" is the walk's `plausible`: the return address is in code, and
//! unwinding on from it makes sense (see [`super::walk`]). All reads are of
//! the copied stack; nothing of the target is read here.

/// Words above `sp` searched for a return address when the frame pointer
/// does not lead to one.
pub const SCAN_WORDS: u64 = 4;

/// What a step needs of the registers: where the frame is and its pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    /// The frame's address: where it runs, or the return address into it.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// The copied user stack: the bytes at `sp`, `sp + 1`, ...
#[derive(Clone, Copy)]
pub struct Stack<'a> {
    pub sp: u64,
    pub bytes: &'a [u8],
}

impl Stack<'_> {
    /// The 8 bytes at `address`, if they were copied.
    pub fn read(&self, address: u64) -> Option<u64> {
        let start = usize::try_from(address.checked_sub(self.sp)?).ok()?;
        let bytes = self.bytes.get(start..start.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    /// The first address past the copy.
    pub fn end(&self) -> u64 {
        self.sp.saturating_add(self.bytes.len() as u64)
    }

    /// Whether `address` is a frame pointer that can lead on: aligned, in
    /// the copy, at or above `sp`.
    pub fn holds_frame(&self, address: u64, sp: u64) -> bool {
        address.is_multiple_of(8) && address >= sp && address.saturating_add(16) <= self.end()
    }
}

/// The caller of the frame at `regs` (whose code has no unwind
/// information), as the registers it would see after the return: `ip` its
/// return address. `None` if neither way finds one that `plausible` accepts.
pub fn step(regs: Regs, stack: Stack<'_>, mut plausible: impl FnMut(Regs) -> bool) -> Option<Regs> {
    if stack.holds_frame(regs.bp, regs.sp) {
        let caller = Regs {
            ip: stack.read(regs.bp + 8)?,
            sp: regs.bp + 16,
            bp: stack.read(regs.bp)?,
        };
        if plausible(caller) {
            return Some(caller);
        }
    }
    (0..SCAN_WORDS).find_map(|word| {
        let slot = regs.sp.checked_add(word * 8)?;
        let caller = Regs {
            ip: stack.read(slot)?,
            sp: slot + 8,
            bp: regs.bp,
        };
        plausible(caller).then_some(caller)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: u64 = 0x7ffd_0000_1000;

    /// Stack bytes from words, the first at [`SP`].
    fn bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Code lies at 0x1000..0x2000; a return address is plausible if there.
    fn in_code(regs: Regs) -> bool {
        (0x1001..=0x2000).contains(&regs.ip)
    }

    #[test]
    fn a_frame_pointer_into_the_stack_leads_to_the_caller() {
        // A JIT frame: locals, then [saved bp][return address] at bp.
        let words = [0xdead, 0xbeef, SP + 0x30, 0x1234, 0, 0, 0, 0];
        let stack = Stack {
            sp: SP,
            bytes: &bytes(&words),
        };
        let regs = Regs {
            ip: 0x9999_0000,
            sp: SP,
            bp: SP + 0x10,
        };
        assert_eq!(
            step(regs, stack, in_code),
            Some(Regs {
                ip: 0x1234,
                sp: SP + 0x20,
                bp: SP + 0x30
            })
        );
    }

    #[test]
    fn without_a_frame_pointer_the_return_address_is_found_above_sp() {
        // CPython 3.12's trampoline: `sub $8,%rsp; call`: one word of
        // padding (stale, not code), then the return address.
        let words = [0x5555_0000, 0x1800, 0x4444];
        let stack = Stack {
            sp: SP,
            bytes: &bytes(&words),
        };
        // bp is the caller's, a general-purpose value: not in the stack.
        let regs = Regs {
            ip: 0x9999_0000,
            sp: SP,
            bp: 0x5555_1234,
        };
        assert_eq!(
            step(regs, stack, in_code),
            Some(Regs {
                ip: 0x1800,
                sp: SP + 16,
                bp: 0x5555_1234
            })
        );
    }

    #[test]
    fn a_frame_pointer_to_garbage_falls_back_to_the_scan() {
        // bp points into the stack, but at no return address.
        let words = [0x1100, 0, 0x77, 0x88];
        let stack = Stack {
            sp: SP,
            bytes: &bytes(&words),
        };
        let regs = Regs {
            ip: 0x9999_0000,
            sp: SP,
            bp: SP + 16,
        };
        assert_eq!(
            step(regs, stack, in_code).map(|r| (r.ip, r.sp)),
            Some((0x1100, SP + 8))
        );
    }

    #[test]
    fn nothing_plausible_is_no_step() {
        let words = [1, 2, 3, 4, 0x1500];
        let stack = Stack {
            sp: SP,
            bytes: &bytes(&words),
        };
        let regs = Regs {
            ip: 0x9999_0000,
            sp: SP,
            bp: 0,
        };
        // The return address at the fifth word is past the scan.
        assert_eq!(step(regs, stack, in_code), None);
        // A frame pointer below sp, misaligned, or past the copy is not followed.
        for bp in [SP - 16, SP + 3, SP + 32] {
            let regs = Regs { bp, ..regs };
            assert_eq!(step(regs, stack, |r| r.ip == 0x1500), None, "{bp:#x}");
        }
        // A copy too short for the words is no step either.
        let short = Stack {
            sp: SP,
            bytes: &[1, 2, 3],
        };
        assert_eq!(step(regs, short, |_| true), None);
    }

    #[test]
    fn stack_reads_stay_in_the_copy() {
        let data = bytes(&[7, 8]);
        let stack = Stack {
            sp: SP,
            bytes: &data,
        };
        assert_eq!(stack.read(SP + 8), Some(8));
        assert_eq!(stack.read(SP + 9), None);
        assert_eq!(stack.read(SP - 8), None);
        assert_eq!(stack.read(u64::MAX - 2), None);
        assert!(stack.holds_frame(SP, SP));
        assert!(!stack.holds_frame(SP + 8, SP));
    }
}
