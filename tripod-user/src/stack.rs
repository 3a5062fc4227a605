//! Stacks as sampled: addresses only, typed by what they mean.
//!
//! The first address of a stack is where the thread was (an instruction
//! pointer); every later one is a return address, which points just past the
//! call. Symbolizing a return address as-is can name the wrong function or
//! line (the call may be the last instruction of a function), so lookups use
//! `address - 1`, as samply and framehop do.

/// User space or kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    User,
    Kernel,
}

/// Why part of a stack is missing. Kept as data so the sample is not dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Gap {
    /// `bpf_get_stackid` failed with this errno (positive; see
    /// [`tripod_common::errno`]).
    Failed(i32),
    /// The stack id was valid when sampled but gone from the map when read.
    Vanished,
    /// The stack hit the kernel's depth limit; outer frames are cut off.
    Truncated,
    /// The record carrying the stack was dropped: the ring buffer was full.
    Dropped,
    /// The interpreter's memory could not be read (or did not hold what
    /// its version's layout says) past this point of the Python frames.
    PythonUnreadable,
    /// The Python frame chain led back into itself here.
    PythonLoop,
}

/// One entry of a sampled stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RawFrame {
    /// Where the thread was executing.
    InstructionPointer(Space, u64),
    /// Where a call will return to; look it up at `address - 1`.
    ReturnAddress(Space, u64),
    /// Frames that could not be collected; see [`Gap`].
    Gap(Space, Gap),
    /// A Python frame (user space), by its id in [`crate::python::Python`]'s frame table.
    Python(u32),
}

impl RawFrame {
    pub fn space(&self) -> Space {
        match *self {
            RawFrame::InstructionPointer(space, _)
            | RawFrame::ReturnAddress(space, _)
            | RawFrame::Gap(space, _) => space,
            RawFrame::Python(_) => Space::User,
        }
    }

    /// The address as sampled, if this is a real frame.
    pub fn address(&self) -> Option<u64> {
        match *self {
            RawFrame::InstructionPointer(_, a) | RawFrame::ReturnAddress(_, a) => Some(a),
            RawFrame::Gap(..) | RawFrame::Python(_) => None,
        }
    }

    /// The address to symbolize: inside the call instruction for return addresses.
    pub fn lookup_address(&self) -> Option<u64> {
        match *self {
            RawFrame::InstructionPointer(_, a) => Some(a),
            RawFrame::ReturnAddress(_, a) => Some(a.saturating_sub(1)),
            RawFrame::Gap(..) | RawFrame::Python(_) => None,
        }
    }
}

impl StackRead {
    /// Frames it holds (gaps and markers aside).
    fn len(&self) -> usize {
        match self {
            StackRead::Addresses(addresses) => addresses.len(),
            StackRead::Unwound(frames) => frames.len(),
            StackRead::NotCollected | StackRead::Missing(_) => 0,
        }
    }
}

/// One half of a sampled stack, as the kernel gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StackRead {
    /// Addresses, innermost first.
    Addresses(Vec<u64>),
    /// Not asked for (`--user-only` / `--kernel-only`).
    NotCollected,
    /// Could not be collected.
    Missing(Gap),
    /// Already unwound in userspace: typed frames, innermost first.
    Unwound(Vec<RawFrame>),
}

/// Turns the halves of a sample into frames, innermost first: kernel frames,
/// then user frames. `max_depth` is the depth at which a stack counts as cut off.
/// Runs for every sample: one allocation, sized up front.
pub fn combine(kernel: StackRead, user: StackRead, max_depth: usize) -> Vec<RawFrame> {
    let mut frames = Vec::with_capacity(kernel.len() + user.len() + 2);
    for (space, read) in [(Space::Kernel, kernel), (Space::User, user)] {
        match read {
            StackRead::NotCollected => {}
            StackRead::Missing(gap) => frames.push(RawFrame::Gap(space, gap)),
            StackRead::Unwound(unwound) => frames.extend(unwound),
            StackRead::Addresses(addresses) => {
                for (i, &address) in addresses.iter().enumerate() {
                    frames.push(if i == 0 {
                        RawFrame::InstructionPointer(space, address)
                    } else {
                        RawFrame::ReturnAddress(space, address)
                    });
                }
                if addresses.len() >= max_depth {
                    frames.push(RawFrame::Gap(space, Gap::Truncated));
                }
            }
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use tripod_common::errno::EEXIST;

    use super::*;

    #[test]
    fn first_frame_is_ip_then_return_addresses_kernel_first() {
        let frames = combine(
            StackRead::Addresses(vec![0xffff_0010, 0xffff_0020]),
            StackRead::Addresses(vec![0x1000, 0x2000]),
            127,
        );
        assert_eq!(
            frames,
            vec![
                RawFrame::InstructionPointer(Space::Kernel, 0xffff_0010),
                RawFrame::ReturnAddress(Space::Kernel, 0xffff_0020),
                RawFrame::InstructionPointer(Space::User, 0x1000),
                RawFrame::ReturnAddress(Space::User, 0x2000),
            ]
        );
        assert_eq!(frames[3].lookup_address(), Some(0x1fff));
        assert_eq!(frames[2].lookup_address(), Some(0x1000));
    }

    #[test]
    fn gaps_are_kept_and_full_depth_is_truncated() {
        let frames = combine(
            StackRead::Missing(Gap::Failed(EEXIST)),
            StackRead::Addresses(vec![1, 2, 3]),
            3,
        );
        assert_eq!(frames[0], RawFrame::Gap(Space::Kernel, Gap::Failed(EEXIST)));
        assert_eq!(frames[4], RawFrame::Gap(Space::User, Gap::Truncated));
        assert_eq!(
            combine(StackRead::NotCollected, StackRead::NotCollected, 3),
            vec![]
        );
    }
}
