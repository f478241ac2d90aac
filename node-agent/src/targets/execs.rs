//! Which processes exec'd since the last look, from the kernel: the `execs` eBPF object (see
//! `sonde_common::execs`) writes the tgid of every exec to a ring buffer that [`ExecWatch::drain`]
//! empties. The process scan uses it to reread only the processes that changed their image.
use std::collections::HashSet;

use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use sonde_common::execs::names;

/// The execs eBPF object built by build.rs, aligned for the ELF parser.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/execs"));

#[derive(Debug, thiserror::Error)]
pub enum ExecWatchError {
    #[error(
        "cannot load the exec-notification eBPF object: {source}; the agent needs root (CAP_BPF, CAP_PERFMON) and a kernel with BPF ring buffers (5.8+)"
    )]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("the exec-notification eBPF object lacks {what} {name}; rebuild the agent")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("map {name} of the exec-notification eBPF object has an unexpected type: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "cannot load or attach {program} to tracepoint sched:sched_process_exec: {source}; the agent needs tracefs (mounted at /sys/kernel/tracing)"
    )]
    Attach {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// The attached program and its maps; dropping it detaches the program.
pub struct ExecWatch {
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// The lost count as last read.
    lost_seen: u64,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, ExecWatchError> {
    let map = ebpf
        .take_map(name)
        .ok_or(ExecWatchError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| ExecWatchError::Map { name, source })
}

impl ExecWatch {
    /// Loads the program and attaches it to `sched:sched_process_exec`.
    pub fn start() -> Result<ExecWatch, ExecWatchError> {
        let program = names::PROGRAM;
        let attach_error = |source| ExecWatchError::Attach {
            program,
            source: Box::new(source),
        };
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|source| ExecWatchError::Load { source })?;
        let prog: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or(ExecWatchError::Missing {
                what: "program",
                name: program,
            })?
            .try_into()
            .map_err(attach_error)?;
        prog.load().map_err(attach_error)?;
        prog.attach(names::CATEGORY, names::TRACEPOINT)
            .map_err(attach_error)?;
        let ring = take(&mut ebpf, names::EVENTS_MAP)?;
        let lost = take(&mut ebpf, names::LOST_MAP)?;
        let mut watch = ExecWatch {
            _ebpf: ebpf,
            ring,
            lost,
            lost_seen: 0,
        };
        watch.lost_seen = watch.lost_count().unwrap_or(0);
        Ok(watch)
    }

    /// The tgids that exec'd since the last call; None when some were lost (the ring was full,
    /// or the lost count cannot be read): then every process has to be reread.
    pub fn drain(&mut self) -> Option<HashSet<u32>> {
        let mut pids = HashSet::new();
        while let Some(item) = self.ring.next() {
            if let Some(bytes) = item.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                pids.insert(u32::from_ne_bytes(bytes));
            }
        }
        // Read after the ring: an exec lost meanwhile is either in this count or the next one.
        let lost = self.lost_count()?;
        let complete = lost == self.lost_seen;
        self.lost_seen = lost;
        complete.then_some(pids)
    }

    fn lost_count(&self) -> Option<u64> {
        let values = self.lost.get(&0, 0).ok()?;
        Some(values.iter().sum())
    }
}
