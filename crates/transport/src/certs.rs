//! The self-signed default certificates: on first start, a CA and a server certificate signed by it, in
//! `<data_dir>/certs/` (`ca.pem`, `cert.pem`, `key.pem`, the key readable by its owner only), reused on later
//! starts. They let the `ssl` and `wss` listeners work out of the box; clients verify them with `ca.pem`.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot write the default certificates in {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot generate the default certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where the default certificate files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultCerts {
    /// The CA that signed `cert` (give it to clients; also the default `cacertfile`).
    pub ca: PathBuf,
    /// The server certificate chain: the server certificate, then the CA.
    pub cert: PathBuf,
    /// The server's private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

impl DefaultCerts {
    pub fn in_dir(data_dir: &Path) -> DefaultCerts {
        let dir = data_dir.join("certs");
        DefaultCerts { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") }
    }
}

/// Makes sure `<data_dir>/certs/{ca,cert,key}.pem` exist: creates them when any is missing (all three anew,
/// so they always belong together), else leaves them as they are. The server certificate names `localhost`,
/// `127.0.0.1`, `::1` and this host's name; it and the CA are valid for 10 years from now.
pub fn ensure_default_certs(data_dir: &Path) -> Result<DefaultCerts, CertError> {
    let paths = DefaultCerts::in_dir(data_dir);
    if paths.ca.is_file() && paths.cert.is_file() && paths.key.is_file() {
        tracing::debug!(dir = %data_dir.join("certs").display(), "reusing the default TLS certificates");
        return Ok(paths);
    }
    let dir = data_dir.join("certs");
    std::fs::create_dir_all(&dir).map_err(|e| CertError::Write { path: dir.clone(), source: e })?;
    let hostname = hostname();
    let generated = generate(hostname.as_deref())?;
    // The key first (owner-only from its creation), the CA last: a crash in between leaves a set that is
    // incomplete, which the next start regenerates.
    write_file(&paths.key, generated.key.as_bytes(), true)?;
    write_file(&paths.cert, generated.cert_chain.as_bytes(), false)?;
    write_file(&paths.ca, generated.ca.as_bytes(), false)?;
    tracing::info!(
        dir = %dir.display(),
        host = hostname.as_deref().unwrap_or("-"),
        "created a self-signed CA and server certificate for the TLS listeners (clients can trust ca.pem)"
    );
    Ok(paths)
}

/// PEM texts of a freshly generated CA and server certificate.
pub(crate) struct Generated {
    pub(crate) ca: String,
    pub(crate) cert_chain: String,
    pub(crate) key: String,
}

pub(crate) fn generate(hostname: Option<&str>) -> Result<Generated, rcgen::Error> {
    let now = time::OffsetDateTime::now_utc();
    let ten_years = time::Duration::days(3650);

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::OrganizationName, "Halyard");
    ca.distinguished_name.push(DnType::CommonName, "Halyard default CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + ten_years;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut names = vec!["localhost".to_string()];
    names.extend(hostname.filter(|h| *h != "localhost").map(String::from));
    let mut params = CertificateParams::new(names)?;
    params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.subject_alt_names.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Halyard");
    params.distinguished_name.push(DnType::CommonName, hostname.unwrap_or("localhost"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + ten_years;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Generated {
        cert_chain: format!("{}{}", cert.pem(), ca_cert.pem()),
        ca: ca_cert.pem(),
        key: key.serialize_pem(),
    })
}

/// This host's name, when it is one a certificate can name (Linux: the kernel's hostname).
fn hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let h = raw.trim().to_ascii_lowercase();
    let valid = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    valid.then_some(h)
}

/// Writes `path` through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertError> {
    let err = |e| CertError::Write { path: path.to_path_buf(), source: e };
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(contents).and_then(|_| f.sync_all()).map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = ensure_default_certs(dir.path()).unwrap();
        assert_eq!(p, DefaultCerts::in_dir(dir.path()));
        let first = std::fs::read(&p.cert).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the key is readable by its owner only");
        }
        let again = ensure_default_certs(dir.path()).unwrap();
        assert_eq!(again, p);
        assert_eq!(std::fs::read(&p.cert).unwrap(), first, "reused, not regenerated");
        std::fs::remove_file(&p.ca).unwrap();
        ensure_default_certs(dir.path()).unwrap();
        assert_ne!(std::fs::read(&p.cert).unwrap(), first, "an incomplete set is made anew");
    }

    #[test]
    fn server_certificate_names_local_addresses_and_chains_to_the_ca() {
        let g = generate(Some("broker-1.example")).unwrap();
        let chain: Vec<_> = CertificateDer::pem_slice_iter(g.cert_chain.as_bytes()).collect::<Result<_, _>>().unwrap();
        assert_eq!(chain.len(), 2, "leaf then CA");
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san.general_names.iter().map(|n| n.to_string()).collect();
        for want in [
            "DNSName(localhost)",
            "DNSName(broker-1.example)",
            "IPAddress(7f:00:00:01)",
            "IPAddress(00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01)",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let ca = CertificateDer::from_pem_slice(g.ca.as_bytes()).unwrap();
        assert_eq!(chain[1], ca);
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        assert!(ca.is_ca());
        assert_eq!(leaf.issuer(), ca.subject());
    }

    #[test]
    fn hostname_is_a_dns_name_or_nothing() {
        if let Some(h) = hostname() {
            assert!(!h.is_empty() && !h.contains(char::is_whitespace), "{h:?}");
        }
    }
}
