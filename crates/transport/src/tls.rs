//! TLS for the `ssl` and `wss` listeners: a `rustls::ServerConfig` built from `ssl_options`, with *ring* as the
//! only crypto provider, a server certificate that follows its files, and the handshake with a timeout.
//!
//! [`TlsContext`] owns one listener's TLS state. Its certificate and key are served by [`ReloadingCert`] (a
//! `ResolvesServerCert`); the client CA, which rustls fixes inside the verifier, is applied by building a new
//! `ServerConfig` around the same resolver. Files are reloaded when [`TlsContext::reload`] is called (SIGHUP) and
//! when their modification time or size changed, checked at most once a second as connections arrive
//! ([`TlsContext::acceptor`]). A connection keeps the config and certificate it started with, so reloads never
//! touch existing connections; a file that does not load keeps the old certificate and logs an error.

use crate::certs::DefaultCerts;
use crate::TransportError;
use halyard_core::config::{SslOptions, TlsVersion, VerifyMode};
use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How often [`TlsContext::acceptor`] looks at the files' modification times.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is not valid PEM: {message}")]
    Pem { what: &'static str, path: PathBuf, message: String },
    #[error("{what} {path} holds no {expected}")]
    Empty { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("certfile {cert} and keyfile {key} do not belong together: {source}")]
    KeyMismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("cacertfile {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error(
        "ssl_options.ciphers: {name:?} is not a cipher suite this server supports; supported (IANA or OpenSSL \
         names): {supported}"
    )]
    UnknownCipher { name: String, supported: String },
    #[error("ssl_options.ciphers has no cipher suite for {version}, which ssl_options.versions enables")]
    NoCipherForVersion { version: &'static str },
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The one crypto provider of the process: *ring* with all its cipher suites and key exchange groups.
pub fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Installs *ring* as the process-wide default `CryptoProvider`, for any rustls user in the process that does
/// not name one (Halyard's own configs always pass it explicitly). Returns true when ring is the default
/// afterwards (also when it already was), false when another provider had been installed first.
pub fn install_default_provider() -> bool {
    let _ = ring_provider().install_default();
    CryptoProvider::get_default().is_some_and(|p| {
        let ring = ring_provider();
        p.cipher_suites.len() == ring.cipher_suites.len()
            && p.cipher_suites.iter().zip(&ring.cipher_suites).all(|(a, b)| a.suite() == b.suite())
    })
}

/// (IANA name, OpenSSL name, suite) of every suite ring offers.
fn cipher_table() -> [(&'static str, &'static str, SupportedCipherSuite); 9] {
    use rustls::crypto::ring::cipher_suite as cs;
    [
        ("TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", cs::TLS13_AES_256_GCM_SHA384),
        ("TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", cs::TLS13_AES_128_GCM_SHA256),
        ("TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256", cs::TLS13_CHACHA20_POLY1305_SHA256),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384",
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            "ECDHE-RSA-CHACHA20-POLY1305",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ]
}

/// Maps `ssl_options.ciphers` names (IANA such as `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`, OpenSSL such as
/// `ECDHE-RSA-AES128-GCM-SHA256`, or rustls's `TLS13_AES_128_GCM_SHA256`; any case) to ring's suites, in the
/// order given; empty: every suite. Each enabled version must keep at least one suite.
pub fn cipher_suites(names: &[String], versions: &[TlsVersion]) -> Result<Vec<SupportedCipherSuite>, TlsError> {
    let table = cipher_table();
    let mut out: Vec<SupportedCipherSuite> = Vec::new();
    if names.is_empty() {
        out = ring_provider().cipher_suites;
    }
    for name in names {
        let n = name.trim();
        let found = table.iter().find(|(iana, openssl, suite)| {
            n.eq_ignore_ascii_case(iana)
                || n.eq_ignore_ascii_case(openssl)
                || suite.suite().as_str().is_some_and(|s| n.eq_ignore_ascii_case(s))
        });
        let Some((_, _, suite)) = found else {
            let supported = table.iter().map(|(i, o, _)| if i == o { i.to_string() } else { format!("{i} ({o})") });
            return Err(TlsError::UnknownCipher {
                name: name.clone(),
                supported: supported.collect::<Vec<_>>().join(", "),
            });
        };
        if !out.iter().any(|s| s.suite() == suite.suite()) {
            out.push(*suite);
        }
    }
    for v in versions {
        let (want, label) = match v {
            TlsVersion::Tlsv13 => (&rustls::version::TLS13, "tlsv1.3"),
            TlsVersion::Tlsv12 => (&rustls::version::TLS12, "tlsv1.2"),
        };
        if !out.iter().any(|s| s.version() == want) {
            return Err(TlsError::NoCipherForVersion { version: label });
        }
    }
    Ok(out)
}

fn protocol_versions(versions: &[TlsVersion]) -> Vec<&'static SupportedProtocolVersion> {
    let mut out = Vec::new();
    for v in versions {
        let p = match v {
            TlsVersion::Tlsv13 => &rustls::version::TLS13,
            TlsVersion::Tlsv12 => &rustls::version::TLS12,
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Reads a PEM certificate chain (leaf first).
pub fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Read { what, path: path.into(), source: e })?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        what,
        path: path.into(),
        message: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.into(), expected: "CERTIFICATE" });
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "keyfile";
    let pem = std::fs::read(path).map_err(|e| TlsError::Read { what, path: path.into(), source: e })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            TlsError::Empty { what, path: path.into(), expected: "PRIVATE KEY" }
        }
        e => TlsError::Pem { what, path: path.into(), message: e.to_string() },
    })
}

/// The server certificate of one listener, replaced by reloads. Handshakes read the current one.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    pub fn new(key: Arc<CertifiedKey>) -> ReloadingCert {
        ReloadingCert { current: RwLock::new(key) }
    }
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().clone()
    }
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write() = key;
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The files one listener's TLS uses, after defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Only read with `verify = "verify_peer"`.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// `ssl_options`' files, each unset one taken from the generated defaults.
    pub fn resolve(opts: &SslOptions, defaults: &DefaultCerts) -> TlsFiles {
        TlsFiles {
            cert: opts.certfile.clone().unwrap_or_else(|| defaults.cert.clone()),
            key: opts.keyfile.clone().unwrap_or_else(|| defaults.key.clone()),
            ca: opts.cacertfile.clone().unwrap_or_else(|| defaults.ca.clone()),
        }
    }
}

/// Modification time and length of a file, to notice a change.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// One listener's TLS: the current `ServerConfig` and what it is rebuilt from.
#[derive(Debug)]
pub struct TlsContext {
    files: TlsFiles,
    verify: VerifyMode,
    fail_if_no_peer_cert: bool,
    provider: Arc<CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
    resolver: Arc<ReloadingCert>,
    config: RwLock<Arc<ServerConfig>>,
    /// The files' stamps when last loaded (or tried): [cert, key, ca].
    stamps: Mutex<[Stamp; 3]>,
    last_check: Mutex<Instant>,
    /// `ssl_options.handshake_timeout`.
    pub handshake_timeout: Duration,
}

impl TlsContext {
    /// Builds the listener's TLS from `ssl_options`; unset files come from `defaults` (see
    /// [`crate::certs::ensure_default_certs`]). Fails when a file does not load or a setting is not supported.
    pub fn new(opts: &SslOptions, defaults: &DefaultCerts) -> Result<TlsContext, TlsError> {
        let files = TlsFiles::resolve(opts, defaults);
        let suites = cipher_suites(&opts.ciphers.0, &opts.versions)?;
        let provider = Arc::new(CryptoProvider { cipher_suites: suites, ..ring_provider() });
        let versions = protocol_versions(&opts.versions);
        let stamps = [stamp(&files.cert), stamp(&files.key), stamp(&files.ca)];
        let key = load_certified_key(&files, &provider)?;
        let resolver = Arc::new(ReloadingCert::new(Arc::new(key)));
        let config = build_config(&files, opts.verify, opts.fail_if_no_peer_cert, &provider, &versions, &resolver)?;
        Ok(TlsContext {
            files,
            verify: opts.verify,
            fail_if_no_peer_cert: opts.fail_if_no_peer_cert,
            provider,
            versions,
            resolver,
            config: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
            last_check: Mutex::new(Instant::now()),
            handshake_timeout: opts.handshake_timeout.0,
        })
    }

    fn build_config(&self) -> Result<ServerConfig, TlsError> {
        build_config(
            &self.files,
            self.verify,
            self.fail_if_no_peer_cert,
            &self.provider,
            &self.versions,
            &self.resolver,
        )
    }

    /// An acceptor over the current config, for the next connection. At most once per [`CHECK_INTERVAL`] it
    /// first looks whether the files changed, and reloads them if so (a failure is logged; the old certificate
    /// stays).
    pub fn acceptor(&self) -> TlsAcceptor {
        let due = {
            let mut last = self.last_check.lock();
            let due = last.elapsed() >= CHECK_INTERVAL;
            if due {
                *last = Instant::now();
            }
            due
        };
        if due {
            let _ = self.reload_if_changed();
        }
        TlsAcceptor::from(self.config())
    }

    /// The current `ServerConfig`.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.read().clone()
    }

    /// The certificate new handshakes present.
    pub fn certificate(&self) -> Arc<CertifiedKey> {
        self.resolver.current()
    }

    /// Reloads whatever files changed since they were last loaded (by modification time and size). Returns
    /// whether anything was reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = [stamp(&self.files.cert), stamp(&self.files.key), stamp(&self.files.ca)];
        let before = *self.stamps.lock();
        let cert_changed = now[0] != before[0] || now[1] != before[1];
        let ca_changed = self.verify == VerifyMode::VerifyPeer && now[2] != before[2];
        if !cert_changed && !ca_changed {
            return Ok(false);
        }
        // Recorded before loading: a bad file is reported once, not at every check, and a fixed one (a new
        // modification) is picked up.
        *self.stamps.lock() = now;
        self.load(cert_changed, ca_changed).map(|_| true)
    }

    /// Reloads the certificate, key and client CA now (SIGHUP), whether or not they changed. On failure the
    /// old ones stay in use and the error is logged and returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamps.lock() = [stamp(&self.files.cert), stamp(&self.files.key), stamp(&self.files.ca)];
        self.load(true, self.verify == VerifyMode::VerifyPeer)
    }

    fn load(&self, cert: bool, ca: bool) -> Result<(), TlsError> {
        let mut result = Ok(());
        if cert {
            match load_certified_key(&self.files, &self.provider) {
                Ok(k) => {
                    self.resolver.set(Arc::new(k));
                    tracing::info!(certfile = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
                    result = Err(e);
                }
            }
        }
        if ca {
            match self.build_config() {
                Ok(c) => {
                    *self.config.write() = Arc::new(c);
                    tracing::info!(cacertfile = %self.files.ca.display(), "TLS client CA reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS client CA not reloaded; the previous one stays in use");
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        result
    }
}

fn build_config(
    files: &TlsFiles,
    verify: VerifyMode,
    fail_if_no_peer_cert: bool,
    provider: &Arc<CryptoProvider>,
    versions: &[&'static SupportedProtocolVersion],
    resolver: &Arc<ReloadingCert>,
) -> Result<ServerConfig, TlsError> {
    let verifier = match verify {
        VerifyMode::VerifyNone => WebPkiClientVerifier::no_client_auth(),
        VerifyMode::VerifyPeer => {
            let ca = &files.ca;
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca, "cacertfile")? {
                roots.add(c).map_err(|e| TlsError::Ca { path: ca.clone(), message: e.to_string() })?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let b = if fail_if_no_peer_cert { b } else { b.allow_unauthenticated() };
            b.build().map_err(|e| TlsError::Ca { path: ca.clone(), message: e.to_string() })?
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver.clone());
    // EMQX's honor_cipher_order = true: the server's order of suites wins.
    config.ignore_client_order = true;
    Ok(config)
}

fn load_certified_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(&files.cert, "certfile")?;
    let key = load_key(&files.key)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::KeyMismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source: e,
    })
}

/// The TLS handshake on an accepted connection, abandoned after `timeout`
/// (`ssl_options.handshake_timeout`).
pub async fn accept_tls<IO>(
    acceptor: &TlsAcceptor,
    stream: IO,
    timeout: Duration,
) -> Result<TlsStream<IO>, TransportError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(TransportError::TlsHandshake(e)),
        Err(_) => Err(TransportError::Timeout { what: "TLS handshake", after: timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_names_map_to_ring_suites() {
        let v = [TlsVersion::Tlsv13, TlsVersion::Tlsv12];
        let all = cipher_suites(&[], &v).unwrap();
        assert_eq!(all.len(), 9);
        let names: Vec<String> =
            ["tls_aes_128_gcm_sha256", "ECDHE-RSA-AES256-GCM-SHA384", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let s = cipher_suites(&names, &v).unwrap();
        let got: Vec<_> = s.iter().map(|s| s.suite()).collect();
        use rustls::CipherSuite as C;
        assert_eq!(
            got,
            [
                C::TLS13_AES_128_GCM_SHA256,
                C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            ]
        );
        assert!(cipher_suites(&["TLS13_AES_256_GCM_SHA384".into()], &[TlsVersion::Tlsv13]).is_ok());
    }

    #[test]
    fn unknown_or_insufficient_ciphers_are_clear_errors() {
        let e = cipher_suites(&["ECDHE-RSA-AES256-SHA384".into()], &[TlsVersion::Tlsv12]).unwrap_err().to_string();
        assert!(e.contains("ECDHE-RSA-AES256-SHA384") && e.contains("ECDHE-RSA-AES128-GCM-SHA256"), "{e}");
        let e = cipher_suites(&["TLS_AES_128_GCM_SHA256".into()], &[TlsVersion::Tlsv13, TlsVersion::Tlsv12])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tlsv1.2"), "{e}");
    }

    #[test]
    fn ring_is_the_process_default() {
        assert!(install_default_provider());
        assert!(install_default_provider(), "idempotent");
    }
}
