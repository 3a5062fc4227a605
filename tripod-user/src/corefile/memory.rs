//! A core's memory as the Python readers see a process's
//! ([`crate::python::Memory`]): the dumped segments, and where the core did
//! not dump a mapping of a file (read-only data, which gdb and the kernel
//! leave out), the file itself, if it is still the one mapped.
use std::{fs::File, io, os::unix::fs::FileExt as _, sync::Arc};

use super::{same_head, Core};

/// A file mapping whose bytes are read from the file.
struct FileRange {
    start: u64,
    end: u64,
    file_offset: u64,
    file: Arc<File>,
}

/// The memory of the process a core was dumped from.
pub struct CoreMemory {
    core: Arc<Core>,
    files: Vec<FileRange>,
}

impl CoreMemory {
    /// The core's memory, its file mappings read from the files `open`
    /// finds for their paths (as the core names them), each checked against
    /// the start of it the core holds; files not found or changed are left
    /// out, their mappings unreadable.
    pub fn new(core: Arc<Core>, open: impl Fn(&[u8]) -> Option<File>) -> CoreMemory {
        let mut opened: Vec<(&[u8], Option<Arc<File>>)> = Vec::new();
        let mut files = Vec::new();
        for mapping in &core.files {
            let known = opened.iter().find(|(path, _)| *path == mapping.path);
            let file = match known {
                Some((_, file)) => file.clone(),
                None => {
                    let head = core.file_head(&mapping.path);
                    let file = open(&mapping.path)
                        .filter(|file| head.is_empty() || same_head(file, &head))
                        .map(Arc::new);
                    opened.push((&mapping.path, file.clone()));
                    file
                }
            };
            if let Some(file) = file {
                files.push(FileRange {
                    start: mapping.start,
                    end: mapping.end,
                    file_offset: mapping.file_offset,
                    file,
                });
            }
        }
        CoreMemory { core, files }
    }

    /// Up to `buffer.len()` bytes at `address` from a file mapping; how many.
    fn read_file(&self, address: u64, buffer: &mut [u8]) -> usize {
        let Some(range) = self
            .files
            .iter()
            .find(|r| r.start <= address && address < r.end)
        else {
            return 0;
        };
        let len = (range.end - address).min(buffer.len() as u64) as usize;
        let offset = range.file_offset + (address - range.start);
        range.file.read_at(&mut buffer[..len], offset).unwrap_or(0)
    }
}

impl crate::python::Memory for CoreMemory {
    fn read(&self, address: u64, buffer: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buffer.len() {
            let at = address.wrapping_add(done as u64);
            let wanted = (buffer.len() - done) as u64;
            let dumped = self.core.read_memory(at, wanted);
            let read = if dumped.is_empty() {
                self.read_file(at, &mut buffer[done..])
            } else {
                buffer[done..done + dumped.len()].copy_from_slice(&dumped);
                dumped.len()
            };
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{at:#x} is not in the core or its files"),
                ));
            }
            done += read;
        }
        Ok(())
    }
}
