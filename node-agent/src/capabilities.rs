//! What this node's kernel and tools can do, found out by trying at startup — never by version
//! guessing. Each facility is loaded, attached and triggered from this process, and counts as usable
//! only when its self-test program's event (with the right attach cookie, for uprobes) comes back
//! through the ring buffer. Every unusable facility gets its error text in `errors[facility]`.
//!
//! [`detect`] is blocking and bounded (about one second per facility at worst); the caller runs it on
//! a blocking thread.
#![deny(unsafe_code)]

use std::{
    collections::HashMap,
    error::Error as StdError,
    fs,
    hint::black_box,
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::{
    Btf, BtfError, Ebpf,
    maps::{MapData, RingBuf},
    programs::{
        FEntry, KProbe, PerfEvent, ProgramError, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use sonde_api::NodeCapabilities;
use sonde_common::{
    SELFTEST_FENTRY, SELFTEST_KPROBE, SELFTEST_PERF_EVENT, SELFTEST_TRACEPOINT, SELFTEST_UPROBE,
    SelfTestEvent, selftest,
};

use crate::ebpf;

/// How long a facility may take to deliver its event once attached.
const EVENT_WAIT: Duration = Duration::from_secs(1);
/// How long `bpftrace --version` may take.
const BPFTRACE_WAIT: Duration = Duration::from_secs(3);
/// Tracepoint the self-test attaches to: a syscall nothing calls in a loop.
const TRACEPOINT: (&str, &str) = ("syscalls", "sys_enter_getppid");
/// Kernel functions behind getppid(2), for the kprobe and fentry tests, best first. The syscall
/// wrapper has a kallsyms symbol everywhere but is not in BTF on every kernel (6.18 x86-64 keeps only
/// `__do_sys_getppid`, an alias at the same address), so fentry takes the first one BTF knows.
#[cfg(target_arch = "x86_64")]
const KERNEL_FUNCTIONS: &[&str] = &["__x64_sys_getppid", "__do_sys_getppid"];
#[cfg(target_arch = "aarch64")]
const KERNEL_FUNCTIONS: &[&str] = &["__arm64_sys_getppid", "__do_sys_getppid"];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const KERNEL_FUNCTIONS: &[&str] = &["__do_sys_getppid"];
const TRACEFS: &str = "/sys/kernel/tracing";
const BTF: &str = "/sys/kernel/btf/vmlinux";
/// Sampling frequency of the perf-event self-test.
const PERF_HZ: u64 = 199;

/// Keys of `NodeCapabilities::errors`, named like the fields they explain.
pub mod facility {
    pub const BTF: &str = "btf";
    pub const TRACEPOINTS: &str = "tracepoints";
    pub const UPROBES: &str = "uprobes";
    pub const PERF_EVENTS: &str = "perfEvents";
    pub const KPROBES: &str = "kprobes";
    pub const FENTRY: &str = "fentry";
    pub const BPFTRACE: &str = "bpftrace";
    pub const TRACEFS: &str = "tracefs";
}

#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error("program {program} is missing from Sonde's eBPF object; rebuild the agent")]
    MissingProgram { program: &'static str },
    #[error("map {map} is missing from Sonde's eBPF object; rebuild the agent")]
    MissingMap { map: &'static str },
    #[error("program {program} has an unexpected type: {source}; rebuild the agent")]
    ProgramType {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot open ring buffer {map}: {source}")]
    RingBuf {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("loading {program} into the kernel failed: {source}")]
    Load {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {program} to {target} failed: {source}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: ProgramError,
    },
    #[error("cannot list online CPUs from {file}: {source}")]
    OnlineCpus {
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the kernel's BTF at {BTF}: {source}")]
    Btf {
        #[source]
        source: aya::BtfError,
    },
    #[error(
        "none of the kernel functions {candidates} is in the kernel's BTF; fentry cannot be tested"
    )]
    NoBtfFunction { candidates: String },
    #[error("{program} attached to {target} but no event arrived within {waited:?}")]
    NoEvent {
        program: &'static str,
        target: String,
        waited: Duration,
    },
    #[error(
        "cannot mount tracefs at {TRACEFS}: {source}; mount it on the host or give the agent CAP_SYS_ADMIN"
    )]
    MountTracefs {
        #[source]
        source: nix::Error,
    },
    #[error("cannot run {path} --version: {source}")]
    BpftraceRun {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} --version failed or took longer than {BPFTRACE_WAIT:?}: {output}")]
    BpftraceVersion { path: String, output: String },
}

/// Tries every facility; never panics, always returns (unusable facilities are false, with a reason).
pub fn detect(bpftrace: &Path) -> NodeCapabilities {
    let mut caps = NodeCapabilities {
        kernel_release: kernel_release(),
        btf: Path::new(BTF).exists(),
        ..NodeCapabilities::default()
    };
    if !caps.btf {
        caps.errors
            .insert(facility::BTF.into(), format!("{BTF} does not exist"));
    }
    if let Err(err) = ensure_tracefs() {
        caps.errors.insert(facility::TRACEFS.into(), chain(&err));
    }

    match SelfTest::new() {
        Ok(mut test) => {
            record(
                &mut caps.tracepoints,
                &mut caps.errors,
                facility::TRACEPOINTS,
                test.tracepoint(),
            );
            record(
                &mut caps.uprobes,
                &mut caps.errors,
                facility::UPROBES,
                test.uprobe(),
            );
            record(
                &mut caps.perf_events,
                &mut caps.errors,
                facility::PERF_EVENTS,
                test.perf_event(),
            );
            record(
                &mut caps.kprobes,
                &mut caps.errors,
                facility::KPROBES,
                test.kprobe(),
            );
            record(
                &mut caps.fentry,
                &mut caps.errors,
                facility::FENTRY,
                test.fentry(),
            );
        }
        Err(err) => {
            let reason = chain(err.as_ref());
            for key in [
                facility::TRACEPOINTS,
                facility::UPROBES,
                facility::PERF_EVENTS,
                facility::KPROBES,
                facility::FENTRY,
            ] {
                caps.errors.insert(key.into(), reason.clone());
            }
        }
    }

    match bpftrace_version(bpftrace) {
        Ok(version) => caps.bpftrace_version = Some(version),
        Err(err) => {
            caps.errors.insert(facility::BPFTRACE.into(), chain(&err));
        }
    }
    caps
}

fn record(
    flag: &mut bool,
    errors: &mut std::collections::BTreeMap<String, String>,
    key: &str,
    result: Result<(), CapabilityError>,
) {
    match result {
        Ok(()) => *flag = true,
        Err(err) => {
            errors.insert(key.into(), chain(&err));
        }
    }
}

/// `error: cause: cause…`, skipping causes the message already contains.
fn chain(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // aya appends an empty verifier log to load errors that never reached the verifier.
    let trimmed = text.trim_end();
    trimmed
        .strip_suffix(" Verifier output:")
        .unwrap_or(trimmed)
        .to_owned()
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Tracepoint attachment needs tracefs; mount it when the host has not.
fn ensure_tracefs() -> Result<(), CapabilityError> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| CapabilityError::MountTracefs { source })
}

fn bpftrace_version(path: &Path) -> Result<String, CapabilityError> {
    let shown = path.display().to_string();
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CapabilityError::BpftraceRun {
            path: shown.clone(),
            source,
        })?;
    let deadline = Instant::now() + BPFTRACE_WAIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                // Best effort: the child is ours and must not outlive the check.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(out) = child.stdout.as_mut() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(err) = child.stderr.as_mut() {
        let _ = err.read_to_string(&mut stderr);
    }
    match status {
        Some(status) if status.success() && !stdout.trim().is_empty() => {
            Ok(stdout.trim().to_owned())
        }
        _ => Err(CapabilityError::BpftraceVersion {
            path: shown,
            output: format!("{} {}", stdout.trim(), stderr.trim())
                .trim()
                .to_owned(),
        }),
    }
}

/// The function the uprobe self-test attaches to, in this very binary (/proc/self/exe). Its symbol
/// must survive linking unmangled, and it must not be inlined into its caller.
#[expect(
    unsafe_code,
    reason = "no_mangle keeps a stable symbol for the uprobe self-test"
)]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sonde_uprobe_selftest_target(value: u64) -> u64 {
    black_box(value).wrapping_add(1)
}
const UPROBE_SYMBOL: &str = "sonde_uprobe_selftest_target";

/// The loaded object plus its ring buffer.
struct SelfTest {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
}

impl SelfTest {
    fn new() -> Result<SelfTest, Box<dyn StdError + Send + Sync>> {
        let globals = HashMap::from([(selftest::TARGET_TGID_GLOBAL, std::process::id())]);
        let mut ebpf = ebpf::load(&globals)?;
        let map = ebpf
            .take_map(selftest::EVENTS_MAP)
            .ok_or(CapabilityError::MissingMap {
                map: selftest::EVENTS_MAP,
            })?;
        let events = RingBuf::try_from(map).map_err(|source| CapabilityError::RingBuf {
            map: selftest::EVENTS_MAP,
            source,
        })?;
        Ok(SelfTest { ebpf, events })
    }

    fn program<'a, P>(&'a mut self, name: &'static str) -> Result<&'a mut P, CapabilityError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(CapabilityError::MissingProgram { program: name })?;
        program
            .try_into()
            .map_err(|source| CapabilityError::ProgramType {
                program: name,
                source,
            })
    }

    /// Runs `trigger` until an event of `kind` (and `cookie`) arrives or [`EVENT_WAIT`] passes.
    fn wait_for(
        &mut self,
        kind: u32,
        cookie: u64,
        program: &'static str,
        target: &str,
        mut trigger: impl FnMut(),
    ) -> Result<(), CapabilityError> {
        let deadline = Instant::now() + EVENT_WAIT;
        while Instant::now() < deadline {
            trigger();
            while let Some(item) = self.events.next() {
                if let Some(event) = decode(&item)
                    && event.kind == kind
                    && event.cookie == cookie
                    && event.tgid == std::process::id()
                {
                    return Ok(());
                }
            }
        }
        Err(CapabilityError::NoEvent {
            program,
            target: target.to_owned(),
            waited: EVENT_WAIT,
        })
    }

    fn tracepoint(&mut self) -> Result<(), CapabilityError> {
        let name = selftest::TRACEPOINT_PROGRAM;
        let target = format!("{}:{}", TRACEPOINT.0, TRACEPOINT.1);
        let program: &mut TracePoint = self.program(name)?;
        program.load().map_err(|source| CapabilityError::Load {
            program: name,
            source,
        })?;
        let link = program
            .attach(TRACEPOINT.0, TRACEPOINT.1)
            .map_err(|source| CapabilityError::Attach {
                program: name,
                target: target.clone(),
                source,
            })?;
        let result = self.wait_for(SELFTEST_TRACEPOINT, 0, name, &target, || {
            black_box(std::os::unix::process::parent_id());
            thread::sleep(Duration::from_millis(1));
        });
        let program: &mut TracePoint = self.program(name)?;
        let _ = program.detach(link);
        result
    }

    fn uprobe(&mut self) -> Result<(), CapabilityError> {
        let name = selftest::UPROBE_PROGRAM;
        // Distinct per process so an event from another agent's self-test cannot pass for ours.
        let cookie = 0x50DE_0000_0000_0000 | u64::from(std::process::id());
        let target = format!("/proc/self/exe:{UPROBE_SYMBOL}");
        let program: &mut UProbe = self.program(name)?;
        program.load().map_err(|source| CapabilityError::Load {
            program: name,
            source,
        })?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::Symbol(UPROBE_SYMBOL),
            cookie: Some(cookie),
        };
        let link = program
            .attach(point, "/proc/self/exe", UProbeScope::AllProcesses)
            .map_err(|source| CapabilityError::Attach {
                program: name,
                target: target.clone(),
                source,
            })?;
        let result = self.wait_for(SELFTEST_UPROBE, cookie, name, &target, || {
            black_box(sonde_uprobe_selftest_target(black_box(41)));
            thread::sleep(Duration::from_millis(1));
        });
        let program: &mut UProbe = self.program(name)?;
        let _ = program.detach(link);
        result
    }

    /// Samples the software cpu-clock on every online CPU (as the profiler will) while spinning.
    fn perf_event(&mut self) -> Result<(), CapabilityError> {
        let name = selftest::PERF_EVENT_PROGRAM;
        let target = format!("software cpu-clock at {PERF_HZ} Hz");
        let cpus = aya::util::online_cpus()
            .map_err(|(file, source)| CapabilityError::OnlineCpus { file, source })?;
        let program: &mut PerfEvent = self.program(name)?;
        program.load().map_err(|source| CapabilityError::Load {
            program: name,
            source,
        })?;
        let mut links = Vec::new();
        for cpu in cpus {
            let link = program
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(PERF_HZ),
                    false,
                )
                .map_err(|source| CapabilityError::Attach {
                    program: name,
                    target: format!("{target} on CPU {cpu}"),
                    source,
                })?;
            links.push(link);
        }
        let mut spin = 0u64;
        let result = self.wait_for(SELFTEST_PERF_EVENT, 0, name, &target, || {
            for i in 0..100_000u64 {
                spin = black_box(spin.wrapping_add(i));
            }
        });
        let program: &mut PerfEvent = self.program(name)?;
        for link in links {
            let _ = program.detach(link);
        }
        result
    }

    fn kprobe(&mut self) -> Result<(), CapabilityError> {
        let name = selftest::KPROBE_PROGRAM;
        let function = KERNEL_FUNCTIONS[0];
        let program: &mut KProbe = self.program(name)?;
        program.load().map_err(|source| CapabilityError::Load {
            program: name,
            source,
        })?;
        let link = program
            .attach(function, 0)
            .map_err(|source| CapabilityError::Attach {
                program: name,
                target: function.to_owned(),
                source,
            })?;
        let result = self.wait_for(SELFTEST_KPROBE, 0, name, function, || {
            black_box(std::os::unix::process::parent_id());
            thread::sleep(Duration::from_millis(1));
        });
        let program: &mut KProbe = self.program(name)?;
        let _ = program.detach(link);
        result
    }

    fn fentry(&mut self) -> Result<(), CapabilityError> {
        let name = selftest::FENTRY_PROGRAM;
        let btf = Btf::from_sys_fs().map_err(|source| CapabilityError::Btf { source })?;
        let program: &mut FEntry = self.program(name)?;
        let mut loaded = Err(CapabilityError::NoBtfFunction {
            candidates: KERNEL_FUNCTIONS.join(", "),
        });
        for &function in KERNEL_FUNCTIONS {
            match program.load(function, &btf) {
                Ok(()) => {
                    loaded = Ok(function);
                    break;
                }
                Err(ProgramError::Btf(BtfError::UnknownBtfTypeName { .. })) => continue,
                Err(source) => {
                    loaded = Err(CapabilityError::Load {
                        program: name,
                        source,
                    });
                    break;
                }
            }
        }
        let function = loaded?;
        let link = program.attach().map_err(|source| CapabilityError::Attach {
            program: name,
            target: function.to_owned(),
            source,
        })?;
        let result = self.wait_for(SELFTEST_FENTRY, 0, name, function, || {
            black_box(std::os::unix::process::parent_id());
            thread::sleep(Duration::from_millis(1));
        });
        let program: &mut FEntry = self.program(name)?;
        let _ = program.detach(link);
        result
    }
}

/// Reads a [`SelfTestEvent`] from ring-buffer bytes (native endian, the layout asserted in
/// sonde-common); None if the record is too short.
fn decode(bytes: &[u8]) -> Option<SelfTestEvent> {
    let kind = u32::from_ne_bytes(bytes.get(0..4)?.try_into().ok()?);
    let tgid = u32::from_ne_bytes(bytes.get(4..8)?.try_into().ok()?);
    let cookie = u64::from_ne_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some(SelfTestEvent { kind, tgid, cookie })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_from_their_native_layout_and_short_records_do_not() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&SELFTEST_UPROBE.to_ne_bytes());
        bytes.extend_from_slice(&1234u32.to_ne_bytes());
        bytes.extend_from_slice(&0xC0FFEEu64.to_ne_bytes());
        assert_eq!(
            decode(&bytes),
            Some(SelfTestEvent {
                kind: SELFTEST_UPROBE,
                tgid: 1234,
                cookie: 0xC0FFEE
            })
        );
        assert_eq!(decode(&bytes[..15]), None);
    }

    #[test]
    fn a_missing_bpftrace_is_reported_not_fatal() {
        let err = bpftrace_version(Path::new("/nonexistent/bpftrace")).unwrap_err();
        assert!(chain(&err).contains("/nonexistent/bpftrace"));
    }
}
