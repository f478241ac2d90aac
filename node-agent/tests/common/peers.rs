//! Database and DNS servers from Debian packages for the real-kernel tests: each on a free loopback
//! port with its files in the test's directory, stopped by pid (see [`super::Server`]).
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use super::{Server, TestCgroup, run_ok, wait_until, which};

// --- dnsmasq + dig ---

pub fn start_dnsmasq(dir: &std::path::Path, port: u16) -> Server {
    start_dnsmasq_at(dir, Ipv4Addr::LOCALHOST, port)
}

/// dnsmasq answering on `addr`:`port` only.
pub fn start_dnsmasq_at(dir: &std::path::Path, addr: Ipv4Addr, port: u16) -> Server {
    start_dnsmasq_with(dir, addr, port, &[])
}

/// [`start_dnsmasq_at`] with more of dnsmasq's options (records of other types).
pub fn start_dnsmasq_with(
    dir: &std::path::Path,
    addr: Ipv4Addr,
    port: u16,
    extra: &[&str],
) -> Server {
    let child = Command::new(which("dnsmasq"))
        .args([
            "--no-daemon", // also keeps TCP queries in this process (no fork per connection)
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--local=/sonde.test/",
            "--host-record=web.sonde.test,10.0.0.7,fd00::7",
            "--cname=www.sonde.test,web.sonde.test",
            "--address=/blocked.sonde.test/10.9.9.9",
        ])
        .args(extra)
        .arg(format!("--listen-address={addr}"))
        .arg(format!("--port={port}"))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .arg(format!(
            "--log-facility={}",
            dir.join("dnsmasq.log").display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .expect("starting dnsmasq");
    let server = Server {
        child,
        signal: Signal::SIGTERM,
    };
    wait_until("dnsmasq", || {
        dig_at(addr, port, &["ready.sonde.test", "A"]).is_some()
    });
    server
}

/// dig's answer section, None if it failed.
pub fn dig(port: u16, args: &[&str]) -> Option<String> {
    dig_at(Ipv4Addr::LOCALHOST, port, args)
}

/// [`dig`] asking the server on `addr`.
pub fn dig_at(addr: Ipv4Addr, port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new(which("dig"))
        .arg(format!("@{addr}"))
        .args(["-p", &port.to_string(), "+tries=1", "+time=5", "+short"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

// --- PostgreSQL 15 ---

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const PG_PASSWORD: &str = "sonde-secret";

pub fn pg_tool(name: &str) -> PathBuf {
    let path = Path::new(PG_BIN).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/setup peers` (PostgreSQL 15)",
        path.display()
    );
    path
}

/// `setpriv` arguments that run the rest of the command line as the `postgres` user (PostgreSQL
/// refuses to run as root). setpriv execs, so the pid stays the server's.
pub const AS_POSTGRES: [&str; 4] = [
    "--reuid=postgres",
    "--regid=postgres",
    "--init-groups",
    "--",
];

/// A new cluster in `dir/data` with password authentication on TCP (so the startup exchange carries
/// a secret to redact); `dir` is handed to the postgres user.
pub fn init_postgres(dir: &Path) -> PathBuf {
    init_postgres_with(dir, PgLogins::Password)
}

/// How TCP logins to a test cluster are checked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PgLogins {
    /// With [`PG_PASSWORD`].
    Password,
    /// Without a password.
    Trust,
}

/// [`init_postgres`] with TCP logins checked as `logins` says.
pub fn init_postgres_with(dir: &Path, logins: PgLogins) -> PathBuf {
    let host_auth = match logins {
        PgLogins::Password => "--auth-host=password",
        PgLogins::Trust => "--auth-host=trust",
    };
    let data = dir.join("data");
    std::fs::write(dir.join("pw"), PG_PASSWORD).unwrap();
    run_ok(
        Command::new(which("chown"))
            .arg("-R")
            .arg("postgres:postgres")
            .arg(dir),
    );
    run_ok(
        Command::new(which("setpriv"))
            .args(AS_POSTGRES)
            .arg(pg_tool("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth-local=trust", host_auth])
            .arg(format!("--pwfile={}", dir.join("pw").display()))
            .current_dir(dir),
    );
    data
}

/// The postmaster on `data`, listening on 127.0.0.1:`port` with its Unix socket in `dir`; moved into
/// `cgroup` before it starts, so every backend it forks is in there too.
pub fn start_postgres(dir: &Path, data: &Path, port: u16, cgroup: Option<&TestCgroup>) -> Server {
    let mut cmd = match cgroup {
        Some(cgroup) => {
            let mut sh = Command::new("/bin/sh");
            sh.args(cgroup.enter_and_exec()).arg(which("setpriv"));
            sh
        }
        None => Command::new(which("setpriv")),
    };
    let log = std::fs::File::create(dir.join(format!("postgres-{port}.log"))).unwrap();
    let child = cmd
        .args(AS_POSTGRES)
        .arg(pg_tool("postgres"))
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        .arg("-k")
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting postgres");
    // SIGINT is PostgreSQL's fast shutdown: backends are ended, not waited for.
    let server = Server {
        child,
        signal: Signal::SIGINT,
    };
    wait_until("postgres", || {
        Command::new(pg_tool("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    });
    server
}

// --- MariaDB ---

/// A new data directory in `dir/data`; root may log in over TCP without a password.
pub fn init_mariadb(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    run_ok(
        Command::new(which("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=root", "--auth-root-authentication-method=normal"]),
    );
    data
}

pub fn mariadb_socket(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("mariadb-{port}.sock"))
}

/// mariadbd on `data`, listening on 127.0.0.1:`port`, with database `sonde` created over its Unix
/// socket (before any tracing starts).
pub fn start_mariadb(dir: &Path, data: &Path, port: u16) -> Server {
    start_mariadb_with(dir, data, port, &[])
}

/// [`start_mariadb`] with more of mariadbd's options (`--local-infile=1`).
pub fn start_mariadb_with(dir: &Path, data: &Path, port: u16, extra: &[&str]) -> Server {
    let socket = mariadb_socket(dir, port);
    let child = Command::new(which("mariadbd"))
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--user=root", "--bind-address=127.0.0.1", "--skip-log-bin"])
        .args(extra)
        .arg(format!("--port={port}"))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!(
            "--pid-file={}",
            dir.join(format!("mariadb-{port}.pid")).display()
        ))
        .arg(format!(
            "--log-error={}",
            dir.join(format!("mariadb-{port}.err")).display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its only stderr line here is the max_open_files warning; the rest goes to --log-error.
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mariadbd");
    let server = Server {
        child,
        signal: Signal::SIGTERM,
    };
    let over_socket = |sql: &str| {
        Command::new(which("mariadb"))
            .arg("--no-defaults")
            .arg(format!("--socket={}", socket.display()))
            .args(["-u", "root", "-e", sql])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    wait_until("mariadbd", || over_socket("SELECT 1"));
    assert!(
        over_socket("CREATE DATABASE sonde"),
        "cannot create database sonde"
    );
    server
}
