//! The protocol-capture eBPF programs: loaded and attached once for every protocol Tracepoint of this
//! agent, detached when the last one stops. The selected tgids and cgroup ids live in two maps kept
//! equal to the [`Routes`](super::routes::Routes) here, with the prefilter bitmap of both that the
//! programs check first and the selection epoch that tells them a key left; the programs that
//! selectors name exactly in a third, for the kernel to select their processes in the exec.
use std::collections::HashSet;
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use sonde_common::conn::{
    COMM_BYTES, ConnInfo, ConnKey, EXEC_SELECTED, ExecPath, FILTER_WORDS, SockOffsets,
    filter_bit_cgroup, filter_bit_tgid, names,
};
use tracing::warn;

use crate::kernel_btf::{BtfError, KernelBtf};
use crate::targets::selector::ExecPattern;

/// The protocols eBPF object built by build.rs, aligned for the ELF parser.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/protocols"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "cannot load the protocol-tracing eBPF object: {source}; the agent needs root (CAP_BPF, CAP_PERFMON) and a kernel with BPF ring buffers (5.8+)"
    )]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("the protocol-tracing eBPF object lacks {what} {name}; rebuild the agent")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("map {name} of the protocol-tracing eBPF object has an unexpected type: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "the kernel rejected program {program}: {source}; see the verifier log in the agent's debug output"
    )]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "cannot attach {program} to tracepoint {category}:{tracepoint}: {source}; the agent needs tracefs (mounted at /sys/kernel/tracing) and syscall tracepoints (CONFIG_FTRACE_SYSCALLS)"
    )]
    Attach {
        program: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        // Boxed: the names would make every Result of this module large.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("cannot update the {map} filter map: {source}")]
    Filter {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The maps the event loop owns.
pub struct LoopMaps {
    pub ring: RingBuf<MapData>,
    pub conns: BpfHashMap<MapData, ConnKey, ConnInfo>,
    pub drops: PerCpuArray<MapData, u64>,
    /// How many shedding slots are shed (see [`super::governor`]).
    pub shed: Array<MapData, u32>,
}

/// Loaded and attached programs with the filter maps.
pub struct Kernel {
    /// Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    tgids: BpfHashMap<MapData, u32, u32>,
    cgroups: BpfHashMap<MapData, u64, u32>,
    exec_paths: BpfHashMap<MapData, ExecPath, u32>,
    exec_files: LpmTrie<MapData, [u8; COMM_BYTES], u32>,
    filter: Array<MapData, u64>,
    epoch: Array<MapData, u64>,
    /// The selection epoch as last written.
    epoch_value: u64,
    tgid_set: HashSet<u32>,
    cgroup_set: HashSet<u64>,
    exec_patterns: HashSet<ExecPattern>,
    /// The prefilter bits this side set (the kernel sets those of children it selects: see
    /// [`Kernel::set_filter`]).
    filter_words: Vec<u64>,
    /// When the prefilter was last rebuilt from the tgid map (see [`Kernel::rebuild_filter`]).
    rebuilt: Instant,
}

/// How often the prefilter is rebuilt from the map it summarises, at most: bits of children the
/// kernel selected stay set after those exited until then.
const FILTER_REBUILD_EVERY: Duration = Duration::from_secs(30);

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(KernelError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

/// Where the kernel keeps what [`SockOffsets`] names, in the running kernel.
pub fn sock_offsets(btf: &KernelBtf) -> Result<SockOffsets, BtfError> {
    let sk_common = btf.member_offset("sock", "__sk_common")?;
    let in_sk = |member| Ok::<_, BtfError>(sk_common + btf.member_offset("sock_common", member)?);
    Ok(SockOffsets {
        task_files: btf.member_offset("task_struct", "files")?,
        files_fdt: btf.member_offset("files_struct", "fdt")?,
        fdtable_max_fds: btf.member_offset("fdtable", "max_fds")?,
        fdtable_fd: btf.member_offset("fdtable", "fd")?,
        file_inode: btf.member_offset("file", "f_inode")?,
        inode_mode: btf.member_offset("inode", "i_mode")?,
        file_private_data: btf.member_offset("file", "private_data")?,
        socket_type: btf.member_offset("socket", "type")?,
        socket_sk: btf.member_offset("socket", "sk")?,
        skc_family: in_sk("skc_family")?,
        skc_rcv_saddr: in_sk("skc_rcv_saddr")?,
        skc_num: in_sk("skc_num")?,
        skc_v6_rcv_saddr: in_sk("skc_v6_rcv_saddr")?,
        skc_daddr: in_sk("skc_daddr")?,
        skc_dport: in_sk("skc_dport")?,
        skc_v6_daddr: in_sk("skc_v6_daddr")?,
        fields_known: 1,
    })
}

impl Kernel {
    /// Loads the object and attaches every syscall tracepoint. `trace_all` traces every process
    /// but the agent itself.
    pub fn load(trace_all: bool) -> Result<(Kernel, LoopMaps), KernelError> {
        let agent = std::process::id();
        let all = u32::from(trace_all);
        let offsets = KernelBtf::load()
            .and_then(|btf| sock_offsets(&btf))
            .unwrap_or_else(|e| {
                warn!(
                    "{e}; the agent looks at traced processes' fds itself: addresses of short-lived connections (DNS lookups) may be missing, and files read by traced processes cost it a look each"
                );
                SockOffsets::default()
            });
        let mut ebpf = EbpfLoader::new()
            .override_global(names::AGENT_TGID_GLOBAL, &agent, true)
            .override_global(names::TRACE_ALL_GLOBAL, &all, true)
            .override_global(names::SOCK_OFFSETS_GLOBAL, &offsets, true)
            .load(OBJECT)
            .map_err(|source| KernelError::Load { source })?;
        let mut loaded: HashSet<&'static str> = HashSet::new();
        let syscalls = names::TRACEPOINTS
            .iter()
            .map(|&(tracepoint, program)| ("syscalls", tracepoint, program));
        let others = names::TASK_TRACEPOINTS.iter().copied();
        for (category, tracepoint, program) in syscalls.chain(others) {
            let prog: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or(KernelError::Missing {
                    what: "program",
                    name: program,
                })?
                .try_into()
                .map_err(|source| KernelError::Program { program, source })?;
            if loaded.insert(program) {
                prog.load()
                    .map_err(|source| KernelError::Program { program, source })?;
            }
            prog.attach(category, tracepoint)
                .map_err(|source| KernelError::Attach {
                    program,
                    category,
                    tracepoint,
                    source: Box::new(source),
                })?;
        }
        let maps = LoopMaps {
            ring: take(&mut ebpf, names::EVENTS_MAP)?,
            conns: take(&mut ebpf, names::CONNS_MAP)?,
            drops: take(&mut ebpf, names::DROPS_MAP)?,
            shed: take(&mut ebpf, names::SHED_MAP)?,
        };
        let kernel = Kernel {
            tgids: take(&mut ebpf, names::TGIDS_MAP)?,
            cgroups: take(&mut ebpf, names::CGROUPS_MAP)?,
            exec_paths: take(&mut ebpf, names::EXEC_PATHS_MAP)?,
            exec_files: take(&mut ebpf, names::EXEC_FILES_MAP)?,
            filter: take(&mut ebpf, names::FILTER_MAP)?,
            epoch: take(&mut ebpf, names::EPOCH_MAP)?,
            epoch_value: 0,
            _ebpf: ebpf,
            tgid_set: HashSet::new(),
            cgroup_set: HashSet::new(),
            exec_patterns: HashSet::new(),
            filter_words: vec![0; FILTER_WORDS as usize],
            rebuilt: Instant::now(),
        };
        Ok((kernel, maps))
    }

    /// Makes the filter maps hold exactly these keys. New bits are set before the keys are added
    /// and stale ones cleared after the keys went, so the prefilter never hides a selected key;
    /// when keys went, the selection epoch moves on so that threads of processes no longer
    /// selected stop being traced at their next syscall.
    ///
    /// The kernel adds keys too: a process selected by tgid that forks gets its child selected,
    /// under the same selected ancestor (the map's value; a key selected here is its own). Those
    /// children leave with their ancestor, and their prefilter bits are kept when a word is
    /// rewritten here.
    pub fn set_filter(
        &mut self,
        tgids: &HashSet<u32>,
        cgroups: &HashSet<u64>,
    ) -> Result<(), KernelError> {
        let wanted = prefilter(tgids, cgroups);
        let both: Vec<u64> = wanted
            .iter()
            .zip(&self.filter_words)
            .map(|(new, old)| new | old)
            .collect();
        self.write_filter(both, &[])?;
        let gone_tgids = sync(
            &mut self.tgids,
            &mut self.tgid_set,
            tgids,
            |&tgid| tgid,
            names::TGIDS_MAP,
        )?;
        let orphans = self.remove_children_of(&gone_tgids, tgids);
        let gone_cgroups = sync(
            &mut self.cgroups,
            &mut self.cgroup_set,
            cgroups,
            |_| 1,
            names::CGROUPS_MAP,
        )?;
        if !gone_tgids.is_empty() || !gone_cgroups.is_empty() {
            self.next_epoch()?;
        }
        let orphan_bits: Vec<u32> = orphans.iter().map(|&t| filter_bit_tgid(t)).collect();
        self.write_filter(wanted, &orphan_bits)?;
        if self.rebuilt.elapsed() >= FILTER_REBUILD_EVERY {
            self.rebuild_filter(cgroups)?;
        }
        Ok(())
    }

    /// Moves the selection epoch on: threads of processes no longer selected stop being traced
    /// at their next syscall.
    fn next_epoch(&mut self) -> Result<(), KernelError> {
        let next = self.epoch_value.wrapping_add(1);
        self.epoch
            .set(0, next, 0)
            .map_err(|source| KernelError::Filter {
                map: names::EPOCH_MAP,
                source,
            })?;
        self.epoch_value = next;
        Ok(())
    }

    /// Makes the kernel's maps of programs named exactly hold `wanted`. When patterns went, the
    /// processes the kernel selected in their exec and that are not selected here (`tgids`) leave
    /// the selection: their program may be named by no probe any more. (One that started a moment
    /// ago goes with them, and comes back when the process scan finds it.)
    pub fn set_execs(
        &mut self,
        wanted: &HashSet<ExecPattern>,
        tgids: &HashSet<u32>,
    ) -> Result<(), KernelError> {
        let gone: Vec<ExecPattern> = self.exec_patterns.difference(wanted).cloned().collect();
        for pattern in &gone {
            // Already gone is fine: the goal is its absence.
            let _ = match exec_key(pattern) {
                Some(ExecKey::Path(key)) => self.exec_paths.remove(&key),
                Some(ExecKey::File(key)) => self.exec_files.remove(&key),
                None => Ok(()),
            };
            self.exec_patterns.remove(pattern);
        }
        let new: Vec<ExecPattern> = wanted.difference(&self.exec_patterns).cloned().collect();
        for pattern in new {
            let (result, map) = match exec_key(&pattern) {
                Some(ExecKey::Path(key)) => {
                    (self.exec_paths.insert(key, 1, 0), names::EXEC_PATHS_MAP)
                }
                Some(ExecKey::File(key)) => {
                    (self.exec_files.insert(&key, 1, 0), names::EXEC_FILES_MAP)
                }
                None => continue,
            };
            result.map_err(|source| KernelError::Filter { map, source })?;
            self.exec_patterns.insert(pattern);
        }
        if gone.is_empty() {
            return Ok(());
        }
        let selected_at_exec: Vec<u32> = self
            .tgids
            .iter()
            .filter_map(Result::ok)
            .filter(|&(tgid, why)| why == EXEC_SELECTED && !tgids.contains(&tgid))
            .map(|(tgid, _)| tgid)
            .collect();
        for tgid in &selected_at_exec {
            // Gone meanwhile (it exited) is fine.
            let _ = self.tgids.remove(tgid);
        }
        if !selected_at_exec.is_empty() {
            self.next_epoch()?;
        }
        Ok(())
    }

    /// Removes the children the kernel selected for the ancestors in `gone` (unless selected here
    /// themselves); returns them.
    fn remove_children_of(&mut self, gone: &[u32], wanted: &HashSet<u32>) -> Vec<u32> {
        if gone.is_empty() {
            return Vec::new();
        }
        let children: Vec<u32> = self
            .tgids
            .iter()
            .filter_map(Result::ok)
            .filter(|(child, ancestor)| gone.contains(ancestor) && !wanted.contains(child))
            .map(|(child, _)| child)
            .collect();
        for child in &children {
            // Gone meanwhile (it exited) is fine.
            let _ = self.tgids.remove(child);
        }
        children
    }

    /// Writes the prefilter words that differ from the bits this side set last, keeping the bits
    /// the kernel set for children, except those in `clear`.
    fn write_filter(&mut self, words: Vec<u64>, clear: &[u32]) -> Result<(), KernelError> {
        let mut cleared = vec![0u64; words.len()];
        for &bit in clear {
            if let Some(word) = cleared.get_mut((bit / 64) as usize) {
                *word |= 1 << (bit % 64);
            }
        }
        for (index, ((new, old), clear)) in words
            .iter()
            .zip(&self.filter_words)
            .zip(&cleared)
            .enumerate()
        {
            if new == old && *clear == 0 {
                continue;
            }
            let index = index as u32;
            let kernel_bits = self.filter.get(&index, 0).unwrap_or(*old) & !old & !clear;
            self.filter
                .set(index, kernel_bits | new, 0)
                .map_err(|source| KernelError::Filter {
                    map: names::FILTER_MAP,
                    source,
                })?;
        }
        self.filter_words = words;
        Ok(())
    }

    /// Recomputes the whole prefilter from the keys in the maps, dropping the bits of children
    /// that exited (the kernel removes their keys, not their bits). A child the kernel selects
    /// meanwhile may lose its bit: it is then traced once the agent selects it.
    fn rebuild_filter(&mut self, cgroups: &HashSet<u64>) -> Result<(), KernelError> {
        self.rebuilt = Instant::now();
        let tgids: HashSet<u32> = self.tgids.keys().filter_map(Result::ok).collect();
        for (index, word) in prefilter(&tgids, cgroups).into_iter().enumerate() {
            let index = index as u32;
            if self.filter.get(&index, 0).ok() != Some(word) {
                self.filter
                    .set(index, word, 0)
                    .map_err(|source| KernelError::Filter {
                        map: names::FILTER_MAP,
                        source,
                    })?;
            }
        }
        Ok(())
    }
}

/// The prefilter bitmap of these keys.
fn prefilter(tgids: &HashSet<u32>, cgroups: &HashSet<u64>) -> Vec<u64> {
    let mut words = vec![0u64; FILTER_WORDS as usize];
    let bits = tgids
        .iter()
        .map(|&t| filter_bit_tgid(t))
        .chain(cgroups.iter().map(|&c| filter_bit_cgroup(c)));
    for bit in bits {
        words[(bit / 64) as usize] |= 1 << (bit % 64);
    }
    words
}

/// A pattern's key in the kernel's maps.
enum ExecKey {
    Path(ExecPath),
    File(Key<[u8; COMM_BYTES]>),
}

/// `pattern`'s key: an exact file name ends with its zero, so that only a whole thread name
/// matches it; the start of one does not. None for what does not fit (not made by
/// [`crate::targets::selector::exec_patterns`]).
fn exec_key(pattern: &ExecPattern) -> Option<ExecKey> {
    match pattern {
        ExecPattern::Path(path) => ExecPath::new(path.as_bytes()).map(ExecKey::Path),
        ExecPattern::File { name, prefix } => {
            let matched = name.len() + usize::from(!prefix);
            if matched > COMM_BYTES || name.as_bytes().contains(&0) {
                return None;
            }
            let mut data = [0; COMM_BYTES];
            data[..name.len()].copy_from_slice(name.as_bytes());
            Some(ExecKey::File(Key::new(8 * matched as u32, data)))
        }
    }
}

/// Makes `map` hold the keys of `wanted` (with `value` of each), as far as this side put them
/// there; returns the keys that went.
fn sync<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut BpfHashMap<MapData, K, u32>,
    current: &mut HashSet<K>,
    wanted: &HashSet<K>,
    value: impl Fn(&K) -> u32,
    name: &'static str,
) -> Result<Vec<K>, KernelError> {
    let gone: Vec<K> = current.difference(wanted).copied().collect();
    for key in &gone {
        // Already gone is fine: the goal is its absence.
        let _ = map.remove(key);
        current.remove(key);
    }
    for key in wanted.difference(current).copied().collect::<Vec<_>>() {
        map.insert(key, value(&key), 0)
            .map_err(|source| KernelError::Filter { map: name, source })?;
        current.insert(key);
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_offset_is_found_in_the_running_kernel_s_btf() {
        let btf = KernelBtf::load().unwrap();
        let o = sock_offsets(&btf).unwrap();
        assert_eq!(o.fields_known, 1);
        // `struct sock` starts with its `sock_common`, whose address and port pairs open it.
        assert_eq!(
            (o.skc_daddr, o.skc_rcv_saddr, o.skc_dport, o.skc_num),
            (0, 4, 12, 14)
        );
        assert!(o.skc_v6_daddr > o.skc_family && o.skc_v6_rcv_saddr > o.skc_v6_daddr);
        assert_ne!(o.file_private_data, o.file_inode);
    }

    fn has(words: &[u64], bit: u32) -> bool {
        words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    #[test]
    fn prefilter_has_the_bit_of_every_key_and_few_others() {
        let tgids: HashSet<u32> = [1, 4242, 65_600, 4_194_303].into();
        let cgroups: HashSet<u64> = [1, 7_331, 1 << 40, u64::MAX].into();
        let words = prefilter(&tgids, &cgroups);
        assert!(tgids.iter().all(|&t| has(&words, filter_bit_tgid(t))));
        assert!(cgroups.iter().all(|&c| has(&words, filter_bit_cgroup(c))));
        let set: u32 = words.iter().map(|w| w.count_ones()).sum();
        assert!(set <= 8, "{set} bits set for 8 keys");
    }

    #[test]
    fn cgroup_ids_close_together_get_different_bits() {
        // kernfs ids of sibling cgroups differ in their low bits only.
        let bits: HashSet<u32> = (5_000..5_100u64).map(filter_bit_cgroup).collect();
        assert!(bits.len() >= 99, "{} distinct bits for 100 ids", bits.len());
    }
}
