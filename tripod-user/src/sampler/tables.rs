//! `--unwind tables`: the compiled rows of each file loaded once into the
//! kernel's `UNWIND_ROWS` array, and each process's mappings pointed at
//! them in `UNWIND_PROCESSES`. The array's size is the memory bound
//! (`--unwind-table-size`); a file that does not fit is left out, and its
//! frames are unwound by copying.
use std::collections::HashMap as StdHashMap;

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData},
    Ebpf,
};
use tripod_common::{names, UnwindMapping, UnwindProcess, MAX_UNWIND_MAPPINGS};

use crate::model::{TableMapping, TableUse};

/// Where each file's rows are in `UNWIND_ROWS`, and how full it is.
#[derive(Debug)]
pub struct TableStore {
    capacity: u32,
    next_row: u32,
    /// By file id: its first row and row count, or `None`: it did not fit.
    files: StdHashMap<usize, Option<(u32, u32)>>,
    usage: TableUse,
}

impl TableStore {
    pub fn new(capacity: u32) -> Self {
        TableStore {
            capacity,
            next_row: 0,
            files: StdHashMap::new(),
            usage: TableUse {
                capacity_rows: u64::from(capacity),
                ..TableUse::default()
            },
        }
    }

    pub fn usage(&self) -> TableUse {
        self.usage
    }

    /// Points process `pid` at the rows of its mappings, loading the rows
    /// of files not loaded yet.
    pub fn set_process(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        mappings: &[TableMapping],
    ) -> Result<()> {
        let mut process = UnwindProcess {
            len: 0,
            _reserved: 0,
            mappings: [UnwindMapping {
                start: 0,
                end: 0,
                bias: 0,
                rows_start: 0,
                rows_len: 0,
            }; MAX_UNWIND_MAPPINGS],
        };
        for mapping in mappings {
            let Some((rows_start, rows_len)) = self.load_file(ebpf, mapping)? else {
                continue;
            };
            if process.len as usize == MAX_UNWIND_MAPPINGS {
                self.usage.processes_with_too_many_mappings += 1;
                break;
            }
            process.mappings[process.len as usize] = UnwindMapping {
                start: mapping.start,
                end: mapping.end,
                bias: mapping.bias,
                rows_start,
                rows_len,
            };
            process.len += 1;
        }
        let mut processes: HashMap<&mut MapData, u32, UnwindProcess> =
            HashMap::try_from(map(ebpf, names::UNWIND_PROCESSES)?)?;
        processes
            .insert(pid, process, 0)
            .with_context(|| format!("adding the unwind tables of pid {pid}"))
    }

    /// The rows of `mapping`'s file in `UNWIND_ROWS`, loaded now if they
    /// were not; `None` when they do not fit.
    fn load_file(&mut self, ebpf: &mut Ebpf, mapping: &TableMapping) -> Result<Option<(u32, u32)>> {
        if let Some(&loaded) = self.files.get(&mapping.file) {
            return Ok(loaded);
        }
        let len = mapping.rows.len() as u64;
        if u64::from(self.next_row) + len > u64::from(self.capacity) {
            self.usage.files_over_bound += 1;
            self.files.insert(mapping.file, None);
            return Ok(None);
        }
        let start = self.next_row;
        let mut rows: Array<&mut MapData, tripod_common::UnwindRow> =
            Array::try_from(map(ebpf, names::UNWIND_ROWS)?)?;
        for (i, row) in mapping.rows.iter().enumerate() {
            rows.set(start + i as u32, row, 0)
                .context("writing unwind rows")?;
        }
        self.next_row += len as u32;
        self.usage.files += 1;
        self.usage.rows += len;
        let loaded = Some((start, len as u32));
        self.files.insert(mapping.file, loaded);
        Ok(loaded)
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("the eBPF object has no map {name}"))
}
