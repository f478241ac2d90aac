//! The profiler's kernel state: the perf-event program on every CPU's software cpu-clock, the
//! target filter maps, and the double-buffered counts and stack maps (layout and names in
//! `sonde_common::profiler`).
use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, StackTraceMap};
use aya::programs::perf_event::{
    PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::programs::{PerfEvent, ProgramError};
use aya::{Ebpf, EbpfLoader};
use sonde_common::profiler::{
    CGROUPS_MAP, CONFIG_ACTIVE_BUFFER, CONFIG_MAP, COUNTS_MAPS, DROP_REASONS, DROPS_MAP, NO_STACK,
    PROGRAM, STACKS_MAPS, StackKey, TGIDS_MAP,
};

/// The profiler's eBPF object, built by build.rs from `node-agent-ebpf/src/profiler/main.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// Time for samples that read the old active buffer to finish before it is drained (a program run
/// takes microseconds).
const SWAP_GRACE: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "cannot load the profiler's eBPF object: {source}; the agent needs root (CAP_BPF, CAP_PERFMON)"
    )]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error(
        "the profiler's eBPF object has no {what} {name}; the agent binary is broken, rebuild it"
    )]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("cannot load the profiler's perf-event program: {source}")]
    Program {
        #[source]
        source: ProgramError,
    },
    #[error("cannot list online CPUs from {file}: {source}")]
    OnlineCpus {
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot sample the software cpu-clock of CPU {cpu} at {hz} Hz: {source}; check that perf events are allowed (kernel.perf_event_paranoid, CAP_PERFMON)"
    )]
    Attach {
        cpu: u32,
        hz: u64,
        #[source]
        source: ProgramError,
    },
    #[error("cannot use profiler map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { map, source }
}

/// One drained sample class with its stacks, leaf first (empty when not captured).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainedSample {
    pub tgid: u32,
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
    /// The user stack was not captured (counted as dropped by the program).
    pub user_lost: bool,
    pub count: u64,
}

/// Drop counters summed over CPUs, by `sonde_common::profiler::DROP_*` index.
pub type Drops = [u64; DROP_REASONS as usize];

/// Loaded and attached profiler programs and their maps.
pub struct Kernel {
    ebpf: Ebpf,
    links: Vec<PerfEventLinkId>,
    hz: u64,
    config: Array<MapData, u32>,
    cgroups: BpfHashMap<MapData, u64, u8>,
    tgids: BpfHashMap<MapData, u32, u8>,
    drops: PerCpuArray<MapData, u64>,
    counts: [BpfHashMap<MapData, StackKey, u64>; 2],
    stacks: [StackTraceMap<MapData>; 2],
    active: u32,
    selected_cgroups: BTreeSet<u64>,
    selected_tgids: BTreeSet<u32>,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, KernelError> {
    let map = ebpf
        .take_map(name)
        .ok_or(KernelError::Missing { what: "map", name })?;
    T::try_from(map).map_err(map_err(name))
}

impl Kernel {
    /// Loads the object and samples every online CPU at `hz`. Nothing is selected yet.
    pub fn start(hz: u64) -> Result<Kernel, KernelError> {
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|source| KernelError::Load { source })?;
        let config = take(&mut ebpf, CONFIG_MAP)?;
        let cgroups = take(&mut ebpf, CGROUPS_MAP)?;
        let tgids = take(&mut ebpf, TGIDS_MAP)?;
        let drops = take(&mut ebpf, DROPS_MAP)?;
        let counts = [
            take(&mut ebpf, COUNTS_MAPS[0])?,
            take(&mut ebpf, COUNTS_MAPS[1])?,
        ];
        let stacks = [
            take(&mut ebpf, STACKS_MAPS[0])?,
            take(&mut ebpf, STACKS_MAPS[1])?,
        ];
        let program = program(&mut ebpf)?;
        program
            .load()
            .map_err(|source| KernelError::Program { source })?;
        let mut kernel = Kernel {
            ebpf,
            links: Vec::new(),
            hz: 0,
            config,
            cgroups,
            tgids,
            drops,
            counts,
            stacks,
            active: 0,
            selected_cgroups: BTreeSet::new(),
            selected_tgids: BTreeSet::new(),
        };
        kernel.set_frequency(hz)?;
        Ok(kernel)
    }

    /// The sampling frequency in Hz.
    pub fn frequency(&self) -> u64 {
        self.hz
    }

    /// Re-attaches at `hz` if it differs from the current frequency.
    pub fn set_frequency(&mut self, hz: u64) -> Result<(), KernelError> {
        if hz == self.hz && !self.links.is_empty() {
            return Ok(());
        }
        let cpus = aya::util::online_cpus()
            .map_err(|(file, source)| KernelError::OnlineCpus { file, source })?;
        let old = std::mem::take(&mut self.links);
        let program = program(&mut self.ebpf)?;
        for link in old {
            let _ = program.detach(link);
        }
        for cpu in cpus {
            let link = program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(hz),
                    false,
                )
                .map_err(|source| KernelError::Attach { cpu, hz, source })?;
            self.links.push(link);
        }
        self.hz = hz;
        Ok(())
    }

    /// Makes exactly these cgroup ids and tgids selected.
    pub fn select(
        &mut self,
        cgroups: &BTreeSet<u64>,
        tgids: &BTreeSet<u32>,
    ) -> Result<(), KernelError> {
        for gone in self.selected_cgroups.difference(cgroups) {
            let _ = self.cgroups.remove(gone);
        }
        for new in cgroups.difference(&self.selected_cgroups) {
            self.cgroups
                .insert(new, 1, 0)
                .map_err(map_err(CGROUPS_MAP))?;
        }
        for gone in self.selected_tgids.difference(tgids) {
            let _ = self.tgids.remove(gone);
        }
        for new in tgids.difference(&self.selected_tgids) {
            self.tgids.insert(new, 1, 0).map_err(map_err(TGIDS_MAP))?;
        }
        self.selected_cgroups = cgroups.clone();
        self.selected_tgids = tgids.clone();
        Ok(())
    }

    /// Flips the active buffer, then reads and clears the one samples went to until now.
    pub fn swap_and_drain(&mut self) -> Result<Vec<DrainedSample>, KernelError> {
        let drained = self.active as usize;
        let next = 1 - self.active;
        self.config
            .set(CONFIG_ACTIVE_BUFFER, next, 0)
            .map_err(map_err(CONFIG_MAP))?;
        self.active = next;
        thread::sleep(SWAP_GRACE);

        let counts = &mut self.counts[drained];
        let stacks = &mut self.stacks[drained];
        let entries: Vec<(StackKey, u64)> = counts.iter().filter_map(Result::ok).collect();
        let frames = |id: i32| -> Vec<u64> {
            if id == NO_STACK {
                return Vec::new();
            }
            stacks
                .get(&(id as u32), 0)
                .map(|s| s.frames().iter().map(|f| f.ip).collect())
                .unwrap_or_default()
        };
        let samples = entries
            .iter()
            .map(|(key, count)| DrainedSample {
                tgid: key.tgid,
                user: frames(key.user_stack_id),
                kernel: frames(key.kernel_stack_id),
                user_lost: key.user_stack_id == NO_STACK,
                count: *count,
            })
            .collect();
        for (key, _) in &entries {
            let _ = counts.remove(key);
        }
        let ids: Vec<u32> = stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = stacks.remove(&id);
        }
        Ok(samples)
    }

    /// Drop counters since the program was loaded, summed over CPUs.
    pub fn drops(&self) -> Result<Drops, KernelError> {
        let mut out = [0u64; DROP_REASONS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self.drops.get(&(i as u32), 0).map_err(map_err(DROPS_MAP))?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut PerfEvent, KernelError> {
    let missing = KernelError::Missing {
        what: "program",
        name: PROGRAM,
    };
    ebpf.program_mut(PROGRAM)
        .ok_or(missing)?
        .try_into()
        .map_err(|source| KernelError::Program { source })
}
