//! Loading Sonde's own eBPF object (built from `node-agent-ebpf` by build.rs and embedded).
use std::collections::HashMap;

use aya::{Ebpf, EbpfLoader};

/// The eBPF object built by build.rs, aligned for the ELF parser.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/node-agent-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "cannot load Sonde's eBPF object: {source}; the agent needs root (CAP_BPF, CAP_PERFMON) and a kernel with BPF ring buffers (5.8+)"
    )]
    Load {
        #[source]
        source: aya::EbpfError,
    },
}

/// Loads the embedded object, overriding the given `u32` globals (name → value) first.
/// Programs are only parsed here; each is loaded into the kernel when it is attached.
pub fn load(globals: &HashMap<&'static str, u32>) -> Result<Ebpf, EbpfError> {
    let mut loader = EbpfLoader::new();
    for (name, value) in globals {
        loader.override_global(name, value, true);
    }
    loader
        .load(OBJECT)
        .map_err(|source| EbpfError::Load { source })
}
