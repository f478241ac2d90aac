//! HTTPS for the agent's listener (`--tls-cert-file`, `--tls-key-file`): bearer tokens and table rows
//! must not cross the pod network in clear text. The certificate is re-read when its files change
//! (cert-manager renews it in place); a bad new file keeps the previous certificate.
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info, warn};

/// A client that connects but does not finish its handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate chain and private key files, as given on the command line.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag}: cannot read {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{flag}: {} is not valid PEM: {source}", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error(
        "--tls-cert-file: no certificate found in {}: expected a PEM CERTIFICATE block (the server certificate first, then its intermediates)",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error(
        "--tls-key-file: no private key found in {}: expected a PEM PRIVATE KEY block (PKCS#8, or RSA/EC PRIVATE KEY)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error(
        "--tls-key-file: the private key in {} cannot serve the certificate in {}: {source}; give the key the certificate was issued for (tls.key next to tls.crt)",
        key.display(), cert.display()
    )]
    Key {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Config(#[source] rustls::Error),
}

/// The TLS configuration of the listener: TLS 1.2 and 1.3 with the ring provider (as kube uses),
/// HTTP/1.1 (the only HTTP version the router serves). Fails if the files are unusable now.
pub fn server_config(files: TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = CertResolver::new(files, provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads and checks the certificate chain and key.
fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let read = |flag, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            flag,
            path: path.to_owned(),
            source,
        })
    };
    let pem_error = |flag, path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Pem { flag, path, source }
    };
    let chain = CertificateDer::pem_slice_iter(&read("--tls-cert-file", &files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error("--tls-cert-file", &files.cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(&read("--tls-key-file", &files.key)?) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: files.key.clone(),
            });
        }
        Err(e) => return Err(pem_error("--tls-key-file", &files.key)(e)),
    };
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

/// What identifies a version of a file: a renewal writes a new file (Secret volumes swap a
/// symlink, so the inode changes) or rewrites it (new mtime or size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    inode: u64,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        inode: meta.ino(),
        len: meta.len(),
    })
}

#[derive(Debug)]
struct Loaded {
    /// Stamps of (cert, key) when last read, whether that read worked or not.
    seen: (Option<Stamp>, Option<Stamp>),
    current: Arc<CertifiedKey>,
}

/// Serves the certificate read last, re-reading the files on a handshake when their stamps changed:
/// two `stat` calls per handshake, no timer, and a renewal is served from the next connection on.
#[derive(Debug)]
struct CertResolver {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl CertResolver {
    fn new(files: TlsFiles, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let seen = (stamp(&files.cert), stamp(&files.key));
        let current = Arc::new(load(&files, &provider)?);
        Ok(CertResolver {
            files,
            provider,
            loaded: Mutex::new(Loaded { seen, current }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        // A panic elsewhere while holding the lock leaves a consistent Loaded: keep serving.
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if now != loaded.seen {
            loaded.seen = now;
            match load(&self.files, &self.provider) {
                Ok(key) => {
                    info!(cert = %self.files.cert.display(), "serving the renewed TLS certificate");
                    loaded.current = Arc::new(key);
                }
                Err(e) => warn!("{e}; still serving the previous certificate"),
            }
        }
        loaded.current.clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A listener for `axum::serve` that yields connections once their TLS handshake is done. Handshakes
/// run in their own tasks, so a slow client does not hold up the others.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<io::Result<(TlsStream<TcpStream>, SocketAddr)>>,
    /// Handshakes that failed or timed out.
    failures: Counter,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>, failures: Counter) -> Self {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
            failures,
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> io::Result<(TlsStream<TcpStream>, SocketAddr)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(tls) => Ok((tls?, peer)),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
        )),
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                Some(done) = self.handshakes.join_next() => match done {
                    Ok(Ok(connection)) => return connection,
                    // A plain-HTTP client, a scanner, or a client that does not trust our CA:
                    // counted, logged at debug only (anyone reaching the port can make them).
                    Ok(Err(e)) => {
                        self.failures.inc();
                        debug!("TLS handshake failed: {e}");
                    }
                    Err(e) => error!("a TLS handshake task failed: {e}"),
                },
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        self.handshakes.spawn(handshake(self.acceptor.clone(), stream, peer));
                    }
                    Err(e) if is_connection_error(&e) => {}
                    // Out of file descriptors and the like: wait as axum's own listener does.
                    Err(e) => {
                        error!("cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests;
