//! Addresses → frames, with blazesym (ELF symbol tables, DWARF line info and inlined functions, Rust
//! and C++ demangling; Go symbols are readable as they are) and the kernel's kallsyms.
//!
//! - Binaries are opened through `/proc/<pid>/map_files/…` (or `/proc/<pid>/root/<path>`) when a
//!   process is first seen and kept open, so samples of a process that exited during the period still
//!   symbolize; blazesym reads them as `/proc/self/fd/<n>`.
//! - Binaries are cached per build id (the same image in two containers is parsed once), else per
//!   device and inode; frames per (binary, file offset).
//! - Frames: `function (file:line)` when DWARF has the line, `function` otherwise, `module+0xoffset`
//!   when the binary has no symbol there, `[k] function` for the kernel.
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use blazesym::MaybeDefault;
use blazesym::symbolize::source::{Elf, Kernel, Source};
use blazesym::symbolize::{CodeInfo, Input, Sym, Symbolized, Symbolizer as Blaze};

use super::maps::{Mapping, ProcessMaps};

pub use sonde_profile::frames::{KERNEL_PREFIX, function_name};
/// Root frame added to user stacks whose walk stopped before a thread entry point: frame pointers
/// are missing somewhere on the stack (unwinding without them is not implemented yet).
pub const TRUNCATED_FRAME: &str = "[truncated: no frame pointers]";
/// Frame standing for a user stack the kernel could not store (see the dropped-samples metric).
pub const LOST_USER_STACK_FRAME: &str = "[lost user stack]";

/// Functions where a complete user stack starts (process and thread entry points of glibc, musl
/// and the Go runtime, and Go's stack switches). A walk that ends elsewhere lost its way.
const ENTRY_POINTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "__libc_start_main_impl",
    "libc_start_main_stage2",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "runtime.goexit",
    "runtime.goexit.abi0",
    "runtime.mstart",
    "runtime.mstart.abi0",
    "runtime.rt0_go",
    "runtime.rt0_go.abi0",
    // Go switches stacks here (g0, signal stacks): the goroutine's frames are on another stack.
    "runtime.mcall",
    "runtime.systemstack",
    "runtime.systemstack.abi0",
    "runtime.morestack",
    "runtime.morestack.abi0",
    "runtime.sigtramp",
    "runtime.asmcgocall",
    "runtime.asmcgocall.abi0",
    "start_task",
];

/// Most cached frames before the cache is emptied (bounds memory on hosts with huge binaries).
const MAX_CACHED_FRAMES: usize = 200_000;
/// Most open binaries before every cache is dropped and rebuilt.
const MAX_BINARIES: usize = 1024;

/// Identity of a binary: its build id (hex) or, without one, `dev:inode`.
type BinaryId = String;

struct Binary {
    /// Kept open so blazesym can read it after the process (and its mount namespace) is gone.
    file: File,
}

impl Binary {
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// A process's mappings, each with the binary it maps (None when it could not be opened).
struct ProcessEntry {
    maps: Vec<(Mapping, Option<BinaryId>)>,
}

/// Symbolizes stacks of many processes; owned by the profiler's drain thread.
pub struct Symbolizer {
    blaze: Blaze,
    binaries: HashMap<BinaryId, Binary>,
    by_inode: HashMap<(u64, u64), BinaryId>,
    processes: HashMap<u32, ProcessEntry>,
    user_frames: HashMap<(BinaryId, u64), Vec<String>>,
    kernel_frames: HashMap<u64, String>,
}

/// A symbolized user stack, root first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserStack {
    pub frames: Vec<String>,
    /// The frame-pointer walk ended before a process or thread entry point.
    pub truncated: bool,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

impl Symbolizer {
    pub fn new() -> Symbolizer {
        Symbolizer {
            blaze: Blaze::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
            binaries: HashMap::new(),
            by_inode: HashMap::new(),
            processes: HashMap::new(),
            user_frames: HashMap::new(),
            kernel_frames: HashMap::new(),
        }
    }

    /// Whether `pid`'s mappings are known.
    pub fn knows(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Snapshots `pid`'s mappings and opens its binaries; false when the process is gone (an
    /// earlier snapshot, if any, is kept).
    pub fn observe(&mut self, pid: u32) -> bool {
        let Some(maps) = ProcessMaps::read(pid) else {
            return false;
        };
        if self.binaries.len() > MAX_BINARIES {
            self.reset();
        }
        let maps = maps
            .mappings
            .into_iter()
            .map(|m| {
                let id = self.open_binary(pid, &m);
                (m, id)
            })
            .collect();
        self.processes.insert(pid, ProcessEntry { maps });
        true
    }

    /// Drops the mappings of processes not in `keep` (called once their samples were symbolized).
    pub fn forget_except(&mut self, keep: impl Fn(u32) -> bool) {
        self.processes.retain(|pid, _| keep(*pid));
        if self.user_frames.len() > MAX_CACHED_FRAMES {
            self.user_frames.clear();
        }
        if self.kernel_frames.len() > MAX_CACHED_FRAMES {
            self.kernel_frames.clear();
        }
    }

    fn reset(&mut self) {
        self.blaze = Symbolizer::new().blaze;
        self.binaries.clear();
        self.by_inode.clear();
        self.user_frames.clear();
        for entry in self.processes.values_mut() {
            for (_, id) in &mut entry.maps {
                *id = None;
            }
        }
    }

    fn open_binary(&mut self, pid: u32, mapping: &Mapping) -> Option<BinaryId> {
        let rel = mapping.path.strip_prefix("/").unwrap_or(&mapping.path);
        let file = File::open(mapping.map_file(pid))
            .or_else(|_| File::open(PathBuf::from(format!("/proc/{pid}/root")).join(rel)))
            .ok()?;
        let meta = file.metadata().ok()?;
        let inode = (meta.dev(), meta.ino());
        if let Some(id) = self.by_inode.get(&inode) {
            return Some(id.clone());
        }
        let binary = Binary { file };
        let id = match blazesym::helper::read_elf_build_id(&binary.path()) {
            Ok(Some(build_id)) => build_id.iter().map(|b| format!("{b:02x}")).collect(),
            _ => format!("{}:{}", inode.0, inode.1),
        };
        self.by_inode.insert(inode, id.clone());
        self.binaries.entry(id.clone()).or_insert(binary);
        Some(id)
    }

    /// Symbolizes a user stack given leaf first (as the kernel stores it); returns it root first.
    pub fn user_stack(&mut self, pid: u32, addrs: &[u64]) -> UserStack {
        let mut leaf_first: Vec<String> = Vec::with_capacity(addrs.len());
        for (i, &addr) in addrs.iter().enumerate() {
            // Above the leaf, addresses are return addresses: the call is the instruction before.
            let lookup = if i == 0 { addr } else { addr.saturating_sub(1) };
            leaf_first.extend(self.user_frame(pid, lookup));
        }
        let truncated = leaf_first
            .last()
            .is_none_or(|root| !ENTRY_POINTS.contains(&function_name(root)));
        leaf_first.reverse();
        UserStack {
            frames: leaf_first,
            truncated,
        }
    }

    /// Frames of one address, innermost (inlined) first.
    fn user_frame(&mut self, pid: u32, addr: u64) -> Vec<String> {
        let Some((mapping, id)) = self
            .processes
            .get(&pid)
            .and_then(|p| p.maps.iter().find(|(m, _)| m.start <= addr && addr < m.end))
            .map(|(m, id)| (m.clone(), id.clone()))
        else {
            return vec![format!("[unknown]+{addr:#x}")];
        };
        let offset = addr - mapping.start + mapping.file_offset;
        let unresolved = || vec![format!("{}+{offset:#x}", mapping.module())];
        let Some(id) = id else {
            return unresolved();
        };
        if let Some(frames) = self.user_frames.get(&(id.clone(), offset)) {
            return frames.clone();
        }
        let Some(binary) = self.binaries.get(&id) else {
            return unresolved();
        };
        let source = Source::Elf(Elf::new(binary.path()));
        let frames = match self
            .blaze
            .symbolize_single(&source, Input::FileOffset(offset))
        {
            Ok(Symbolized::Sym(sym)) => sym_frames(&sym),
            _ => unresolved(),
        };
        self.user_frames.insert((id, offset), frames.clone());
        frames
    }

    /// Symbolizes a kernel stack given leaf first; returns it root first, each frame `[k] `-prefixed.
    pub fn kernel_stack(&mut self, addrs: &[u64]) -> Vec<String> {
        let mut frames: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let lookup = if i == 0 { addr } else { addr.saturating_sub(1) };
                self.kernel_frame(lookup)
            })
            .collect();
        frames.reverse();
        frames
    }

    fn kernel_frame(&mut self, addr: u64) -> String {
        if let Some(frame) = self.kernel_frames.get(&addr) {
            return frame.clone();
        }
        // kallsyms only: no vmlinux search on every miss, no DWARF for the kernel.
        let source = Source::Kernel(Kernel {
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        });
        let name = match self.blaze.symbolize_single(&source, Input::AbsAddr(addr)) {
            Ok(Symbolized::Sym(sym)) => sym.name.into_owned(),
            _ => format!("[kernel]+{addr:#x}"),
        };
        let frame = format!("{KERNEL_PREFIX}{name}");
        self.kernel_frames.insert(addr, frame.clone());
        frame
    }
}

/// A symbol and its inlined calls as frames, innermost first.
fn sym_frames(sym: &Sym<'_>) -> Vec<String> {
    // The outer function's line is where its inlined call sits: the first inlined fn's call site.
    let mut frames = Vec::with_capacity(sym.inlined.len() + 1);
    let mut name = sym.name.as_ref();
    let mut outer_info = sym.inlined.first().and_then(|f| f.code_info.as_ref());
    if sym.inlined.is_empty() {
        outer_info = sym.code_info.as_deref();
    }
    frames.push(frame(name, outer_info));
    for (i, inlined) in sym.inlined.iter().enumerate() {
        name = inlined.name.as_ref();
        let info = match sym.inlined.get(i + 1) {
            Some(next) => next.code_info.as_ref(),
            None => sym.code_info.as_deref(),
        };
        frames.push(frame(name, info));
    }
    frames.reverse();
    frames
}

fn frame(name: &str, info: Option<&CodeInfo<'_>>) -> String {
    match info {
        Some(info) => match info.line {
            Some(line) => format!("{name} ({}:{line})", info.file.to_string_lossy()),
            None => format!("{name} ({})", info.file.to_string_lossy()),
        },
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_symbolizes_its_own_functions_and_the_kernel() {
        let mut s = Symbolizer::new();
        let me = std::process::id();
        assert!(s.observe(me));
        let addr = function_name as *const () as u64;
        let stack = s.user_stack(me, &[addr]);
        assert_eq!(stack.frames.len(), 1, "{stack:?}");
        assert!(
            stack.frames[0].contains("function_name"),
            "{:?}",
            stack.frames
        );
        assert!(stack.truncated, "a one-frame stack has no entry point");
        let unknown = s.user_stack(me, &[0x10]);
        assert_eq!(unknown.frames, vec!["[unknown]+0x10".to_owned()]);
    }
}
