//! Real peer programs the e2e suites run inside fake pods: nginx answering `hello`, curl as its
//! client, and the profiler's CPU-bound C fixture.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::wait;

/// Debian's nginx binary, or an error saying how to install it.
pub fn nginx() -> Result<PathBuf> {
    let path = PathBuf::from("/usr/sbin/nginx");
    ensure!(
        path.exists(),
        "nginx is not installed: run `scripts/setup peers`"
    );
    Ok(path)
}

/// The command line that runs `nginx` with `conf`.
pub fn nginx_command(nginx: &Path, conf: &Path) -> Vec<String> {
    vec![
        nginx.to_string_lossy().into_owned(),
        "-c".into(),
        conf.to_string_lossy().into_owned(),
    ]
}

/// An nginx config with one worker answering `return 200` on `port`, everything under `dir`.
pub fn nginx_conf(dir: &Path, port: u16) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid; error_log stderr;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )?;
    Ok(conf)
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16) -> Result<()> {
    wait::until_ok(
        &format!("nginx listening on {port}"),
        Duration::from_secs(10),
        || async move {
            std::net::TcpStream::connect(("127.0.0.1", port))?;
            Ok(())
        },
    )
    .await
}

/// One HTTP/1.1 GET of `path` on 127.0.0.1:`port` that must answer nginx's `hello`.
pub fn curl_hello(port: u16, path: &str) -> Result<()> {
    let out = Command::new("curl")
        .args([
            "-sf",
            "--http1.1",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .context("running curl: run `scripts/setup peers`")?;
    ensure!(
        out.status.success() && out.stdout == b"hello\n",
        "curl to port {port}: {out:?}"
    );
    Ok(())
}

/// Compiles the profiler's C fixture (two hot functions, 3:1) with frame pointers into `dir`.
pub fn compile_hot(dir: &Path) -> Result<PathBuf> {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../node-agent/tests/fixtures/profiler/hot.c");
    let bin = dir.join("hot");
    let out = Command::new("cc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running cc: install a C compiler (apt-get install gcc)")?;
    ensure!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(bin)
}
