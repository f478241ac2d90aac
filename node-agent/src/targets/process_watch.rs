//! Which processes started, exec'd or exited since the last look, from the kernel: the
//! `process_events` eBPF object (see `sonde_common::process_events`) writes each of them to ring
//! buffers that [`ProcessWatch::drain`] empties. The process scan uses it to reread only those
//! processes, without listing /proc; [`ProcessWatch::exec_waker`] becomes readable after an exec,
//! so that the scan can follow a new process at once.
use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use sonde_common::process_events::{KIND_EXEC, KIND_EXIT, KIND_FORK, ProcessEvent, names};

/// The process_events eBPF object built by build.rs, aligned for the ELF parser.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/process_events"));

#[derive(Debug, thiserror::Error)]
pub enum ProcessWatchError {
    #[error(
        "cannot load the process-notification eBPF object: {source}; the agent needs root (CAP_BPF, CAP_PERFMON) and a kernel with BPF ring buffers (5.8+)"
    )]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("the process-notification eBPF object lacks {what} {name}; rebuild the agent")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("map {name} of the process-notification eBPF object has an unexpected type: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "cannot load or attach {program} to tracepoint {category}:{tracepoint}: {source}; the agent needs tracefs (mounted at /sys/kernel/tracing)"
    )]
    Attach {
        program: &'static str,
        category: &'static str,
        tracepoint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// What the processes did since the last [`ProcessWatch::drain`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// New processes (tgids).
    pub forked: HashSet<u32>,
    /// Processes that replaced their image.
    pub execd: HashSet<u32>,
    /// Processes whose first thread exited.
    pub exited: HashSet<u32>,
}

impl Changes {
    /// Every pid named, once.
    pub fn pids(&self) -> HashSet<u32> {
        self.forked
            .iter()
            .chain(&self.execd)
            .chain(&self.exited)
            .copied()
            .collect()
    }
}

/// The attached programs and their maps; dropping it detaches the programs.
pub struct ProcessWatch {
    _ebpf: Ebpf,
    /// New processes and exits.
    events: RingBuf<MapData>,
    /// Execs (this ring wakes its readers).
    execs: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// The lost count as last read.
    lost_seen: u64,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, ProcessWatchError> {
    let map = ebpf
        .take_map(name)
        .ok_or(ProcessWatchError::Missing { what: "map", name })?;
    T::try_from(map).map_err(|source| ProcessWatchError::Map { name, source })
}

impl ProcessWatch {
    /// Loads the programs and attaches them to their tracepoints.
    pub fn start() -> Result<ProcessWatch, ProcessWatchError> {
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|source| ProcessWatchError::Load { source })?;
        for (program, category, tracepoint) in names::PROGRAMS {
            let attach_error = |source| ProcessWatchError::Attach {
                program,
                category,
                tracepoint,
                source: Box::new(source),
            };
            let prog: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or(ProcessWatchError::Missing {
                    what: "program",
                    name: program,
                })?
                .try_into()
                .map_err(attach_error)?;
            prog.load().map_err(attach_error)?;
            prog.attach(category, tracepoint).map_err(attach_error)?;
        }
        let events = take(&mut ebpf, names::EVENTS_MAP)?;
        let execs = take(&mut ebpf, names::EXECS_MAP)?;
        let lost = take(&mut ebpf, names::LOST_MAP)?;
        let mut watch = ProcessWatch {
            _ebpf: ebpf,
            events,
            execs,
            lost,
            lost_seen: 0,
        };
        watch.lost_seen = watch.lost_count().unwrap_or(0);
        Ok(watch)
    }

    /// What happened since the last call; None when some notifications were lost (a ring was
    /// full, or the lost count cannot be read): then every process has to be reread.
    pub fn drain(&mut self) -> Option<Changes> {
        let mut changes = Changes::default();
        drain_ring(&mut self.execs, &mut changes);
        drain_ring(&mut self.events, &mut changes);
        // Read after the rings: a notification lost meanwhile is in this count or the next one.
        let lost = self.lost_count()?;
        let complete = lost == self.lost_seen;
        self.lost_seen = lost;
        complete.then_some(changes)
    }

    /// A descriptor of the exec ring, readable once an exec is waiting. The kernel wakes its pollers
    /// for the first exec after [`ProcessWatch::drain`] emptied the ring, not for every exec.
    pub fn exec_waker(&self) -> std::io::Result<OwnedFd> {
        self.execs.as_fd().try_clone_to_owned()
    }

    fn lost_count(&self) -> Option<u64> {
        let values = self.lost.get(&0, 0).ok()?;
        Some(values.iter().sum())
    }
}

/// Adds every notification waiting in `ring` to `changes`.
fn drain_ring(ring: &mut RingBuf<MapData>, changes: &mut Changes) {
    while let Some(item) = ring.next() {
        let Some(ProcessEvent { kind, tgid }) = ProcessEvent::from_bytes(&item) else {
            continue;
        };
        let set = match kind {
            KIND_FORK => &mut changes.forked,
            KIND_EXEC => &mut changes.execd,
            KIND_EXIT => &mut changes.exited,
            _ => continue,
        };
        set.insert(tgid);
    }
}
