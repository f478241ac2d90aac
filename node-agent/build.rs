//! Builds `node-agent-ebpf` for the BPF target with aya-build and the nightly pinned in
//! `node-agent-ebpf/rust-toolchain.toml`; `src/ebpf.rs` embeds the result from `OUT_DIR`.
//!
//! There is no fallback: without the toolchain the build fails and says to run `scripts/setup`.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const EBPF_PACKAGE: &str = "node-agent-ebpf";
const SETUP_HINT: &str =
    "run `scripts/setup` (installs the pinned nightly with rust-src, LLVM 22 and bpf-linker)";

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", manifest_dir.display()))?;
    let ebpf_dir = workspace.join(EBPF_PACKAGE);

    // Relative to this package (cargo's rule), not absolute: two checkouts sharing one target dir
    // (CI's fresh clone and a working tree, ~/.cache/sonde/target) would otherwise each be checked
    // against the other's files and embed stale eBPF.
    for path in [
        "../node-agent-ebpf/src",
        "../node-agent-ebpf/Cargo.toml",
        "../node-agent-ebpf/Cargo.lock",
        "../node-agent-ebpf/rust-toolchain.toml",
        "../sonde-common/src",
        "../sonde-common/Cargo.toml",
    ] {
        println!("cargo::rerun-if-changed={path}");
    }

    let toolchain = pinned_toolchain(&ebpf_dir.join("rust-toolchain.toml"))?;
    check_toolchain(&toolchain)?;

    // aya-build forwards the inner cargo's stderr as warnings; keep only real diagnostics.
    // SAFETY: build scripts are single-threaded until aya-build spawns its reader thread below.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    // node-agent-ebpf is excluded from the workspace and is its own workspace root; aya-build runs
    // `cargo build --package` in the current directory, so run it from there.
    env::set_current_dir(&ebpf_dir)
        .with_context(|| format!("cannot enter {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            // Only used for rerun-if-changed: the sources, not the crate's own target/ directory;
            // relative for the reason above.
            root_dir: "../node-agent-ebpf/src",
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .with_context(|| format!("building {EBPF_PACKAGE} with {toolchain} failed; if the toolchain is incomplete, {SETUP_HINT}"))
}

/// The `channel` of a rust-toolchain.toml (hand-parsed: one key, not worth a TOML build-dependency).
fn pinned_toolchain(path: &Path) -> anyhow::Result<String> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|value| value.trim().trim_matches('"').to_owned())
        .find(|value| !value.is_empty())
        .ok_or_else(|| anyhow!("{} has no `channel = \"…\"` line", path.display()))
}

/// Fails with the set-up hint when the nightly, its rust-src or bpf-linker is missing.
fn check_toolchain(toolchain: &str) -> anyhow::Result<()> {
    let sysroot = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .output()
        .with_context(|| {
            format!("cannot run rustup to find toolchain {toolchain}; {SETUP_HINT}")
        })?;
    if !sysroot.status.success() {
        bail!(
            "Rust toolchain {toolchain} (needed to build {EBPF_PACKAGE}) is not installed: {}; {SETUP_HINT}",
            first_line(&sysroot.stderr)
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        bail!(
            "toolchain {toolchain} lacks the rust-src component ({} is missing); {SETUP_HINT}",
            core_src.display()
        );
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    match linker {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => bail!(
            "bpf-linker --version failed: {}; {SETUP_HINT}",
            first_line(&out.stderr)
        ),
        Err(err) => bail!("bpf-linker is not on PATH ({err}); {SETUP_HINT}"),
    }
}

/// The first line of a tool's stderr (rustup may append a backtrace).
fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}
