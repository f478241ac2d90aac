//! The HTTPS listener with real certificates made by the `openssl` CLI (CI has it) and a real TLS
//! client that trusts only those certificates.
use std::path::Path;
use std::process::Command;

use axum::Router;
use axum::routing::get;
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::*;

const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// A self-signed certificate for localhost and 127.0.0.1 (not a CA, so it can serve as a leaf and
/// be its own trust root) and its key, written to `cert` and `key`.
fn make_cert(cert: &Path, key: &Path) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("these tests need the openssl CLI (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn der(cert: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(cert).expect("the test certificate is PEM")
}

/// A cert.pem/key.pem pair in a fresh directory.
struct Pair {
    dir: tempfile::TempDir,
    files: TlsFiles,
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    make_cert(&files.cert, &files.key);
    Pair { dir, files }
}

/// The agent's `serve` with `tls` on a free loopback port; stops when the token is cancelled.
/// Also returns its count of failed handshakes.
async fn start_counting(
    tls: Option<Arc<ServerConfig>>,
) -> (SocketAddr, CancellationToken, Counter) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let router = Router::new().route("/healthz", get(|| async { "ok" }));
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let failures = Counter::default();
    let counted = failures.clone();
    tokio::spawn(async move {
        crate::http::serve(listener, tls, counted, router, async move {
            stopped.cancelled().await
        })
        .await
        .expect("serve");
    });
    (addr, stop, failures)
}

async fn start(tls: Option<Arc<ServerConfig>>) -> (SocketAddr, CancellationToken) {
    let (addr, stop, _) = start_counting(tls).await;
    (addr, stop)
}

/// GET /healthz over TLS trusting only `roots`; the response and the certificate the server showed.
async fn get_healthz(
    addr: SocketAddr,
    roots: &[&Path],
) -> io::Result<(String, CertificateDer<'static>)> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(der(root)).expect("a usable root");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_root_certificates(store)
            .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let served = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the server showed a certificate")
        .clone()
        .into_owned();
    tls.write_all(REQUEST).await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await?;
    Ok((String::from_utf8_lossy(&response).into_owned(), served))
}

#[tokio::test]
async fn the_listener_answers_https_with_the_given_certificate() {
    let p = pair();
    let (addr, stop) = start(Some(server_config(p.files.clone()).expect("valid files"))).await;
    let (response, served) = get_healthz(addr, &[&p.files.cert])
        .await
        .expect("HTTPS GET");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    assert_eq!(served, der(&p.files.cert));
    stop.cancel();
}

#[tokio::test]
async fn the_tls_listener_refuses_plain_http_and_counts_it() {
    let p = pair();
    let (addr, stop, failures) =
        start_counting(Some(server_config(p.files.clone()).expect("valid files"))).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(REQUEST).await.expect("write");
    let mut response = Vec::new();
    // The server answers with a TLS alert (or nothing) and closes; a reset is fine too.
    let _ = tcp.read_to_end(&mut response).await;
    assert!(
        !response.starts_with(b"HTTP/"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&response)
    );
    // Counted once the listener collects the failed handshake (its next turn).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while failures.get() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(failures.get(), 1, "failed handshakes counted");
    stop.cancel();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_from_the_next_connection() {
    let p = pair();
    let (addr, stop) = start(Some(server_config(p.files.clone()).expect("valid files"))).await;
    let old = der(&p.files.cert);
    let renewed = TlsFiles {
        cert: p.dir.path().join("new.crt"),
        key: p.dir.path().join("new.key"),
    };
    make_cert(&renewed.cert, &renewed.key);
    // The client trusts both certificates, as copies: the renewal moves the files.
    let roots = [
        p.dir.path().join("old-root.crt"),
        p.dir.path().join("new-root.crt"),
    ];
    std::fs::copy(&p.files.cert, &roots[0]).expect("copy");
    std::fs::copy(&renewed.cert, &roots[1]).expect("copy");
    let roots: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
    let (_, served) = get_healthz(addr, &roots).await.expect("HTTPS GET");
    assert_eq!(served, old);
    // As a Secret volume does: new files renamed over the old ones.
    std::fs::rename(&renewed.key, &p.files.key).expect("rename key");
    std::fs::rename(&renewed.cert, &p.files.cert).expect("rename cert");
    let (response, served) = get_healthz(addr, &roots).await.expect("HTTPS GET");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(served, der(&p.files.cert));
    assert_ne!(served, old);
    stop.cancel();
}

#[tokio::test]
async fn an_unusable_renewed_key_keeps_the_previous_certificate() {
    let p = pair();
    let (addr, stop) = start(Some(server_config(p.files.clone()).expect("valid files"))).await;
    let old = der(&p.files.cert);
    std::fs::write(&p.files.key, "not a key\n").expect("write");
    let (response, served) = get_healthz(addr, &[&p.files.cert])
        .await
        .expect("HTTPS GET");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(served, old);
    stop.cancel();
}

#[test]
fn a_key_file_without_a_key_names_the_flag_and_the_file() {
    let p = pair();
    std::fs::copy(&p.files.cert, &p.files.key).expect("copy");
    let message = server_config(p.files.clone()).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "--tls-key-file: no private key found in {}: expected a PEM PRIVATE KEY block (PKCS#8, or RSA/EC PRIVATE KEY)",
            p.files.key.display()
        )
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let p = pair();
    let other = p.dir.path().join("other.crt");
    make_cert(&other, &p.dir.path().join("other.key"));
    let files = TlsFiles {
        cert: other,
        key: p.files.key.clone(),
    };
    let message = server_config(files).unwrap_err().to_string();
    assert!(
        message.starts_with("--tls-key-file: the private key in") && message.contains("other.crt"),
        "{message}"
    );
}

#[test]
fn missing_or_empty_files_name_the_flag_and_the_file() {
    let p = pair();
    let missing = TlsFiles {
        cert: p.dir.path().join("absent.crt"),
        key: p.files.key.clone(),
    };
    let message = server_config(missing).unwrap_err().to_string();
    assert!(
        message.starts_with("--tls-cert-file: cannot read") && message.contains("absent.crt"),
        "{message}"
    );
    std::fs::write(&p.files.cert, "").expect("write");
    let message = server_config(p.files.clone()).unwrap_err().to_string();
    assert!(
        message.starts_with("--tls-cert-file: no certificate found in"),
        "{message}"
    );
}
