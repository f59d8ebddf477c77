//! Certificates and TLS / WebSocket clients for the listener tests: test CAs, client certificates, rustls and
//! tungstenite clients over real sockets.
#![allow(dead_code)]

use halyard_transport::rustls;
use halyard_transport::tokio_rustls::{self, client::TlsStream};
use halyard_transport::tokio_tungstenite::{self, tungstenite::client::IntoClientRequest, WebSocketStream};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub struct Ca {
    pub cert: CertificateDer<'static>,
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert = p.self_signed(&key).expect("self-signed");
        Ca { cert: cert.der().clone(), pem: cert.pem(), issuer: Issuer::new(p, key) }
    }

    /// A client certificate with subject `dn`.
    pub fn client(&self, dn: &[(DnType, &str)]) -> Leaf {
        let mut p = CertificateParams::new(vec![]).expect("params");
        p.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("sign");
        Leaf { cert: cert.der().clone(), key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())) }
    }

    /// A server certificate for `name` signed by this CA: (certificate PEM, key PEM).
    pub fn server_pem(&self, name: &str) -> (String, String) {
        let p = CertificateParams::new(vec![name.to_string()]).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).expect("write CA");
    }
}

/// The first certificate in a PEM file (the generated `ca.pem`).
pub fn read_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("PEM certificate")
}

/// A TLS client trusting `ca`, optionally presenting `leaf`, for `localhost`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    leaf: Option<&Leaf>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tls_over(tcp, ca, leaf).await
}

pub async fn tls_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    ca: &CertificateDer<'static>,
    leaf: Option<&Leaf>,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(roots);
    let config = match leaf {
        Some(l) => b.with_client_auth_cert(vec![l.cert.clone()], l.key.clone_key()).expect("client cert"),
        None => b.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector.connect(ServerName::try_from("localhost").expect("name"), stream).await
}

/// The WebSocket upgrade of `stream` to `url`'s path, offering `subprotocol` (none: no header).
pub async fn ws_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    subprotocol: Option<&str>,
) -> Result<WebSocketStream<S>, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request().expect("request");
    if let Some(p) = subprotocol {
        req.headers_mut().insert("sec-websocket-protocol", p.parse().expect("header"));
    }
    tokio_tungstenite::client_async(req, stream).await.map(|(ws, _)| ws)
}
