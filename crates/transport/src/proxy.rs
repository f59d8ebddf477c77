//! The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy's `proxy-protocol.txt` specifies them: a
//! sans-IO parser ([`parse`]) and [`read_proxy_header`], which reads exactly the header off a TCP connection
//! and not one byte of what follows it.
//!
//! Bounds: a v1 line is at most 107 bytes (CRLF included); a v2 header at most 16 + 216 (addresses of the
//! largest family) + [`V2_MAX_TLV_BYTES`] bytes, refused from its first 16 bytes when it announces more.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature (12 bytes), always followed by the version/command byte.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// TLV bytes a v2 header may carry here (the format allows 65535 minus the addresses).
pub const V2_MAX_TLV_BYTES: usize = 4096;
/// The longest header [`parse`] accepts.
pub const MAX_HEADER_LEN: usize = 16 + 216 + V2_MAX_TLV_BYTES;

const V1_PREFIX: &[u8] = b"PROXY ";

pub const PP2_TYPE_ALPN: u8 = 0x01;
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub const PP2_TYPE_CRC32C: u8 = 0x03;
pub const PP2_TYPE_NOOP: u8 = 0x04;
pub const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
pub const PP2_TYPE_SSL: u8 = 0x20;
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyCommand {
    /// v2 LOCAL: the proxy's own connection (a health check): use the real endpoints.
    Local,
    /// The connection is relayed for the client the header names.
    Proxy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyAddresses {
    /// v1 `UNKNOWN`, v2 `AF_UNSPEC` or an unspecified transport, or a LOCAL command: use the real endpoints.
    Unknown,
    /// TCP (or UDP) over IPv4 or IPv6.
    Inet { source: SocketAddr, destination: SocketAddr },
    /// v2 `AF_UNIX`: 108-byte paths, NUL padding removed.
    Unix { source: Vec<u8>, destination: Vec<u8> },
}

/// A type-length-value entry of a v2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    pub kind: u8,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: ProxyVersion,
    pub command: ProxyCommand,
    pub addresses: ProxyAddresses,
    /// v2 TLVs in wire order (v1: none). A CRC32C TLV present has been verified.
    pub tlvs: Vec<Tlv>,
}

impl ProxyHeader {
    /// The client's address when the header gives one (PROXY command, TCP/UDP over IPv4/IPv6); `None` means
    /// "use the connection's own peer address".
    pub fn source(&self) -> Option<SocketAddr> {
        match (&self.command, &self.addresses) {
            (ProxyCommand::Proxy, ProxyAddresses::Inet { source, .. }) => Some(*source),
            _ => None,
        }
    }

    /// The address the client connected to, when the header gives one.
    pub fn destination(&self) -> Option<SocketAddr> {
        match (&self.command, &self.addresses) {
            (ProxyCommand::Proxy, ProxyAddresses::Inet { destination, .. }) => Some(*destination),
            _ => None,
        }
    }

    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs.iter().find(|t| t.kind == kind).map(|t| t.value.as_slice())
    }

    /// `PP2_TYPE_AUTHORITY`: the host name the client asked for (TLS SNI), when UTF-8.
    pub fn authority(&self) -> Option<&str> {
        self.tlv(PP2_TYPE_AUTHORITY).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `PP2_SUBTYPE_SSL_CN` inside `PP2_TYPE_SSL`: the common name of the client certificate a TLS-terminating
    /// proxy verified, when UTF-8.
    pub fn ssl_cn(&self) -> Option<&str> {
        let ssl = self.tlv(PP2_TYPE_SSL)?;
        // client (1 byte) and verify (4 bytes), then sub-TLVs.
        let mut subs = ssl.get(5..)?;
        while subs.len() >= 3 {
            let len = usize::from(u16::from_be_bytes([subs[1], subs[2]]));
            let value = subs.get(3..3 + len)?;
            if subs[0] == PP2_SUBTYPE_SSL_CN {
                return std::str::from_utf8(value).ok();
            }
            subs = &subs[3 + len..];
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line: {0}")]
    V1(&'static str),
    #[error("PROXY v2 version {0} is not supported (only 2)")]
    V2Version(u8),
    #[error("PROXY v2 command {0:#x} is not LOCAL or PROXY")]
    V2Command(u8),
    #[error("PROXY v2 address family/transport byte {0:#04x} is not defined")]
    V2Family(u8),
    #[error("PROXY v2 address block of {len} bytes is too short for its family (needs {need})")]
    V2AddressTooShort { len: usize, need: usize },
    #[error("PROXY v2 header carries {0} bytes of TLVs, more than the {V2_MAX_TLV_BYTES} accepted")]
    V2TooLarge(usize),
    #[error("PROXY v2 TLVs are malformed")]
    V2Tlv,
    #[error("PROXY v2 CRC32C checksum does not match")]
    V2Checksum,
    #[error("connection closed before the PROXY header was complete")]
    Eof,
}

/// Parses a PROXY header at the start of `buf`. `Ok(None)`: `buf` is a valid beginning of a header and more
/// bytes are needed; then every byte of `buf` belongs to the header (which is what lets [`read_proxy_header`]
/// consume them). `Ok(Some((header, n)))`: the header is the first `n` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(ProxyError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let end = match window.iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(i) if window[i] == b'\n' => return Err(ProxyError::V1("LF without CR")),
        Some(i) if i + 1 == window.len() => {
            // A CR as the last byte seen: its LF may come next.
            if window.len() == V1_MAX_LEN {
                return Err(ProxyError::V1TooLong);
            }
            return Ok(None);
        }
        Some(i) if window[i + 1] == b'\n' => i,
        Some(_) => return Err(ProxyError::V1("CR without LF")),
        None if window.len() == V1_MAX_LEN => return Err(ProxyError::V1TooLong),
        None => return Ok(None),
    };
    if end < V1_PREFIX.len() {
        return Err(ProxyError::V1("no protocol after PROXY"));
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| ProxyError::V1("not ASCII"))?;
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or_default();
    let addresses = match proto {
        // The rest of the line is ignored, whatever it holds.
        "UNKNOWN" => ProxyAddresses::Unknown,
        "TCP4" | "TCP6" => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(ProxyError::V1("TCP4/TCP6 needs exactly: source destination sport dport"));
            };
            let (src, dst) = if proto == "TCP4" {
                (v1_ipv4(src)?.into(), v1_ipv4(dst)?.into())
            } else {
                (v1_ipv6(src)?.into(), v1_ipv6(dst)?.into())
            };
            ProxyAddresses::Inet {
                source: SocketAddr::new(src, v1_port(sport)?),
                destination: SocketAddr::new(dst, v1_port(dport)?),
            }
        }
        _ => return Err(ProxyError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let header = ProxyHeader { version: ProxyVersion::V1, command: ProxyCommand::Proxy, addresses, tlvs: Vec::new() };
    Ok(Some((header, end + 2)))
}

fn v1_ipv4(s: &str) -> Result<Ipv4Addr, ProxyError> {
    let bad = ProxyError::V1("bad IPv4 address");
    // Four decimal numbers without heading zeroes (which could be read as octal).
    if s.split('.').any(|o| o.is_empty() || o.len() > 3 || (o.len() > 1 && o.starts_with('0'))) {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn v1_ipv6(s: &str) -> Result<Ipv6Addr, ProxyError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
        return Err(ProxyError::V1("bad IPv6 address"));
    }
    s.parse().map_err(|_| ProxyError::V1("bad IPv6 address"))
}

fn v1_port(s: &str) -> Result<u16, ProxyError> {
    let bad = ProxyError::V1("bad port");
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::NotProxy);
    }
    if let Some(&vc) = buf.get(12) {
        if vc >> 4 != 2 {
            return Err(ProxyError::V2Version(vc >> 4));
        }
        if vc & 0x0f > 1 {
            return Err(ProxyError::V2Command(vc & 0x0f));
        }
    }
    let fam = match buf.get(13) {
        Some(&f) => f,
        None => return Ok(None),
    };
    let addr_len = match (fam >> 4, fam & 0x0f) {
        (0..=3, 3..) | (4.., _) => return Err(ProxyError::V2Family(fam)),
        (0, _) => 0,
        (1, _) => 12,
        (2, _) => 36,
        (_, _) => 216,
    };
    if buf.len() < 16 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let local = buf[12] & 0x0f == 0;
    // A LOCAL header's address block is ignored whatever it holds; a PROXY one must hold its family's addresses.
    let addr_len = if local { addr_len.min(len) } else { addr_len };
    if len < addr_len {
        return Err(ProxyError::V2AddressTooShort { len, need: addr_len });
    }
    if len - addr_len > V2_MAX_TLV_BYTES {
        return Err(ProxyError::V2TooLarge(len - addr_len));
    }
    let total = 16 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let block = &buf[16..total];
    let tlvs = parse_tlvs(&block[addr_len..])?;
    if let Some(crc) = tlvs.iter().find(|t| t.kind == PP2_TYPE_CRC32C) {
        verify_crc(&buf[..total], &crc.value)?;
    }
    let addresses = if local {
        ProxyAddresses::Unknown
    } else {
        match (fam >> 4, fam & 0x0f) {
            (0, _) | (_, 0) => ProxyAddresses::Unknown,
            (1, _) => {
                let ip = |o: usize| Ipv4Addr::new(block[o], block[o + 1], block[o + 2], block[o + 3]);
                ProxyAddresses::Inet {
                    source: SocketAddr::new(ip(0).into(), u16::from_be_bytes([block[8], block[9]])),
                    destination: SocketAddr::new(ip(4).into(), u16::from_be_bytes([block[10], block[11]])),
                }
            }
            (2, _) => {
                let ip = |o: usize| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&block[o..o + 16]);
                    Ipv6Addr::from(a)
                };
                ProxyAddresses::Inet {
                    source: SocketAddr::new(ip(0).into(), u16::from_be_bytes([block[32], block[33]])),
                    destination: SocketAddr::new(ip(16).into(), u16::from_be_bytes([block[34], block[35]])),
                }
            }
            _ => {
                let path = |p: &[u8]| p.iter().copied().take_while(|&b| b != 0).collect::<Vec<u8>>();
                ProxyAddresses::Unix { source: path(&block[..108]), destination: path(&block[108..216]) }
            }
        }
    };
    let command = if local { ProxyCommand::Local } else { ProxyCommand::Proxy };
    Ok(Some((ProxyHeader { version: ProxyVersion::V2, command, addresses, tlvs }, total)))
}

fn parse_tlvs(mut b: &[u8]) -> Result<Vec<Tlv>, ProxyError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 3 {
            return Err(ProxyError::V2Tlv);
        }
        let len = usize::from(u16::from_be_bytes([b[1], b[2]]));
        let value = b.get(3..3 + len).ok_or(ProxyError::V2Tlv)?;
        out.push(Tlv { kind: b[0], value: value.to_vec() });
        b = &b[3 + len..];
    }
    Ok(out)
}

/// Checks a PP2_TYPE_CRC32C TLV: the CRC32C of the whole header with the checksum's 4 bytes taken as zero.
fn verify_crc(header: &[u8], value: &[u8]) -> Result<(), ProxyError> {
    let Ok(expected) = <[u8; 4]>::try_from(value) else {
        return Err(ProxyError::V2Tlv);
    };
    // Find the CRC TLV's value in the header (the first TLV of its type, as `tlv()` reports it).
    let offset = crc_value_offset(header).ok_or(ProxyError::V2Tlv)?;
    let mut crc = Crc32c::new();
    crc.update(&header[..offset]);
    crc.update(&[0; 4]);
    crc.update(&header[offset + 4..]);
    if crc.finish() == u32::from_be_bytes(expected) {
        Ok(())
    } else {
        Err(ProxyError::V2Checksum)
    }
}

fn crc_value_offset(header: &[u8]) -> Option<usize> {
    let addr_len = match header[13] >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        _ => 216,
    };
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    let mut at = 16 + addr_len.min(len);
    while at + 3 <= header.len() {
        let l = usize::from(u16::from_be_bytes([header[at + 1], header[at + 2]]));
        if header[at] == PP2_TYPE_CRC32C {
            return Some(at + 3);
        }
        at += 3 + l;
    }
    None
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bitwise: headers are at most a few KiB.
pub(crate) struct Crc32c(u32);

impl Crc32c {
    pub(crate) fn new() -> Crc32c {
        Crc32c(!0)
    }
    pub(crate) fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u32::from(b);
            for _ in 0..8 {
                self.0 = if self.0 & 1 != 0 { (self.0 >> 1) ^ 0x82F6_3B78 } else { self.0 >> 1 };
            }
        }
    }
    pub(crate) fn finish(&self) -> u32 {
        !self.0
    }
}

/// Reads a PROXY header (v1 or v2) from the start of `stream`, within `timeout`, consuming exactly the header:
/// the bytes after it (the client's MQTT or TLS bytes) stay in the socket. It peeks, parses, and consumes only
/// bytes the parser has shown to belong to the header, so it never reads one past it.
pub async fn read_proxy_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<ProxyHeader, crate::TransportError> {
    match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(r) => r,
        Err(_) => Err(crate::TransportError::Timeout { what: "PROXY protocol header", after: timeout }),
    }
}

async fn read_header(stream: &mut TcpStream) -> Result<ProxyHeader, crate::TransportError> {
    let mut acc: Vec<u8> = Vec::new();
    let mut peeked = vec![0u8; 1024];
    loop {
        let room = MAX_HEADER_LEN - acc.len();
        let want = room.min(peeked.len());
        let n = stream.peek(&mut peeked[..want]).await?;
        if n == 0 {
            return Err(ProxyError::Eof.into());
        }
        let mut seen = Vec::with_capacity(acc.len() + n);
        seen.extend_from_slice(&acc);
        seen.extend_from_slice(&peeked[..n]);
        match parse(&seen)? {
            Some((header, consumed)) => {
                let rest = consumed - acc.len();
                stream.read_exact(&mut peeked[..rest]).await?;
                return Ok(header);
            }
            None => {
                // Every byte seen belongs to the header: take them off the socket, so the next peek waits for
                // new bytes instead of returning these again.
                stream.read_exact(&mut peeked[..n]).await?;
                acc.extend_from_slice(&peeked[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(ver_cmd);
        v.push(fam);
        v.extend_from_slice(&(block.len() as u16).to_be_bytes());
        v.extend_from_slice(block);
        v
    }

    /// Every strict prefix of a valid header asks for more bytes; the whole parses to `n` bytes.
    fn check_prefixes(bytes: &[u8], n: usize) -> ProxyHeader {
        for i in 0..n {
            assert_eq!(parse(&bytes[..i]), Ok(None), "prefix of {i} bytes");
        }
        let (h, used) = parse(bytes).unwrap().unwrap();
        assert_eq!(used, n);
        h
    }

    #[test]
    fn v1_tcp4_from_the_spec() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n");
        let h = check_prefixes(&bytes, line.len());
        assert_eq!(h.version, ProxyVersion::V1);
        assert_eq!(h.source(), Some(sock("192.168.0.1:56324")));
        assert_eq!(h.destination(), Some(sock("192.168.0.11:443")));
    }

    #[test]
    fn v1_tcp6_and_longest_lines() {
        let h = check_prefixes(b"PROXY TCP6 2001:db8::1 ::1 4242 1883\r\n\x10", 38);
        assert_eq!(h.source(), Some(sock("[2001:db8::1]:4242")));
        assert_eq!(h.destination(), Some(sock("[::1]:1883")));
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(line.len(), 104);
        assert_eq!(check_prefixes(line.as_bytes(), 104).source().map(|s| s.port()), Some(65535));
        let worst = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(worst.len(), V1_MAX_LEN);
        assert_eq!(check_prefixes(worst.as_bytes(), V1_MAX_LEN).addresses, ProxyAddresses::Unknown);
    }

    #[test]
    fn v1_unknown_uses_the_real_peer() {
        let h = check_prefixes(b"PROXY UNKNOWN\r\n\x10\x00", 15);
        assert_eq!(h.addresses, ProxyAddresses::Unknown);
        assert_eq!(h.source(), None);
        assert_eq!(check_prefixes(b"PROXY UNKNOWN anything at all\r\n", 31).source(), None);
    }

    #[test]
    fn v1_malformed() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0.01 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 056324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 9\r\n",
            b"PROXY UDP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",
            b"PROXY TCP4 192.168.0.1\r192.168.0.11 56324 443\r\n",
            b"PROXY \r\n",
            b"PROXY\r\n",
            b"PROXZ TCP4",
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\xff\r\n",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
        assert_eq!(parse(&long[..106]), Ok(None));
        assert_eq!(parse(&long[..107]), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn not_proxy_at_all() {
        // An MQTT CONNECT, a TLS ClientHello, an HTTP request.
        for b in [&b"\x10\x0c\x00\x04MQTT"[..], b"\x16\x03\x01\x02\x00", b"GET /mqtt HTTP/1.1\r\n"] {
            assert_eq!(parse(b), Err(ProxyError::NotProxy));
        }
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX\n"), Err(ProxyError::NotProxy));
    }

    #[test]
    fn v2_tcp4_captured_from_haproxy() {
        // HAProxy sending v2 for 172.19.0.1:42578 -> 172.19.0.3:80, followed by the proxied HTTP request.
        let bytes = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c, 0xac, 0x13,
            0x00, 0x01, 0xac, 0x13, 0x00, 0x03, 0xa6, 0x52, 0x00, 0x50, 0x47, 0x45, 0x54, 0x20,
        ];
        let h = check_prefixes(&bytes, 28);
        assert_eq!(h.version, ProxyVersion::V2);
        assert_eq!(h.command, ProxyCommand::Proxy);
        assert_eq!(h.source(), Some(sock("172.19.0.1:42578")));
        assert_eq!(h.destination(), Some(sock("172.19.0.3:80")));
        assert!(h.tlvs.is_empty());
    }

    #[test]
    fn v2_tcp6_unix_local_unspec() {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0x12, 0x34, 0x07, 0x5b]);
        let b = v2(0x21, 0x21, &block);
        let h = check_prefixes(&b, 52);
        assert_eq!(h.source(), Some(sock("[2001:db8::7]:4660")));
        assert_eq!(h.destination(), Some(sock("[::1]:1883")));

        let mut unix = vec![0u8; 216];
        unix[..4].copy_from_slice(b"/a/b");
        unix[108..110].copy_from_slice(b"/c");
        let h = check_prefixes(&v2(0x21, 0x31, &unix), 232);
        assert_eq!(h.addresses, ProxyAddresses::Unix { source: b"/a/b".to_vec(), destination: b"/c".to_vec() });
        assert_eq!(h.source(), None);

        // LOCAL (a health check): addresses ignored, even when present.
        let h = check_prefixes(&v2(0x20, 0x00, &[]), 16);
        assert_eq!((h.command, h.source()), (ProxyCommand::Local, None));
        let h = check_prefixes(&v2(0x20, 0x11, &[1; 12]), 28);
        assert_eq!((h.command, h.addresses), (ProxyCommand::Local, ProxyAddresses::Unknown));
        // PROXY over AF_UNSPEC or an unspecified transport: use the real endpoints.
        assert_eq!(check_prefixes(&v2(0x21, 0x00, &[]), 16).source(), None);
        assert_eq!(check_prefixes(&v2(0x21, 0x10, &[1; 12]), 28).source(), None);
        // UDP over IPv4 carries addresses the same way.
        assert_eq!(check_prefixes(&v2(0x21, 0x12, &[1; 12]), 28).source(), Some(sock("1.1.1.1:257")));
    }

    #[test]
    fn v2_tlvs_authority_ssl_cn_and_crc() {
        let mut block = vec![127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2];
        block.extend_from_slice(&[PP2_TYPE_AUTHORITY, 0, 11]);
        block.extend_from_slice(b"example.com");
        block.extend_from_slice(&[PP2_TYPE_NOOP, 0, 0]);
        let mut ssl = vec![0x03, 0, 0, 0, 0];
        ssl.extend_from_slice(&[PP2_SUBTYPE_SSL_VERSION, 0, 7]);
        ssl.extend_from_slice(b"TLSv1.3");
        ssl.extend_from_slice(&[PP2_SUBTYPE_SSL_CN, 0, 6]);
        ssl.extend_from_slice(b"client");
        block.extend_from_slice(&[PP2_TYPE_SSL, 0, ssl.len() as u8]);
        block.extend_from_slice(&ssl);
        block.extend_from_slice(&[PP2_TYPE_CRC32C, 0, 4, 0, 0, 0, 0]);
        let mut b = v2(0x21, 0x11, &block);
        let mut crc = Crc32c::new();
        crc.update(&b);
        let at = b.len() - 4;
        b[at..].copy_from_slice(&crc.finish().to_be_bytes());
        let n = b.len();
        let h = check_prefixes(&b, n);
        assert_eq!(h.authority(), Some("example.com"));
        assert_eq!(h.ssl_cn(), Some("client"));
        assert_eq!(h.tlvs.len(), 4);
        b[20] ^= 1;
        assert_eq!(parse(&b), Err(ProxyError::V2Checksum));
    }

    #[test]
    fn crc32c_check_value() {
        let mut c = Crc32c::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xE306_9283);
    }

    #[test]
    fn v2_malformed() {
        assert_eq!(parse(&v2(0x11, 0x11, &[0; 12])), Err(ProxyError::V2Version(1)));
        assert_eq!(parse(&v2(0x22, 0x11, &[0; 12])), Err(ProxyError::V2Command(2)));
        assert_eq!(parse(&v2(0x21, 0x41, &[0; 12])), Err(ProxyError::V2Family(0x41)));
        assert_eq!(parse(&v2(0x21, 0x13, &[0; 12])), Err(ProxyError::V2Family(0x13)));
        assert_eq!(parse(&v2(0x21, 0x11, &[0; 5])), Err(ProxyError::V2AddressTooShort { len: 5, need: 12 }));
        assert_eq!(parse(&v2(0x21, 0x21, &[0; 12])), Err(ProxyError::V2AddressTooShort { len: 12, need: 36 }));
        // TLV claiming more bytes than the block holds; a dangling 2-byte TLV.
        assert_eq!(parse(&v2(0x21, 0x11, &[&[0u8; 12][..], &[0x04, 0, 9, 1]].concat())), Err(ProxyError::V2Tlv));
        assert_eq!(parse(&v2(0x21, 0x11, &[&[0u8; 12][..], &[0x04, 0]].concat())), Err(ProxyError::V2Tlv));
        // Refused from the 16-byte header alone, before the (large) rest arrives.
        let mut big = v2(0x21, 0x11, &[]);
        big[14..16].copy_from_slice(&(12u16 + 4097).to_be_bytes());
        assert_eq!(parse(&big), Err(ProxyError::V2TooLarge(4097)));
        big[14..16].copy_from_slice(&(12u16 + 4096).to_be_bytes());
        assert_eq!(parse(&big), Ok(None));
        big[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(parse(&big).is_err());
        // A CRC TLV of the wrong length.
        assert_eq!(parse(&v2(0x21, 0x11, &[&[0u8; 12][..], &[0x03, 0, 1, 0]].concat())), Err(ProxyError::V2Tlv));
    }
}
