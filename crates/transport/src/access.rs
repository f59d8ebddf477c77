//! `access_rules`: which client addresses a listener accepts, EMQX (esockd) style.
//!
//! Rules are tried in order and the first whose network holds the address decides; an address no rule matches
//! is allowed (esockd's `nomatch` accepts). IPv4 rules also match IPv4-mapped IPv6 addresses (`::ffff:10.1.2.3`),
//! which is how a dual-stack socket reports IPv4 clients.

use halyard_core::config::{parse_access_rules, AccessRule};
use std::net::IpAddr;

#[derive(Debug, thiserror::Error)]
#[error("invalid access rule: {0}")]
pub struct AccessError(pub String);

/// Compiled `access_rules` of one listener.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    allow: bool,
    /// `None`: every address.
    net: Option<Net>,
}

#[derive(Debug, Clone, Copy)]
enum Net {
    V4 { addr: u32, mask: u32 },
    V6 { addr: u128, mask: u128 },
}

impl Net {
    fn new(addr: IpAddr, len: u8) -> Net {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
                Net::V4 { addr: u32::from(a) & mask, mask }
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
                Net::V6 { addr: u128::from(a) & mask, mask }
            }
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self, ip) {
            (Net::V4 { addr, mask }, IpAddr::V4(a)) => u32::from(a) & mask == *addr,
            (Net::V6 { addr, mask }, IpAddr::V6(a)) => u128::from(a) & mask == *addr,
            _ => false,
        }
    }
}

impl AccessRules {
    /// Parses EMQX's syntax: `"allow all"`, `"deny all"`, `"allow 10.0.0.0/8"`, `"deny 192.168.1.10"`,
    /// `"allow 2001:db8::/32"`; one string may hold several rules separated by commas.
    pub fn parse(rules: &[String]) -> Result<AccessRules, AccessError> {
        let parsed = parse_access_rules(rules).map_err(AccessError)?;
        Ok(AccessRules { rules: parsed.into_iter().map(compile).collect() })
    }

    /// Whether a client from `ip` may connect.
    pub fn allows(&self, ip: IpAddr) -> bool {
        for r in &self.rules {
            match r.net {
                None => return r.allow,
                Some(net) if net.contains(ip) => return r.allow,
                Some(_) => {}
            }
        }
        true
    }

    /// True when every address is allowed (nothing to check at accept).
    pub fn allows_all(&self) -> bool {
        match self.rules.first() {
            None => true,
            Some(r) => r.allow && r.net.is_none(),
        }
    }
}

fn compile(r: AccessRule) -> Rule {
    Rule { allow: r.allow, net: r.net.map(|(addr, len)| Net::new(addr, len)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(r: &[&str]) -> AccessRules {
        AccessRules::parse(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_match_wins_and_no_match_allows() {
        let r = rules(&["deny 10.1.0.0/16", "allow 10.0.0.0/8", "deny all"]);
        assert!(!r.allows(ip("10.1.2.3")));
        assert!(r.allows(ip("10.2.0.1")));
        assert!(!r.allows(ip("192.168.1.1")));
        let r = rules(&["deny 192.168.1.10"]);
        assert!(!r.allows(ip("192.168.1.10")));
        assert!(r.allows(ip("192.168.1.11")), "no rule matches: allowed, as esockd does");
        assert!(rules(&[]).allows(ip("1.2.3.4")));
        assert!(rules(&["allow all"]).allows_all());
        assert!(!r.allows_all());
    }

    #[test]
    fn host_bits_are_adjusted_and_edges_hold() {
        let r = rules(&["allow 10.9.9.9/8, deny all"]);
        assert!(r.allows(ip("10.0.0.0")) && r.allows(ip("10.255.255.255")));
        assert!(!r.allows(ip("11.0.0.0")) && !r.allows(ip("9.255.255.255")));
        let r = rules(&["deny 0.0.0.0/0"]);
        assert!(!r.allows(ip("8.8.8.8")));
        assert!(r.allows(ip("::1")), "an IPv4 rule never matches a real IPv6 address");
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let r = rules(&["allow 2001:db8::/32", "allow 127.0.0.1", "deny all"]);
        assert!(r.allows(ip("2001:db8:1::5")));
        assert!(!r.allows(ip("2001:db9::1")));
        assert!(r.allows(ip("::ffff:127.0.0.1")), "dual-stack sockets report IPv4 clients mapped");
        assert!(!r.allows(ip("::1")));
        assert!(rules(&["deny ::/0"]).allows(ip("1.2.3.4")));
        assert!(!rules(&["deny ::/0"]).allows(ip("fe80::1")));
    }

    #[test]
    fn bad_rules_are_errors() {
        let e = AccessRules::parse(&["allow 10.0.0.0/8x".into()]).unwrap_err().to_string();
        assert!(e.contains("10.0.0.0/8x"), "{e}");
    }
}
