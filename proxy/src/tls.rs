//! TLS for inspected endpoints: the sandbox's own CA (generated when the sandbox is
//! created; its key lives only in the supervisor's memory), leaf certificates per host
//! (cached), and the client side towards the real upstream, verified against the host's
//! trust store plus any `--upstream-ca`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A TLS setup problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating or signing a certificate failed.
    #[error("certificate: {0}")]
    Cert(String),
    /// A trust file could not be read.
    #[error("{0}")]
    Trust(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The sandbox CA.
pub struct SandboxCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl SandboxCa {
    /// Generate a fresh CA (ECDSA P-256, one year) named after the sandbox.
    pub fn generate(sandbox: &str) -> Result<Self, TlsError> {
        let err = |e: rcgen::Error| TlsError::Cert(e.to_string());
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.distinguished_name.push(
            DnType::CommonName,
            format!("openshell sandbox {sandbox} CA"),
        );
        p.distinguished_name
            .push(DnType::OrganizationName, "openshell");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(365);
        let key = KeyPair::generate().map_err(err)?;
        let issuer = CertifiedIssuer::self_signed(p, key).map_err(err)?;
        Ok(Self {
            issuer,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate (PEM), to be trusted inside the sandbox.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server config presenting a leaf for `host` (cached per host).
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        if let Some(c) = self
            .leaves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
        {
            return Ok(c.clone());
        }
        let err = |e: rcgen::Error| TlsError::Cert(e.to_string());
        let mut p = CertificateParams::new(vec![host.to_string()]).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, host);
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(30);
        let key = KeyPair::generate().map_err(err)?;
        let cert = p.signed_by(&key, &self.issuer).map_err(err)?;
        let chain = vec![cert.der().clone(), self.issuer.der().clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Cert(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| TlsError::Cert(e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        self.leaves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), cfg.clone());
        Ok(cfg)
    }
}

/// The client config towards upstreams: the host's roots (`SSL_CERT_FILE` or the
/// Debian bundle) plus `extra` CA files.
pub fn upstream_client(extra: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let mut files = vec![(system, false)];
    files.extend(extra.iter().map(|f| (f.clone(), true)));
    for (file, required) in files {
        let certs: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&file) {
            Ok(it) => it.flatten().collect(),
            Err(e) if required => {
                return Err(TlsError::Trust(format!(
                    "--upstream-ca {}: {e}",
                    file.display()
                )));
            }
            Err(_) => continue,
        };
        if required && certs.is_empty() {
            return Err(TlsError::Trust(format!(
                "--upstream-ca {}: no PEM certificate in it",
                file.display()
            )));
        }
        for c in certs {
            let _ = roots.add(c);
        }
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Trust(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
