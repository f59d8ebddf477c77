//! Certificates for the tests: two CAs, a server certificate, and client certificates from each CA.
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream as ClientTls;

pub struct Ca {
    pub cert: CertificateDer<'static>,
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub cert_pem: String,
    pub key: PrivateKeyDer<'static>,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert: cert.der().clone(), pem: cert.pem(), issuer: Issuer::new(p, key) }
    }

    pub fn server(&self, cn: &str) -> Leaf {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        self.sign(p)
    }

    pub fn client(&self, dn: &[(DnType, &str)]) -> Leaf {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p)
    }

    fn sign(&self, p: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Writes a leaf's certificate and key as `cert.pem` / `key.pem` in `dir`.
pub fn write_leaf(dir: &Path, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, &leaf.cert_pem).unwrap();
    std::fs::write(&k, &leaf.key_pem).unwrap();
    (c, k)
}

pub struct Client {
    pub roots: Vec<CertificateDer<'static>>,
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Client {
    pub fn trusting(ca: &CertificateDer<'static>) -> Client {
        Client {
            roots: vec![ca.clone()],
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            identity: None,
        }
    }
    pub fn versions(mut self, v: &[&'static rustls::SupportedProtocolVersion]) -> Client {
        self.versions = v.to_vec();
        self
    }
    pub fn with_cert(mut self, leaf: &Leaf) -> Client {
        self.identity = Some((vec![leaf.cert.clone()], leaf.key.clone_key()));
        self
    }

    pub async fn connect(self, addr: std::net::SocketAddr, name: &str) -> std::io::Result<ClientTls<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for r in self.roots {
            roots.add(r).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&self.versions)
            .unwrap()
            .with_root_certificates(roots);
        let config = match self.identity {
            Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
            None => b.with_no_client_auth(),
        };
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await
    }
}
