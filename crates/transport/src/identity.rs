//! The TLS client's identity, for `mqtt.peer_cert_as_username` / `peer_cert_as_clientid`, computed from its
//! leaf certificate the way EMQX does (`emqx_channel:set_peercert_infos/3`, `esockd_ssl`):
//!
//! - `cn`: the subject's common name(s), joined with `,` when there are several;
//! - `dn`: the subject in RFC 4514 style, last RDN first, `,` between RDNs and `+` inside one, attribute
//!   names as esockd writes them (`CN`, `O`, `OU`, `C`, `ST`, `L`, `DC`, `EMAILADDRESS` …, else the dotted
//!   OID), values escaped as esockd does;
//! - `crt`: the certificate's DER bytes;
//! - `pem`: those bytes in base64 (no PEM armour: what EMQX gives);
//! - `md5`: the lower-case hex MD5 of the DER bytes.
//!
//! As EMQX does, a CN or DN holding control characters (U+0000–U+001F, U+007F–U+009F) is refused: such a value
//! could smuggle line breaks into whatever later embeds it.
//!
//! MD5 comes from the RustCrypto `md-5` crate: ring (our one crypto provider) has no MD5, and this is a
//! fingerprint, not a security boundary.

use halyard_core::config::PeerCertAs;
use md5::{Digest, Md5};
use rustls_pki_types::CertificateDer;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the client certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("the client certificate's {field} contains control characters")]
    ControlCharacters { field: &'static str },
}

/// What a client's leaf certificate says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    der: CertificateDer<'static>,
    cn: Option<String>,
    dn: String,
}

impl PeerCert {
    /// Reads the subject of a DER certificate.
    pub fn from_der(der: CertificateDer<'static>) -> Result<PeerCert, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let subject = cert.subject();
        let cns: Vec<String> = subject.iter_common_name().map(value_text).collect();
        let cn = (!cns.is_empty()).then(|| cns.join(","));
        let dn = format_dn(subject);
        if cn.as_deref().is_some_and(has_control) {
            return Err(IdentityError::ControlCharacters { field: "common name" });
        }
        if has_control(&dn) {
            return Err(IdentityError::ControlCharacters { field: "subject" });
        }
        Ok(PeerCert { der, cn, dn })
    }

    /// The leaf certificate of a finished TLS handshake, if the client sent one.
    pub fn from_connection(conn: &rustls::ServerConnection) -> Result<Option<PeerCert>, IdentityError> {
        match conn.peer_certificates().and_then(|c| c.first()) {
            Some(leaf) => PeerCert::from_der(leaf.clone().into_owned()).map(Some),
            None => Ok(None),
        }
    }

    pub fn cn(&self) -> Option<&str> {
        self.cn.as_deref()
    }
    pub fn dn(&self) -> &str {
        &self.dn
    }
    pub fn der(&self) -> &[u8] {
        &self.der
    }
    /// Base64 (standard alphabet, padded) of the DER bytes: EMQX's `pem`.
    pub fn pem(&self) -> String {
        base64(&self.der)
    }
    pub fn md5_hex(&self) -> String {
        Md5::digest(&self.der).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The value `peer_cert_as_username` / `peer_cert_as_clientid` set to `how` gives: `None` for `disabled`
    /// (and for `cn` when the subject has none). Bytes, because `crt` is the DER certificate itself; every other
    /// choice is UTF-8.
    pub fn value(&self, how: PeerCertAs) -> Option<Vec<u8>> {
        match how {
            PeerCertAs::Disabled => None,
            PeerCertAs::Cn => self.cn.clone().map(String::into_bytes),
            PeerCertAs::Dn => Some(self.dn.clone().into_bytes()),
            PeerCertAs::Crt => Some(self.der.to_vec()),
            PeerCertAs::Pem => Some(self.pem().into_bytes()),
            PeerCertAs::Md5 => Some(self.md5_hex().into_bytes()),
        }
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(|c| c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c))
}

/// The text of an attribute value: the string types X.520 uses, decoded; anything else as `#` and hex of its
/// content, RFC 4514's form for values it cannot show as text.
fn value_text(a: &AttributeTypeAndValue<'_>) -> String {
    let raw = a.as_slice();
    let text = match a.attr_value().tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString | Tag::VisibleString => {
            std::str::from_utf8(raw).ok().map(String::from)
        }
        // ISO-8859-1, as esockd reads it.
        Tag::TeletexString => Some(raw.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            raw.chunks_exact(2).remainder().is_empty().then(|| String::from_utf16(&units).ok()).flatten()
        }
        Tag::UniversalString => raw
            .chunks_exact(4)
            .remainder()
            .is_empty()
            .then(|| {
                raw.chunks_exact(4).map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect()
            })
            .flatten(),
        _ => None,
    };
    text.unwrap_or_else(|| format!("#{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// esockd's `format_rdn_sequence`: RDNs in reverse order joined by `,`, the values of one RDN by `+`.
fn format_dn(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| format!("{}={}", attr_name(&atv.attr_type().to_id_string()), escape(&value_text(atv))))
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn attr_name(oid: &str) -> String {
    let name = match oid {
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GIVENNAME",
        "2.5.4.43" => "INITIALS",
        "2.5.4.44" => "GENERATIONQUALIFIER",
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "TITLE",
        "2.5.4.6" => "C",
        "2.5.4.5" => "SERIALNUMBER",
        "2.5.4.65" => "PSEUDONYM",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "EMAILADDRESS",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.1" => "UID",
        other => return other.to_string(),
    };
    name.to_string()
}

/// esockd's `escape_rdn_value`: a leading space or `#` and a trailing space get a backslash, so do `"+,;<>\`;
/// bytes below 32 or from 126 up (non-ASCII characters byte by byte in UTF-8) become `\XX`.
fn escape(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = String::with_capacity(v.len());
    for (i, &b) in bytes.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == bytes.len();
        match b {
            b' ' | b'#' if first => {
                out.push('\\');
                out.push(char::from(b));
            }
            b' ' if last => out.push_str("\\ "),
            b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b if !(32..126).contains(&b) => out.push_str(&format!("\\{b:02X}")),
            b => out.push(char::from(b)),
        }
    }
    out
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        let idx = |shift: u32| char::from(A[((n >> shift) & 63) as usize]);
        out.push(idx(18));
        out.push(idx(12));
        out.push(if c.len() > 1 { idx(6) } else { '=' });
        out.push(if c.len() > 2 { idx(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert_with(dn: &[(DnType, &str)]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn cn_dn_and_the_derived_values() {
        let der = cert_with(&[
            (DnType::CountryName, "SE"),
            (DnType::OrganizationName, "Acme, Inc."),
            (DnType::CommonName, "device-7"),
        ]);
        let p = PeerCert::from_der(der.clone()).unwrap();
        assert_eq!(p.cn(), Some("device-7"));
        assert_eq!(p.dn(), "CN=device-7,O=Acme\\, Inc.,C=SE");
        assert_eq!(p.value(PeerCertAs::Disabled), None);
        assert_eq!(p.value(PeerCertAs::Cn), Some(b"device-7".to_vec()));
        assert_eq!(p.value(PeerCertAs::Crt), Some(der.to_vec()));
        let md5 = p.md5_hex();
        assert_eq!(md5.len(), 32);
        assert!(md5.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(p.value(PeerCertAs::Md5), Some(md5.into_bytes()));
        assert_eq!(p.value(PeerCertAs::Pem).map(|v| v.len()), Some(der.len().div_ceil(3) * 4));
    }

    #[test]
    fn no_cn_and_escapes() {
        let p = PeerCert::from_der(cert_with(&[(DnType::OrganizationName, "#1 <best>;")])).unwrap();
        assert_eq!(p.cn(), None);
        assert_eq!(p.value(PeerCertAs::Cn), None);
        assert_eq!(p.dn(), "O=\\#1 \\<best\\>\\;");
        assert_eq!(escape(" x "), "\\ x\\ ");
        assert_eq!(escape("é~"), "\\C3\\A9\\7E");
    }

    #[test]
    fn control_characters_are_refused() {
        let e = PeerCert::from_der(cert_with(&[(DnType::CommonName, "evil\r\nX-Injected: 1")])).unwrap_err();
        assert_eq!(e, IdentityError::ControlCharacters { field: "common name" });
        assert!(PeerCert::from_der(CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
