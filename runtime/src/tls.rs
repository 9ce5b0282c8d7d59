//! TLS for every Berth service: the server side (a certificate and key from PEM files, served to
//! each new connection and reloaded on SIGHUP or when the files change) and the client side
//! (the web's roots, compiled in, plus a given CA, to reach `https://` / `wss://` peers).
//!
//! rustls with the `ring` provider only: no C library beyond what a C compiler builds, no cmake.
//! The server's certificate sits behind a [`ResolvesServerCert`] that each handshake asks, so a
//! reload changes what new connections get while connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use rustls::ClientConfig;

/// The TLS flags of a service, flattened into its config.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// Certificate chain (PEM) to serve HTTPS / WSS with; needs `--tls-key`.
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate(s) (PEM) trusted, besides the system's web roots, when this process calls
    /// another Berth service over `https://` (the scheduler, for example).
    #[arg(long, env = "BERTH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// How often the certificate files are checked for changes, in seconds (0: only SIGHUP
    /// reloads them).
    #[arg(long, env = "BERTH_TLS_RELOAD_SECS", default_value_t = 10)]
    pub tls_reload_secs: u64,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: unusable private key: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{}: the key does not match the certificate", .0.display())]
    KeyMismatch(PathBuf),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("--tls-cert and --tls-key go together")]
    Incomplete,
}

/// The crypto provider of every Berth TLS endpoint.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsArgs {
    /// Whether these flags make the service serve HTTPS / WSS.
    pub fn serves(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The server side when a certificate and key are given, `None` for plain HTTP.
    pub fn server(&self) -> Result<Option<ServerTls>, TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = ServerTls::from_files(cert, key)?;
                Ok(Some(tls.with_reload_every(Duration::from_secs(
                    self.tls_reload_secs,
                ))))
            }
            (None, None) => Ok(None),
            _ => Err(TlsError::Incomplete),
        }
    }

    /// What a service's listeners accept TLS with (`None` for plain HTTP): the certificate from
    /// the files, kept reloaded (SIGHUP, file changes) until `stop` is cancelled.
    pub fn acceptor(&self, stop: CancellationToken) -> Result<Option<TlsAcceptor>, TlsError> {
        Ok(self.server()?.map(|tls| {
            tls.watch(stop);
            tls.acceptor()
        }))
    }

    /// The client side: the web roots plus `--tls-ca` when given.
    pub fn client(&self) -> Result<rustls::ClientConfig, TlsError> {
        client_config(self.tls_ca.as_deref())
    }
}

/// A client configuration trusting the web's roots (webpki-roots) and, when given, the CA
/// certificates in the PEM file `ca`.
pub fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        let certs = read_certs(ca)?;
        for cert in certs {
            roots.add(cert)?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Reads and checks a certificate chain and its key.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        path: key.to_owned(),
        source,
    })?;
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsError::Key {
            path: key.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        // A key whose public half cannot be derived cannot be checked; rustls accepts it.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(_) => Err(TlsError::KeyMismatch(key.to_owned())),
    }
}

/// The certificate every new handshake gets; replaced whole on reload.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// A service's TLS server side: accepts TLS connections with the current certificate.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    cert: PathBuf,
    key: PathBuf,
    reload_every: Duration,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads `cert` (PEM chain) and `key` (PEM private key); fails when they do not parse or do
    /// not match. HTTP/1.1 only (ALPN `http/1.1`), as every Berth listener.
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let current = Arc::new(CurrentCert(RwLock::new(Arc::new(load(cert, key)?))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cert: cert.to_owned(),
            key: key.to_owned(),
            reload_every: Duration::from_secs(10),
        })
    }

    /// Sets how often [`ServerTls::watch`] checks the files (zero: never, SIGHUP only).
    pub fn with_reload_every(mut self, every: Duration) -> ServerTls {
        self.reload_every = every;
        self
    }

    /// Reads the files again; new handshakes get the new certificate. On failure the current
    /// one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load(&self.cert, &self.key)?);
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The acceptor for listeners: each handshake gets the certificate current at that moment.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reloads the certificate on SIGHUP and when the files' modification times change, until
    /// `stop` is cancelled. Failures are logged and the current certificate kept.
    pub fn watch(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move { tls.reload_loop(stop).await })
    }

    async fn reload_loop(self, stop: CancellationToken) {
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload on file change only");
                None
            }
        };
        #[cfg(not(unix))]
        let mut hup = ();
        let mut stamp = self.stamp();
        let poll = if self.reload_every.is_zero() {
            Duration::MAX
        } else {
            self.reload_every
        };
        loop {
            let why = tokio::select! {
                () = stop.cancelled() => return,
                () = sighup(&mut hup) => "SIGHUP",
                () = tokio::time::sleep(poll) => {
                    let now = self.stamp();
                    if now == stamp {
                        continue;
                    }
                    stamp = now;
                    "file change"
                }
            };
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.cert.display(), why, "TLS certificate reloaded")
                }
                Err(e) => {
                    tracing::warn!(error = %e, why, "TLS certificate not reloaded; keeping the current one")
                }
            }
        }
    }

    /// The files' modification times (`None` for a file that cannot be read now).
    fn stamp(&self) -> [Option<SystemTime>; 2] {
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        [mtime(&self.cert), mtime(&self.key)]
    }
}

#[cfg(unix)]
async fn sighup(hup: &mut Option<tokio::signal::unix::Signal>) {
    match hup {
        Some(hup) => {
            if hup.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn sighup(_: &mut ()) {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a certificate for 127.0.0.1 signed by it, as PEM.
    struct Issued {
        ca: String,
        cert: String,
        key: String,
    }

    fn issue() -> Issued {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Issued {
            ca: ca.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        // Written beside and renamed, as certificate tools do, so a reader never sees half.
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    /// Whether a client trusting only `ca` completes a handshake with `addr`.
    async fn trusted_by(ca: &str, addr: std::net::SocketAddr) -> bool {
        let dir = temp_dir();
        let config = client_config(Some(&write(&dir, "ca.pem", ca))).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await.is_ok()
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn serves_the_certificate_and_follows_the_files() {
        let dir = temp_dir();
        let (first, second) = (issue(), issue());
        let cert = write(&dir, "cert.pem", &first.cert);
        let key = write(&dir, "key.pem", &first.key);
        let tls = ServerTls::from_files(&cert, &key)
            .unwrap()
            .with_reload_every(Duration::from_millis(20));
        let stop = CancellationToken::new();
        tls.watch(stop.clone());
        let acceptor = tls.acceptor();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (conn, _) = tcp.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move { drop(acceptor.accept(conn).await) });
            }
        });
        assert!(trusted_by(&first.ca, addr).await);
        assert!(!trusted_by(&second.ca, addr).await);

        // A key that does not match is refused and the served certificate stays.
        write(&dir, "key.pem", &second.key);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(trusted_by(&first.ca, addr).await);

        write(&dir, "cert.pem", &second.cert);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !trusted_by(&second.ca, addr).await {
            assert!(tokio::time::Instant::now() < deadline, "never reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!trusted_by(&first.ca, addr).await);
        stop.cancel();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_unusable_files() {
        let dir = temp_dir();
        let (a, b) = (issue(), issue());
        let cert = write(&dir, "cert.pem", &a.cert);
        let other_key = write(&dir, "other.pem", &b.key);
        assert!(matches!(
            ServerTls::from_files(&cert, &other_key),
            Err(TlsError::KeyMismatch(_))
        ));
        let empty = write(&dir, "empty.pem", "");
        assert!(ServerTls::from_files(&empty, &other_key).is_err());
        assert!(ServerTls::from_files(&dir.join("missing.pem"), &other_key).is_err());
        assert!(client_config(Some(&empty)).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
