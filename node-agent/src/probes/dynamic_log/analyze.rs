//! One binary, one spec: read the ELF and DWARF, find the function, plan the capture, find the
//! RET instructions, and turn addresses into the file offsets uprobes attach at. Blocking and
//! CPU-bound (indexing a large binary's DWARF takes a while): run it on a blocking thread.
use std::path::{Path, PathBuf};

use sonde_api::DynamicLogSpec;

use super::binary::{Binary, BinaryError};
use super::dwarf::{Dwarf, DwarfError};
use super::plan::{self, PlanError, Planned};
use super::rets::find_rets;

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Binary(#[from] BinaryError),
    #[error(transparent)]
    Dwarf(#[from] DwarfError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "function {function} in {path} has no RET instruction (it ends in a tail call or never returns); \
         returns and latency cannot be captured there: capture arguments only (capture.returns empty, latency false)"
    )]
    NoReturn { function: String, path: PathBuf },
}

/// Where returns are caught.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Returns {
    /// Not needed (no results, no latency).
    None,
    /// Go: a uprobe on every RET instruction (file offsets).
    Rets(Vec<u64>),
    /// C, C++, Rust: a uretprobe at the entry; it also sees returns of tail-calling functions.
    Uretprobe,
}

/// What a probe needs to attach to one binary.
#[derive(Clone, Debug)]
pub struct Analysis {
    pub planned: Planned,
    pub entry_offset: u64,
    pub returns: Returns,
}

pub fn analyze(path: &Path, root: &Path, spec: &DynamicLogSpec) -> Result<Analysis, AnalysisError> {
    let binary = Binary::read(path, root)?;
    let mut dwarf = Dwarf::load(&binary)?;
    let entry = dwarf.find(&spec.function)?;
    let function = dwarf.function(&entry)?;
    let planned = plan::plan(&binary, &mut dwarf, &function, spec)?;
    let entry_offset = binary.file_offset(function.low_pc, &function.name)?;
    let returns = if planned.ret.is_none() {
        Returns::None
    } else if !planned.go {
        Returns::Uretprobe
    } else {
        let mut ret_offsets = Vec::new();
        let size = function.high_pc.saturating_sub(function.low_pc);
        let code = binary.code(function.low_pc, size, &function.name)?;
        for address in find_rets(code, function.low_pc) {
            ret_offsets.push(binary.file_offset(address, &function.name)?);
        }
        if ret_offsets.is_empty() {
            return Err(AnalysisError::NoReturn {
                function: function.name,
                path: path.to_owned(),
            });
        }
        Returns::Rets(ret_offsets)
    };
    Ok(Analysis {
        planned,
        entry_offset,
        returns,
    })
}
