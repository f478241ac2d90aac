//! The one loaded `dynamic_log` eBPF object, shared by every DynamicLog probe of the agent: plans in
//! its map by attach cookie, attachments of its single uprobe program, and a reader thread that
//! hands each ring-buffer event to the sink registered for its cookie.
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::{ProgramError, UProbe};
use aya::{Ebpf, EbpfLoader};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use sonde_common::dynlog::{EventHeader, Plan, counter, names};
use tracing::warn;

use super::decode::{Record, parse_event};
use super::metrics::{DropLabels, DynamicLogMetrics};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dynamic_log"));

/// How long the reader waits between reads: the program wakes it only when the ring is filling up
/// (a wakeup per event would cost every traced call a context switch), so this bounds row latency.
const POLL_EVERY: u16 = 20;
/// How often the kernel's drop counters are read.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "cannot load the DynamicLog eBPF object: {source}; the agent needs root (CAP_BPF, CAP_PERFMON) and a kernel with BPF ring buffers (5.8+)"
    )]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error(
        "map {name} is missing from the DynamicLog eBPF object or unusable: {source}; rebuild the agent"
    )]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the DynamicLog eBPF object has no usable program {name}; rebuild the agent")]
    MissingProgram { name: &'static str },
    #[error("the kernel rejected the DynamicLog uprobe program: {source}")]
    Program {
        #[source]
        source: ProgramError,
    },
    #[error(
        "cannot attach a uprobe to {path} (the file pid {pid} runs) at file offset {offset:#x}: {source}; does the kernel support uprobes (CONFIG_UPROBE_EVENTS)?"
    )]
    Attach {
        path: PathBuf,
        offset: u64,
        pid: u32,
        #[source]
        source: ProgramError,
    },
    #[error("cannot store capture plan {cookie:#x}: {source}; too many DynamicLog probes at once?")]
    Plan {
        cookie: u64,
        #[source]
        source: MapError,
    },
    #[error("pid {pid} is not a valid process id")]
    Pid { pid: u32 },
}

/// Receives the events of one cookie, on the reader thread.
pub type Sink = Arc<dyn Fn(&EventHeader, Vec<Record>) + Send + Sync>;

struct Inner {
    ebpf: Ebpf,
    plans: aya::maps::HashMap<MapData, u64, Plan>,
}

pub struct Kernel {
    inner: Mutex<Inner>,
    routes: Arc<RwLock<HashMap<u64, Sink>>>,
    next_cookie: AtomicU64,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel").finish_non_exhaustive()
    }
}

impl Kernel {
    /// Loads the object, loads the program into the kernel and starts the reader thread.
    pub fn load(metrics: DynamicLogMetrics) -> Result<Kernel, KernelError> {
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|source| KernelError::Load { source })?;
        let map = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(KernelError::Map {
                name,
                source: MapError::InvalidName {
                    name: name.to_owned(),
                },
            })
        };
        let plans =
            aya::maps::HashMap::try_from(map(&mut ebpf, names::PLANS_MAP)?).map_err(|source| {
                KernelError::Map {
                    name: names::PLANS_MAP,
                    source,
                }
            })?;
        let ring = RingBuf::try_from(map(&mut ebpf, names::EVENTS_MAP)?).map_err(|source| {
            KernelError::Map {
                name: names::EVENTS_MAP,
                source,
            }
        })?;
        let counters: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(map(&mut ebpf, names::COUNTERS_MAP)?).map_err(|source| {
                KernelError::Map {
                    name: names::COUNTERS_MAP,
                    source,
                }
            })?;
        for name in [names::PROGRAM, names::RETURN_PROGRAM] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| KernelError::Program { source })?;
        }
        let routes: Arc<RwLock<HashMap<u64, Sink>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let routes = routes.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("dynlog-events".into())
                .spawn(move || read_events(ring, counters, routes, stop, metrics))
                .ok()
        };
        Ok(Kernel {
            inner: Mutex::new(Inner { ebpf, plans }),
            routes,
            next_cookie: AtomicU64::new(1),
            stop,
            reader,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A cookie no other plan of this agent uses.
    pub fn new_cookie(&self) -> u64 {
        self.next_cookie.fetch_add(1, Ordering::Relaxed)
    }

    /// Stores `plan` under `cookie` and routes the cookie's events to `sink`.
    pub fn install(&self, cookie: u64, plan: &Plan, sink: Sink) -> Result<(), KernelError> {
        self.routes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cookie, sink);
        self.lock()
            .plans
            .insert(cookie, plan, 0)
            .map_err(|source| KernelError::Plan { cookie, source })
    }

    /// Removes a plan and its route (after its attachments are gone).
    pub fn uninstall(&self, cookie: u64) {
        let _ = self.lock().plans.remove(&cookie);
        self.routes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&cookie);
    }

    /// Attaches at each point of `file` (known to users as `path`), for `pid` only. On failure
    /// nothing stays attached.
    pub fn attach(
        &self,
        file: &Path,
        path: &Path,
        pid: u32,
        points: &[Point],
    ) -> Result<Vec<Link>, KernelError> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(KernelError::Pid { pid })?);
        let mut inner = self.lock();
        let mut links = Vec::with_capacity(points.len());
        for p in points {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(p.offset),
                cookie: Some(p.cookie),
            };
            let name = if p.uretprobe {
                names::RETURN_PROGRAM
            } else {
                names::PROGRAM
            };
            let result = program(&mut inner.ebpf, name).and_then(|prog| {
                prog.attach(point, file, scope)
                    .map_err(|source| KernelError::Attach {
                        path: path.to_owned(),
                        offset: p.offset,
                        pid,
                        source,
                    })
            });
            match result {
                Ok(id) => links.push(Link { program: name, id }),
                Err(e) => {
                    drop(inner);
                    self.detach(links);
                    return Err(e);
                }
            }
        }
        Ok(links)
    }

    pub fn detach(&self, links: Vec<Link>) {
        let mut inner = self.lock();
        for link in links {
            let Ok(program) = program(&mut inner.ebpf, link.program) else {
                continue;
            };
            if let Err(error) = program.detach(link.id) {
                warn!(%error, "cannot detach a DynamicLog uprobe");
            }
        }
    }
}

/// Where to attach: a file offset, the cookie of its plan, and whether it is a uretprobe (at the
/// function's entry offset) rather than a uprobe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub offset: u64,
    pub cookie: u64,
    pub uretprobe: bool,
}

/// One attachment, to detach later.
#[derive(Debug)]
pub struct Link {
    program: &'static str,
    id: UProbeLinkId,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, KernelError> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(KernelError::MissingProgram { name })
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn read_events(
    mut ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    routes: Arc<RwLock<HashMap<u64, Sink>>>,
    stop: Arc<AtomicBool>,
    metrics: DynamicLogMetrics,
) {
    let mut seen = [0u64; counter::COUNT as usize];
    let mut last_counters = Instant::now();
    let dropped = |reason: &'static str, n: u64| {
        metrics
            .dropped
            .get_or_create(&DropLabels { reason })
            .inc_by(n);
    };
    while !stop.load(Ordering::Relaxed) {
        {
            let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
            // EINTR and friends: just poll again.
            let _ = poll(&mut fds, PollTimeout::from(POLL_EVERY));
        }
        while let Some(item) = ring.next() {
            let Some((header, records)) = parse_event(&item) else {
                dropped("malformed", 1);
                continue;
            };
            let sink = routes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&header.cookie)
                .cloned();
            match sink {
                Some(sink) => sink(&header, records),
                None => dropped("no_plan", 1),
            }
        }
        if last_counters.elapsed() >= COUNTERS_EVERY {
            last_counters = Instant::now();
            for (index, reason) in [
                (counter::NO_PLAN, "no_plan"),
                (counter::RING_FULL, "ring_full"),
            ] {
                if let Ok(values) = counters.get(&index, 0) {
                    let total: u64 = values.iter().sum();
                    let before = &mut seen[index as usize];
                    if total > *before {
                        dropped(reason, total - *before);
                        *before = total;
                    }
                }
            }
        }
    }
}
