//! The protocol-capture eBPF programs: loaded and attached once for every protocol Tracepoint of this
//! agent, detached when the last one stops. The selected tgids and cgroup ids live in two maps kept
//! equal to the [`Routes`](super::routes::Routes) here.
use std::collections::HashSet;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use sonde_common::conn::{ConnInfo, ConnKey, names};

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
}

/// Loaded and attached programs with the filter maps.
pub struct Kernel {
    /// Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    tgids: BpfHashMap<MapData, u32, u32>,
    cgroups: BpfHashMap<MapData, u64, u32>,
    tgid_set: HashSet<u32>,
    cgroup_set: HashSet<u64>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(KernelError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

impl Kernel {
    /// Loads the object and attaches every syscall tracepoint. `trace_all` traces every process
    /// but the agent itself.
    pub fn load(trace_all: bool) -> Result<(Kernel, LoopMaps), KernelError> {
        let agent = std::process::id();
        let all = u32::from(trace_all);
        let mut ebpf = EbpfLoader::new()
            .override_global(names::AGENT_TGID_GLOBAL, &agent, true)
            .override_global(names::TRACE_ALL_GLOBAL, &all, true)
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
        };
        let kernel = Kernel {
            tgids: take(&mut ebpf, names::TGIDS_MAP)?,
            cgroups: take(&mut ebpf, names::CGROUPS_MAP)?,
            _ebpf: ebpf,
            tgid_set: HashSet::new(),
            cgroup_set: HashSet::new(),
        };
        Ok((kernel, maps))
    }

    /// Makes the filter maps hold exactly these keys.
    pub fn set_filter(
        &mut self,
        tgids: &HashSet<u32>,
        cgroups: &HashSet<u64>,
    ) -> Result<(), KernelError> {
        sync(&mut self.tgids, &mut self.tgid_set, tgids, names::TGIDS_MAP)?;
        sync(
            &mut self.cgroups,
            &mut self.cgroup_set,
            cgroups,
            names::CGROUPS_MAP,
        )
    }
}

fn sync<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut BpfHashMap<MapData, K, u32>,
    current: &mut HashSet<K>,
    wanted: &HashSet<K>,
    name: &'static str,
) -> Result<(), KernelError> {
    for key in current.difference(wanted).copied().collect::<Vec<_>>() {
        // Already gone is fine: the goal is its absence.
        let _ = map.remove(&key);
        current.remove(&key);
    }
    for key in wanted.difference(current).copied().collect::<Vec<_>>() {
        map.insert(key, 1, 0)
            .map_err(|source| KernelError::Filter { map: name, source })?;
        current.insert(key);
    }
    Ok(())
}
