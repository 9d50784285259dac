//! Which peers a relay may talk to. By default: nothing in an IANA
//! special-purpose range (an IPv6 address is refused if its own range is
//! special or any IPv4 it carries is: see `continuum_core::netpolicy`) and
//! none of the server's own addresses, so TURN is never a door into the
//! network it runs in. Operators add allow-lists (e.g. only the SFU and SIP
//! gateway) and deny-lists; tests use an explicit loopback allowance.

use continuum_core::netpolicy::{embedded_ipv4, is_special_purpose};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An address range in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}`: not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix must be 0..={max}"))?
        };
        Ok(Cidr { addr, prefix })
    }
}

/// IPv6 forms that only respell an IPv4 host (mapped, compatible, translated,
/// NAT64 well-known prefix, 6to4) are compared as that IPv4. Teredo and
/// local-use NAT64 are not (an IPv4 allowance must not open them); they are
/// special-purpose, so they are refused unless allowed as IPv6.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_ipv4(&v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// Always allowed (wins over everything else).
    pub allow: Vec<Cidr>,
    /// Exact transport addresses allowed even where their IP is refused:
    /// our own SFU's media ports, without opening the rest of that host
    /// (its API, or this TURN server itself, when they share the address).
    pub allow_addrs: Vec<SocketAddr>,
    /// Always refused.
    pub deny: Vec<Cidr>,
    /// The server's own addresses (listeners, relays).
    pub own: Vec<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    DenyList,
    SpecialPurpose,
    OwnAddress,
}

impl Denied {
    pub fn label(self) -> &'static str {
        match self {
            Denied::DenyList => "deny_list",
            Denied::SpecialPurpose => "special_purpose",
            Denied::OwnAddress => "own_address",
        }
    }
}

impl PeerPolicy {
    /// May a permission be installed for `peer`? (Permissions are per IP;
    /// an IP with allowed transport addresses gets one, and
    /// [`PeerPolicy::check_addr`] then limits it to those ports.)
    pub fn check(&self, peer: IpAddr) -> Result<(), Denied> {
        let n = normalize(peer);
        match self.check_ip(peer) {
            Err(_) if self.allow_addrs.iter().any(|a| normalize(a.ip()) == n) => Ok(()),
            r => r,
        }
    }

    /// May a datagram go to, or come from, `peer`?
    pub fn check_addr(&self, peer: SocketAddr) -> Result<(), Denied> {
        let n = normalize(peer.ip());
        match self.check_ip(peer.ip()) {
            Err(_)
                if self
                    .allow_addrs
                    .iter()
                    .any(|a| normalize(a.ip()) == n && a.port() == peer.port()) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    fn check_ip(&self, peer: IpAddr) -> Result<(), Denied> {
        if self.allow.iter().any(|c| c.contains(peer)) {
            return Ok(());
        }
        if self.deny.iter().any(|c| c.contains(peer)) {
            return Err(Denied::DenyList);
        }
        if is_special_purpose(peer) {
            return Err(Denied::SpecialPurpose);
        }
        let n = normalize(peer);
        if self.own.iter().any(|o| normalize(*o) == n) {
            return Err(Denied::OwnAddress);
        }
        Ok(())
    }
}

/// One address from every range refused by default, plus IPv4 ranges in
/// their IPv6 disguises (mapped, compatible, translated, NAT64, 6to4,
/// Teredo): the probe list the policy is tested with, here and end to end
/// (`tests/turn.rs` sends a CreatePermission for each, IPv6 ones through an
/// IPv6 relay, and expects 403).
pub const DENIED_BY_DEFAULT: &[&str] = &[
    "0.0.0.1",
    "10.1.2.3",
    "100.64.0.1",
    "127.0.0.1",
    "169.254.169.254",
    "172.16.0.1",
    "192.0.0.1",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.0.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "240.0.0.1",
    "::",
    "::1",
    "fc00::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "2001::1",
    "100::1",
    "64:ff9b:1::1",
    // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of 10/8 and 127/8:
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
    "::10.0.0.1",
    "64:ff9b::a00:1",
    "64:ff9b::7f00:1",
    "2002:a00:1::1",
    "2002:7f00:1::1",
    // IPv4-translated (RFC 2765/6145 `::ffff:0:a.b.c.d`) forms:
    "::ffff:0:7f00:1",
    "::ffff:0:a00:1",
    // Local-use NAT64 (RFC 8215, /48 layout) carrying 127.0.0.1:
    "64:ff9b:1:7f00:0:100::",
    // Teredo with server 65.54.227.120 and client 127.0.0.1 (obfuscated):
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_peers_are_refused_by_default() {
        let p = PeerPolicy::default();
        for s in DENIED_BY_DEFAULT {
            assert_eq!(
                p.check(s.parse().unwrap()),
                Err(Denied::SpecialPurpose),
                "{s}"
            );
        }
        assert_eq!(p.check("8.8.8.8".parse().unwrap()), Ok(()));
        assert_eq!(p.check("::ffff:8.8.8.8".parse().unwrap()), Ok(()));
    }

    #[test]
    fn allow_and_deny_lists_and_own_addresses() {
        let p = PeerPolicy {
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            deny: vec![
                "8.8.0.0/16".parse().unwrap(),
                "2606:4700::/32".parse().unwrap(),
            ],
            own: vec!["1.2.3.4".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(
            p.check("127.0.0.1".parse().unwrap()),
            Ok(()),
            "explicit test allowance"
        );
        assert_eq!(p.check("::ffff:127.0.0.1".parse().unwrap()), Ok(()));
        assert_eq!(p.check("::ffff:0:7f00:1".parse().unwrap()), Ok(()));
        // Teredo and local-use NAT64 carrying 127.0.0.1 are not 127.0.0.1:
        // the allowance does not open them.
        for s in [
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "64:ff9b:1:7f00:0:100::",
        ] {
            assert_eq!(
                p.check(s.parse().unwrap()),
                Err(Denied::SpecialPurpose),
                "{s}"
            );
        }
        assert_eq!(
            p.check("127.0.0.2".parse().unwrap()),
            Err(Denied::SpecialPurpose)
        );
        assert_eq!(p.check("8.8.4.4".parse().unwrap()), Err(Denied::DenyList));
        assert_eq!(
            p.check("2606:4700::1111".parse().unwrap()),
            Err(Denied::DenyList)
        );
        assert_eq!(p.check("1.2.3.4".parse().unwrap()), Err(Denied::OwnAddress));
        assert_eq!(
            p.check("::ffff:1.2.3.4".parse().unwrap()),
            Err(Denied::OwnAddress)
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn allowed_transport_addresses_open_only_their_ports() {
        // The SFU on this node's own (loopback) address: its media port is
        // reachable through a relay, the API or TURN port beside it is not.
        let p = PeerPolicy {
            allow_addrs: vec!["127.0.0.1:7401".parse().unwrap()],
            own: vec!["127.0.0.1".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(p.check("127.0.0.1".parse().unwrap()), Ok(()), "permission");
        assert_eq!(p.check_addr("127.0.0.1:7401".parse().unwrap()), Ok(()));
        assert_eq!(
            p.check_addr("[::ffff:127.0.0.1]:7401".parse().unwrap()),
            Ok(())
        );
        for other in ["127.0.0.1:7400", "127.0.0.1:3478", "127.0.0.2:7401"] {
            assert_eq!(
                p.check_addr(other.parse().unwrap()),
                Err(Denied::SpecialPurpose),
                "{other}"
            );
        }
        assert_eq!(
            p.check("10.0.0.1".parse().unwrap()),
            Err(Denied::SpecialPurpose)
        );
    }
}
