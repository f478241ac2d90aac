//! One binary, one spec: read the ELF and DWARF, find the function, plan the capture, find where
//! a Go function's body starts and its RET instructions, and turn addresses into the file offsets
//! uprobes attach at. Blocking and
//! CPU-bound (indexing a large binary's DWARF takes a while): run it on a blocking thread.
use std::path::{Path, PathBuf};

use sonde_api::DynamicLogSpec;
use sonde_common::dynlog::{Plan, plan_flags, source};

use super::binary::{Binary, BinaryError};
use super::dwarf::{Dwarf, DwarfError, Language, in_callers, plural};
use super::plan::{self, PlanError, Planned};
use super::prologue::{body_start, pt_regs_word};
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
    /// C, C++, Rust: a uretprobe at the function's first instruction (a file offset); it also sees
    /// returns of tail-calling functions.
    Uretprobe(u64),
}

/// What a probe needs to attach to one binary.
#[derive(Clone, Debug)]
pub struct Analysis {
    pub planned: Planned,
    /// Where the entry probe goes: the first instruction, or for Go the first one after the stack
    /// check (see [`super::prologue`]).
    pub entry_offset: u64,
    pub returns: Returns,
}

/// Reads the binary at `path` (`root`: where its separate debug file may be) and analyses it.
pub fn analyze(path: &Path, root: &Path, spec: &DynamicLogSpec) -> Result<Analysis, AnalysisError> {
    analyze_binary(&Binary::read(path, root)?, spec)
}

/// Analyses a binary already read (the agent reads the file a process runs, see
/// [`super::running`]).
pub fn analyze_binary(binary: &Binary, spec: &DynamicLogSpec) -> Result<Analysis, AnalysisError> {
    let mut dwarf = Dwarf::load(binary)?;
    let entry = dwarf.find(&spec.function)?;
    let function = dwarf.function(&entry)?;
    let mut planned = plan::plan(binary, &mut dwarf, &function, spec)?;
    if let Some((sites, callers)) = dwarf.inlined(&entry) {
        planned.notes.push(format!(
            "{} is also inlined at {}{}: calls there are not traced, rows come only from calls of its out-of-line copy ({} to see every call)",
            function.name,
            plural(sites, "call site"),
            in_callers(&callers),
            match function.language {
                Language::Go => "mark it //go:noinline",
                Language::Rust => "mark it #[inline(never)]",
                _ => "build with -fno-inline or mark it __attribute__((noinline))",
            }
        ));
    }
    let first_offset = binary.file_offset(function.low_pc, &function.name)?;
    let size = function.high_pc.saturating_sub(function.low_pc);
    let entry_offset = if planned.go {
        let code = binary.code(function.low_pc, size, &function.name)?;
        let read = registers_read(&planned.entry);
        match body_start(code, function.low_pc, |r| {
            pt_regs_word(r).is_some_and(|w| !read.contains(&w))
        }) {
            Some(body) => binary.file_offset(body, &function.name)?,
            None => first_offset,
        }
    } else {
        first_offset
    };
    let returns = if planned.ret.is_none() {
        Returns::None
    } else if !planned.go {
        Returns::Uretprobe(first_offset)
    } else {
        let mut ret_offsets = Vec::new();
        let code = binary.code(function.low_pc, size, &function.name)?;
        for address in find_rets(code, function.low_pc) {
            ret_offsets.push(binary.file_offset(address, &function.name)?);
        }
        if ret_offsets.is_empty() {
            return Err(AnalysisError::NoReturn {
                function: function.name,
                path: binary.path.clone(),
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

/// The `pt_regs` words a plan reads: its register locations and, for Go, the `g` register.
fn registers_read(plan: &Plan) -> Vec<u8> {
    let slots = plan.slots.iter().take(plan.n_slots as usize);
    let mut read: Vec<u8> = slots
        .flat_map(|s| [s.ptr, s.len])
        .filter(|loc| loc.source == source::REG)
        .map(|loc| loc.reg)
        .collect();
    if plan.flags & plan_flags::GO != 0 {
        read.push(plan.g_reg as u8);
    }
    read
}
