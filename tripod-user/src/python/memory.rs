//! Reading a running process's memory, without stopping it.
use std::io;

/// Memory of one process, read by address. A trait so the readers of code
/// objects and values can be tested on bytes laid out by hand.
pub trait Memory {
    /// Fills `buffer` from `address`; fails if any byte is unreadable.
    fn read(&self, address: u64, buffer: &mut [u8]) -> io::Result<()>;

    fn read_u64(&self, address: u64) -> io::Result<u64> {
        let mut bytes = [0; 8];
        self.read(address, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// `len` bytes from `address`.
    fn read_vec(&self, address: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; len];
        self.read(address, &mut bytes)?;
        Ok(bytes)
    }
}

/// Little-endian fields of a struct read as bytes.
pub fn u64_at(bytes: &[u8], offset: u32) -> u64 {
    let at = offset as usize;
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0)
}

pub fn i32_at(bytes: &[u8], offset: u32) -> i32 {
    let at = offset as usize;
    bytes
        .get(at..at + 4)
        .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
        .unwrap_or(0)
}

/// A live process, read with `process_vm_readv` (needs the right to ptrace
/// it, which root has; the process is not stopped).
#[derive(Clone, Copy, Debug)]
pub struct ProcessMemory {
    pub pid: u32,
}

impl Memory for ProcessMemory {
    fn read(&self, address: u64, buffer: &mut [u8]) -> io::Result<()> {
        let local = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        let remote = libc::iovec {
            iov_base: address as *mut libc::c_void,
            iov_len: buffer.len(),
        };
        // SAFETY: `local` describes `buffer`, which outlives the call; the
        // remote address is only read by the kernel, which checks it.
        let read = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        if read < 0 {
            return Err(io::Error::last_os_error());
        }
        if read as usize != buffer.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read at {address:#x}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod fake {
    //! A process image built by hand: regions of bytes at addresses.
    use super::*;

    #[derive(Default)]
    pub struct FakeMemory {
        regions: Vec<(u64, Vec<u8>)>,
    }

    impl FakeMemory {
        pub fn put(&mut self, address: u64, bytes: Vec<u8>) {
            self.regions.push((address, bytes));
        }
    }

    impl Memory for FakeMemory {
        fn read(&self, address: u64, buffer: &mut [u8]) -> io::Result<()> {
            for (start, bytes) in &self.regions {
                let end = start + bytes.len() as u64;
                if address >= *start && address + buffer.len() as u64 <= end {
                    let at = (address - start) as usize;
                    buffer.copy_from_slice(&bytes[at..at + buffer.len()]);
                    return Ok(());
                }
            }
            Err(io::Error::from(io::ErrorKind::InvalidInput))
        }
    }

    #[test]
    fn reads_inside_regions_only() {
        let mut memory = FakeMemory::default();
        memory.put(0x1000, 7u64.to_le_bytes().to_vec());
        assert_eq!(memory.read_u64(0x1000).unwrap(), 7);
        assert!(memory.read_u64(0x1001).is_err());
    }

    #[test]
    fn our_own_memory_reads_back() {
        let value: u64 = 0x1234_5678_9abc_def0;
        let memory = ProcessMemory {
            pid: std::process::id(),
        };
        let address = &value as *const u64 as u64;
        assert_eq!(memory.read_u64(address).unwrap(), value);
    }
}
