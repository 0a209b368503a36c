//! A blocking OCI distribution client: manifests and streamed blobs, with the bearer
//! token dance, basic auth, TLS against the system store plus extra CAs, and plain http
//! only for loopback registries or ones the user names as insecure.
//!
//! Blocking on purpose: pulls run in their own process (so `run` stays single-threaded
//! before clone), with one thread per layer; ureq keeps the dependency tree small.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::auth::{self, Challenge, Credentials};
use crate::error::{ImageError, Result};
use crate::manifest::{ACCEPT, MAX_DOCUMENT};
use crate::reference::Reference;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Hosts (`host:port`) where plain http is allowed besides loopback.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM files) to trust.
    pub ca_files: Vec<PathBuf>,
    /// Credentials given on the command line (else the auth files).
    pub credentials: Option<Credentials>,
}

/// A client for one repository.
pub struct Client {
    agent: ureq::Agent,
    reference: Reference,
    base: String,
    creds: Option<Credentials>,
    token: Mutex<Option<String>>,
}

/// A blob being read.
pub struct Blob {
    /// The body.
    pub reader: Box<dyn Read + Send>,
    /// Content-Length, when sent.
    pub length: Option<u64>,
}

fn load_roots(extra: &[PathBuf]) -> Result<Vec<Certificate<'static>>> {
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let mut certs = Vec::new();
    let mut files = vec![(system, false)];
    files.extend(extra.iter().map(|f| (f.clone(), true)));
    for (file, required) in files {
        let pem = match std::fs::read(&file) {
            Ok(p) => p,
            Err(_) if !required => continue,
            Err(e) => {
                return Err(ImageError::Invalid(format!(
                    "--registry-ca {}: {e}",
                    file.display()
                )));
            }
        };
        let before = certs.len();
        for item in ureq::tls::parse_pem(&pem).flatten() {
            if let PemItem::Certificate(c) = item {
                certs.push(c);
            }
        }
        if required && certs.len() == before {
            return Err(ImageError::Invalid(format!(
                "--registry-ca {}: no PEM certificate in it",
                file.display()
            )));
        }
    }
    Ok(certs)
}

impl Client {
    /// A client for `reference`'s repository; decides https vs http once.
    pub fn new(reference: &Reference, opts: &RegistryOptions) -> Result<Self> {
        let roots = load_roots(&opts.ca_files)?;
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(Some(Duration::from_secs(600)))
            .max_redirects(5)
            .user_agent("openshell")
            .build();
        let agent: ureq::Agent = config.into();
        let host = reference.api_host().to_string();
        let plain_ok = reference.is_loopback() || opts.insecure.contains(&reference.registry);
        let base = if plain_ok && !speaks_https(&agent, &host) {
            format!("http://{host}")
        } else {
            format!("https://{host}")
        };
        let creds = opts
            .credentials
            .clone()
            .or_else(|| auth::lookup(&reference.registry, &reference.repository));
        Ok(Self {
            agent,
            reference: reference.clone(),
            base,
            creds,
            token: Mutex::new(None),
        })
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ImageError {
        let detail = e.to_string();
        if detail.contains("certificate") {
            return ImageError::Http {
                registry: self.reference.registry.clone(),
                detail: format!(
                    "TLS certificate not trusted ({}); if the registry uses a private CA, pass --registry-ca FILE",
                    detail.trim_start_matches("io: ")
                ),
            };
        }
        ImageError::Unreachable {
            registry: self.reference.registry.clone(),
            detail,
        }
    }

    /// GET `/v2/<repo>/<path>`, authenticating as the registry asks.
    fn get(&self, path: &str, accept: Option<&str>) -> Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}/v2/{}/{}", self.base, self.reference.repository, path);
        let mut tried_auth = false;
        loop {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(h) = self.auth_header() {
                req = req.header("Authorization", &h);
            }
            let resp = req.call().map_err(|e| self.unreachable(e))?;
            tracing::debug!("GET {url}: {}", resp.status());
            if resp.status().as_u16() != 401 || tried_auth {
                return Ok(resp);
            }
            tried_auth = true;
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .and_then(auth::parse_challenge);
            match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope,
                }) => {
                    let scope = scope.unwrap_or_else(|| {
                        format!("repository:{}:pull", self.reference.repository)
                    });
                    tracing::info!(
                        "{}: the registry asks for a token: {realm} (scope {scope}, {})",
                        self.reference.registry,
                        if self.creds.is_some() {
                            "with your credentials"
                        } else {
                            "anonymous"
                        }
                    );
                    let token = self.fetch_token(&realm, service.as_deref(), &scope)?;
                    *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
                }
                Some(Challenge::Basic) if self.creds.is_some() => {}
                _ => {
                    return Err(self.auth_error(
                        "authentication required; log in with 'openshell image login'",
                    ));
                }
            }
        }
    }

    fn auth_header(&self) -> Option<String> {
        if let Some(t) = self
            .token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Some(format!("Bearer {t}"));
        }
        self.creds.as_ref().map(Credentials::basic_header)
    }

    fn auth_error(&self, detail: &str) -> ImageError {
        ImageError::Auth {
            registry: self.reference.registry.clone(),
            reference: self.reference.to_string(),
            detail: detail.to_string(),
        }
    }

    fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        let mut req = self.agent.get(realm).query("scope", scope);
        if let Some(s) = service {
            req = req.query("service", s);
        }
        if let Some(c) = &self.creds {
            req = req.header("Authorization", &c.basic_header());
        }
        let mut resp = req
            .call()
            .map_err(|e| self.unreachable(format!("token server {realm}: {e}")))?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => {
                let detail = if self.creds.is_some() {
                    "the credentials were refused; check them with 'openshell image login'"
                } else {
                    "anonymous access denied; log in with 'openshell image login'"
                };
                return Err(self.auth_error(detail));
            }
            s => return Err(self.auth_error(&format!("token server {realm} answered {s}"))),
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.auth_error(&format!("token server sent no JSON: {e}")))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| self.auth_error("token server sent no token"))
    }

    fn status_error(&self, status: u16, what: &str) -> ImageError {
        match status {
            404 => ImageError::NotFound {
                registry: self.reference.registry.clone(),
                what: what.to_string(),
            },
            401 | 403 => self
                .auth_error("access denied (wrong credentials, or no access to this repository)"),
            s => ImageError::Http {
                registry: self.reference.registry.clone(),
                detail: format!("{what}: HTTP {s}"),
            },
        }
    }

    /// Fetch a manifest or index by tag or digest: (bytes, content type).
    pub fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Option<String>)> {
        let what = format!("manifest {}:{reference}", self.reference.repository);
        let mut resp = self.get(&format!("manifests/{reference}"), Some(ACCEPT))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(self.status_error(status, &what));
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT)
            .read_to_vec()
            .map_err(|e| ImageError::Limit(format!("{what}: {e} (limit {MAX_DOCUMENT} bytes)")))?;
        Ok((body, ct))
    }

    /// Open a blob for streaming.
    pub fn blob(&self, digest: &str) -> Result<Blob> {
        let resp = self.get(&format!("blobs/{digest}"), None)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(self.status_error(status, &format!("blob {digest}")));
        }
        let length = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Blob {
            reader: Box::new(resp.into_body().into_reader()),
            length,
        })
    }

    /// Check credentials against the registry's `/v2/` endpoint (for `image login`).
    pub fn check_login(&self) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| self.unreachable(e))?;
        if resp.status().as_u16() == 200 {
            return Ok(());
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .and_then(auth::parse_challenge);
        match challenge {
            Some(Challenge::Bearer { realm, service, .. }) => self
                .fetch_token(&realm, service.as_deref(), "registry:catalog:*")
                .map(|_| ()),
            Some(Challenge::Basic) => {
                let mut req = self.agent.get(&url);
                if let Some(c) = &self.creds {
                    req = req.header("Authorization", &c.basic_header());
                }
                let r = req.call().map_err(|e| self.unreachable(e))?;
                if r.status().as_u16() == 200 {
                    Ok(())
                } else {
                    Err(self.auth_error("the credentials were refused"))
                }
            }
            None => Err(self.status_error(resp.status().as_u16(), "/v2/")),
        }
    }
}

/// Does `host` answer TLS? Used only for hosts where plain http is allowed: an answer,
/// or a TLS error about its certificate, means https (and a certificate problem is then
/// reported as such); anything else (a plain-http server, nothing listening) means http.
fn speaks_https(agent: &ureq::Agent, host: &str) -> bool {
    match agent.get(format!("https://{host}/v2/")).call() {
        Ok(_) => true,
        Err(e) => e.to_string().to_ascii_lowercase().contains("certificate"),
    }
}
