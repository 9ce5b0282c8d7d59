//! [`Tls`]: whom the client trusts on `https://` and `wss://` URLs: the web's roots (the
//! default), plus the CA certificates you give (a private CA, a test CA).
//!
//! rustls with the `ring` provider; plain `http://` and `ws://` URLs need none of it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::error::{ClientError, Result};

/// Trust for TLS connections; cheap to clone. `Tls::default()` trusts the web's roots.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Default for Tls {
    fn default() -> Self {
        static WEB: OnceLock<Tls> = OnceLock::new();
        WEB.get_or_init(|| Tls::build(&[]).expect("the web roots make a valid configuration"))
            .clone()
    }
}

impl Tls {
    /// The web's roots plus the CA certificate(s) in the PEM text `pem`.
    pub fn with_ca_pem(pem: &[u8]) -> Result<Tls> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("CA certificates: {e}")))?;
        if certs.is_empty() {
            return Err(ClientError::Tls("no CA certificate in the PEM text".into()));
        }
        Tls::build(&certs)
    }

    /// The web's roots plus the CA certificate(s) in the PEM file at `path`.
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Tls> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::Tls(format!("cannot read {}: {e}", path.display())))?;
        Tls::with_ca_pem(&pem).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))
    }

    fn build(extra: &[CertificateDer<'static>]) -> Result<Tls> {
        let mut roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra {
            roots
                .add(cert.clone())
                .map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Tls {
            config: Arc::new(config),
        })
    }

    /// The rustls configuration, for callers that open their own connections.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }
}
