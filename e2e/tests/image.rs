//! The image the chart deploys, built by `scripts/image` (the Containerfile's runtime stage, without a
//! container engine) and checked the way a cluster would use it: its config against the Containerfile
//! and the chart's templates, the chart's `command:`s found through the image's PATH, every flag the
//! chart passes accepted by the image's binaries, `sonde-operator` started as the chart's uid 65532,
//! and the image's `sonde-agent` run chrooted into the unpacked image with the agent DaemonSet's
//! mounts, where it must run bpftrace from the image (a BpftraceScript row) and load its own eBPF
//! (an `http_events` row of a `curl` this test runs).
//!
//! Needs root (mmdebstrap, umoci, chroot, mount namespaces, eBPF) and the tools of `scripts/setup
//! image`. The image is built from this workspace's debug binaries, which the test suite builds
//! anyway: what is under test is the packaging (root filesystem, paths, config, runtime
//! dependencies), which is the same for a release build, and relinking release binaries with LTO on
//! every CI run would cost minutes. The Debian root filesystem is cached in ~/.cache/sonde/image.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sonde_e2e::observe::agent_get;
use sonde_e2e::ports::free_port;
use sonde_e2e::process::{Proc, run};
use sonde_e2e::suite;
use sonde_e2e::tools::{build_sonde, workspace_root};
use sonde_e2e::wait::{self, CONVERGE};

/// The uid the chart runs the operator as (operator-deployment.yaml `runAsUser`).
const OPERATOR_UID: u32 = 65532;

#[test]
fn image_built_without_an_engine_runs_the_agent_and_operator_as_the_chart_does() -> Result<()> {
    let root = workspace_root();
    let bins = build_sonde()?;
    let bin_dir = bins
        .agent
        .parent()
        .context("the agent binary has no parent directory")?;
    let work = suite::work_dir("sonde-image-")?;
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let version = chart_app_version(&root)?;

    // Build the archive as a user would, then read it with the tool a user pushes it with.
    let archive = work.path().join("sonde.oci.tar");
    let out = run(Command::new(root.join("scripts/image"))
        .arg("--binaries")
        .arg(bin_dir)
        .arg("--out")
        .arg(&archive))
    .context("scripts/image failed")?;
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        Path::new(&printed) == archive,
        "scripts/image printed {printed:?}, not the archive path {}",
        archive.display()
    );
    let config: Value = serde_json::from_slice(
        &run(Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci-archive:{}:{version}", archive.display())))
        .context("skopeo cannot read the archive under the chart's default tag (appVersion)")?
        .stdout,
    )
    .context("skopeo inspect --config printed no JSON")?;
    check_config_matches_containerfile(&config, &root, &version)?;

    // Unpack it as a runtime would.
    let layout = work.path().join("oci");
    std::fs::create_dir_all(&layout)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout))?;
    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{version}", layout.display()))
        .arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    let env = image_env(&config)?;

    // The chart's commands, found through the image's PATH, runnable by the operator's uid; every
    // flag the chart passes is one the binary knows.
    let templates = root.join("charts/sonde/templates");
    for (template, uid) in [
        ("operator-deployment.yaml", OPERATOR_UID),
        ("agent-daemonset.yaml", 0),
    ] {
        let text = std::fs::read_to_string(templates.join(template))
            .with_context(|| format!("reading charts/sonde/templates/{template}"))?;
        let (command, flags) =
            chart_command(&text).with_context(|| format!("charts/sonde/templates/{template}"))?;
        let path = resolve_in_image(&rootfs, &env, &command)?;
        let mode = std::fs::metadata(&path)?.permissions().mode();
        ensure!(
            mode & 0o111 == 0o111,
            "{} in the image has mode {mode:o}: uid {OPERATOR_UID} (the operator) cannot run it",
            path.display()
        );
        let help = run(chroot(&rootfs, &env, uid).args([command.as_str(), "--help"]))
            .with_context(|| format!("the image's {command} --help, as uid {uid}"))?;
        let help = String::from_utf8_lossy(&help.stdout);
        let unknown: Vec<&String> = flags
            .iter()
            .filter(|f| !help.contains(f.as_str()))
            .collect();
        ensure!(
            unknown.is_empty(),
            "charts/sonde/templates/{template} passes {unknown:?}, which the image's {command} does not list in --help"
        );
    }

    // The agent, as the DaemonSet runs it, on a BpftraceScript and a Tracepoint.
    let marker = format!("/tmp/sonde-image-marker-{}", std::process::id());
    let manifests = rootfs.join("etc/sonde-image-test");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(manifests.join("probes.yaml"), manifests_yaml(&marker))?;
    let port = free_port()?;
    let mut agent = start_agent(&rootfs, &env, port, &logs)?;
    let url = format!("http://127.0.0.1:{port}");
    let server = HttpServer::start()?;
    let path = format!("/sonde-image-{}", std::process::id());
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        wait::until("the image's agent to start both probes", CONVERGE, || {
            probes_started(&url)
        })
        .await?
        .map_err(anyhow::Error::msg)?;
        wait::until_ok("rows from the image's bpftrace and eBPF", CONVERGE, || {
            // Fresh events each round: a probe may attach a moment after /v1/status says so.
            let _ = std::fs::File::open(&marker);
            let curl = Command::new("curl")
                .args(["-s", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{}{path}", server.port))
                .status();
            let seen = rows_seen(&url, &marker, &path, server.port);
            async move {
                curl.context("running curl, the traced client (scripts/setup base installs it)")?;
                seen.await
            }
        })
        .await
    });
    if let Err(e) = result {
        let running = agent.is_running();
        bail!(
            "{e:#}\n(agent running: {running}){}",
            suite::log_section("image's agent", agent.log_path(), 60)
        );
    }
    drop(agent);
    // The agent's mounts lived in its own mount namespace; none may be left on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let leaked: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&*work.path().to_string_lossy()))
        .collect();
    ensure!(leaked.is_empty(), "mounts left behind: {leaked:#?}");
    Ok(())
}

/// `appVersion` of charts/sonde/Chart.yaml: the tag the chart pulls by default.
fn chart_app_version(root: &Path) -> Result<String> {
    let chart: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        root.join("charts/sonde/Chart.yaml"),
    )?)?;
    chart["appVersion"]
        .as_str()
        .map(str::to_owned)
        .context("charts/sonde/Chart.yaml has no appVersion")
}

/// The Containerfile's instructions, continuation lines joined, comments dropped.
fn containerfile_instructions(root: &Path) -> Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(root.join("Containerfile")).context("reading Containerfile")?;
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((word.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    Ok(out)
}

/// `key="value"` pairs (or `key=value`) of a LABEL or ENV instruction, `${VERSION}` substituted.
fn key_values(s: &str, version: &str) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .with_context(|| format!("no `=` in {rest:?}"))?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => quoted
                .split_once('"')
                .with_context(|| format!("unterminated quote in {after:?}"))?,
            None => after.split_once(char::is_whitespace).unwrap_or((after, "")),
        };
        map.insert(key.trim().to_owned(), value.replace("${VERSION}", version));
        rest = after.trim_start();
    }
    Ok(map)
}

/// The image's config (as skopeo reads it) says what the Containerfile's final stage says: ENV,
/// LABEL (the version being the chart's appVersion), CMD, and root as the user.
fn check_config_matches_containerfile(config: &Value, root: &Path, version: &str) -> Result<()> {
    let instructions = containerfile_instructions(root)?;
    let runtime_stage = instructions
        .iter()
        .rposition(|(word, _)| word == "FROM")
        .context("Containerfile has no FROM")?;
    let stage = &instructions[runtime_stage..];
    let mut want_env = BTreeMap::new();
    let mut want_labels = BTreeMap::new();
    let mut want_cmd = Value::Null;
    for (word, rest) in stage {
        match word.as_str() {
            "ENV" => want_env.extend(key_values(rest, version)?),
            "LABEL" => want_labels.extend(key_values(rest, version)?),
            "CMD" => want_cmd = serde_json::from_str(rest).context("CMD is not JSON")?,
            "ARG" if rest.starts_with("VERSION=") => ensure!(
                rest == &format!("VERSION={version}"),
                "Containerfile has `ARG {rest}`, the chart's appVersion is {version}: bump them together"
            ),
            "USER" | "ENTRYPOINT" => bail!(
                "the Containerfile's runtime stage sets {word}; scripts/image and this test must learn it"
            ),
            _ => {}
        }
    }
    let cfg = &config["config"];
    let got_env: BTreeMap<String, String> = image_env(config)?.into_iter().collect();
    ensure!(
        got_env == want_env,
        "image Env {got_env:?}, Containerfile ENV {want_env:?}"
    );
    let got_labels: BTreeMap<String, String> =
        serde_json::from_value(cfg["Labels"].clone()).context("image config has no Labels")?;
    ensure!(
        got_labels == want_labels,
        "image labels {got_labels:?}, Containerfile LABEL {want_labels:?}"
    );
    ensure!(
        cfg["Cmd"] == want_cmd,
        "image Cmd {}, Containerfile CMD {want_cmd}",
        cfg["Cmd"]
    );
    let user = cfg["User"].as_str().unwrap_or("");
    ensure!(
        matches!(user, "" | "0" | "root"),
        "image user {user:?}: the agent must start as root"
    );
    ensure!(
        config["architecture"] == "amd64" && config["os"] == "linux",
        "image platform {}/{}",
        config["os"],
        config["architecture"]
    );
    Ok(())
}

/// The image's `Env`, as `(name, value)` pairs.
fn image_env(config: &Value) -> Result<Vec<(String, String)>> {
    config["config"]["Env"]
        .as_array()
        .context("image config has no Env")?
        .iter()
        .map(|e| {
            e.as_str()
                .and_then(|s| s.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("image Env entry {e} is not NAME=value"))
        })
        .collect()
}

/// The container's `command: [name]` of a chart template and the `--flags` of its `args`.
fn chart_command(template: &str) -> Result<(String, Vec<String>)> {
    let command = template
        .lines()
        .find_map(|l| l.trim().strip_prefix("command: ["))
        .and_then(|rest| rest.strip_suffix(']'))
        .context("no `command: [name]` line")?
        .trim()
        .to_owned();
    let flags = template
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --"))
        .map(|rest| format!("--{}", rest.split(['=', ' ']).next().unwrap_or(rest)))
        .collect();
    Ok((command, flags))
}

/// Where `name` is found through the image's PATH, as runc would look it up.
fn resolve_in_image(rootfs: &Path, env: &[(String, String)], name: &str) -> Result<PathBuf> {
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .context(
            "the image sets no PATH: the chart's `command: [sonde-agent]` could not be found",
        )?;
    path.split(':')
        .map(|dir| rootfs.join(dir.trim_start_matches('/')).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is on no directory of the image's PATH {path}"))
}

/// `chroot --userspec=uid:uid ROOTFS` with exactly the image's environment.
fn chroot(rootfs: &Path, env: &[(String, String)], uid: u32) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg(format!("--userspec={uid}:{uid}"))
        .arg(rootfs);
    cmd
}

fn manifests_yaml(marker: &str) -> String {
    format!(
        r#"apiVersion: sonde.dev/v1alpha1
kind: BpftraceScript
metadata:
  name: image-opens
spec:
  tableName: image_opens
  program: |
    tracepoint:syscalls:sys_enter_openat /str(args->filename) == "{marker}"/
    {{
      printf("comm:%s file:%s\n", comm, str(args->filename));
    }}
---
apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: image-http
spec:
  process:
    exe: '*/curl'
  probe:
    protocols: [http]
"#
    )
}

/// The agent chrooted into the image with the agent DaemonSet's volume mounts (in a mount namespace
/// of its own, so they vanish with it), the image's environment plus the chart's, and the chart's
/// command; `--manifests` instead of a NodeAssignment.
fn start_agent(rootfs: &Path, env: &[(String, String)], port: u16, logs: &Path) -> Result<Proc> {
    const MOUNTS: &str = r#"set -eu
r="$1"; shift
# charts/sonde/templates/agent-daemonset.yaml volumeMounts; /proc (hostPID) and /dev (privileged)
# come from the runtime.
mount --bind /proc "$r/proc"
mount --rbind /dev "$r/dev"
mount --bind /sys "$r/sys" && mount -o remount,bind,ro "$r/sys"
mount --bind /sys/kernel/tracing "$r/sys/kernel/tracing"
mount --bind /sys/kernel/debug "$r/sys/kernel/debug"
mount --bind /sys/fs/bpf "$r/sys/fs/bpf"
mount --bind /sys/fs/cgroup "$r/sys/fs/cgroup" && mount -o remount,bind,ro "$r/sys/fs/cgroup"
exec chroot "$r" "$@"
"#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        MOUNTS,
        "sh",
    ])
    .arg(rootfs)
    .args([
        "sonde-agent".to_owned(),
        format!("--listen=127.0.0.1:{port}"),
        "--manifests=/etc/sonde-image-test".to_owned(),
    ])
    .env_clear()
    .envs(env.iter().map(|(k, v)| (k, v)))
    .env("NODE_NAME", "image-test-node")
    .env("RUST_LOG", "info");
    Proc::spawn("image-agent", cmd, logs)
}

/// `Some(Ok)` once the BpftraceScript is Attached (bpftrace from the image runs) and the Tracepoint
/// waits for a `curl` (Pending) or traces one; `Some(Err)` at once when a probe Failed (no use
/// waiting out the deadline for a missing bpftrace); `None` meanwhile.
async fn probes_started(url: &str) -> Result<Option<Result<(), String>>> {
    let (code, body) = agent_get(url, "/v1/status", None).await?;
    ensure!(code == 200, "GET /v1/status: {code} {body}");
    let status: Value = serde_json::from_str(&body)?;
    let probes = &status["probes"];
    let state = |id: &str| {
        probes
            .as_array()
            .and_then(|probes| probes.iter().find(|p| p["id"] == id))
            .and_then(|p| p["state"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (script, tracepoint) = (
        state("BpftraceScript/image-opens"),
        state("Tracepoint/default/image-http"),
    );
    if script == "Failed" || tracepoint == "Failed" {
        return Ok(Some(Err(format!("a probe failed: {probes}"))));
    }
    let started = script == "Attached" && matches!(tracepoint.as_str(), "Pending" | "Attached");
    Ok(started.then_some(Ok(())))
}

/// The marker's open is in `image_opens` (bpftrace) and the curl's request in `http_events` (eBPF).
async fn rows_seen(url: &str, marker: &str, path: &str, port: u16) -> Result<()> {
    let rows = |table: &'static str| async move {
        let (code, body) = agent_get(url, &format!("/v1/tables/{table}?format=json"), None).await?;
        ensure!(code == 200, "GET /v1/tables/{table}: {code} {body}");
        Ok::<Vec<Value>, anyhow::Error>(serde_json::from_str(&body)?)
    };
    let opens = rows("image_opens").await?;
    ensure!(
        opens.iter().any(|r| r["file"] == marker),
        "no image_opens row for {marker} yet ({} rows)",
        opens.len()
    );
    let http = rows("http_events").await?;
    ensure!(
        http.iter().any(|r| r["req_path"] == path
            && r["remote_port"] == port
            && r["resp_status"] == 200
            && r["trace_role"] == "client"),
        "no http_events row for curl's GET {path} yet ({} rows)",
        http.len()
    );
    Ok(())
}

/// A loopback HTTP/1.1 server answering every request with 200 and closing the connection.
struct HttpServer {
    port: u16,
}

impl HttpServer {
    fn start() -> Result<HttpServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Ok(HttpServer { port })
    }
}

#[test]
fn containerfile_pins_what_the_chart_and_scripts_image_use() -> Result<()> {
    let root = workspace_root();
    let version = chart_app_version(&root)?;
    let instructions = containerfile_instructions(&root)?;
    let has = |word: &str, rest: &str| instructions.iter().any(|(w, r)| w == word && r == rest);
    ensure!(
        has("ARG", &format!("VERSION={version}")),
        "Containerfile must have `ARG VERSION={version}` (the chart's appVersion)"
    );
    ensure!(
        has("COPY", "--from=builder /out/usr/local/bin/ /usr/local/bin/"),
        "Containerfile must copy the binaries to /usr/local/bin/, where scripts/image puts them"
    );
    ensure!(
        instructions.iter().any(|(w, r)| w == "ARG"
            && r.starts_with("RUNTIME_PACKAGES=\"")
            && r.contains("bpftrace")),
        "Containerfile's RUNTIME_PACKAGES (read by scripts/image) must include bpftrace, which the agent runs"
    );
    Ok(())
}
