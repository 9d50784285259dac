//! Address classification shared by everything that connects out on a
//! customer's behalf (webhooks now, TURN relays later): special-purpose ranges
//! are never reachable unless explicitly allowed, so Continuum cannot be used
//! as a door into the network it runs in.
//!
//! The rule: an IPv6 address is special if its own range is special **or**
//! any IPv4 address it carries is. An IPv4 address can travel inside an IPv6
//! literal in several standard ways (mapped, compatible, SIIT-translated,
//! NAT64, 6to4, Teredo), and each of them is a way to spell "127.0.0.1" or
//! "10.0.0.1" past a check that only looks at IPv6 ranges.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How an IPv6 address carries an IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ipv4Carrier {
    /// `::ffff:a.b.c.d` (`::ffff:0:0/96`, RFC 4291 §2.5.5.2): how dual-stack
    /// sockets name IPv4 peers; connecting to it connects to the IPv4 host.
    Mapped,
    /// `::a.b.c.d` (`::/96` except `::` and `::1`, RFC 4291 §2.5.5.1):
    /// deprecated, but some stacks still route it as the IPv4 host.
    Compatible,
    /// `::ffff:0:a.b.c.d` (`::ffff:0:0:0/96`, RFC 2765 / RFC 6145
    /// IPv4-translated): a stateless translator (SIIT) turns it into the IPv4
    /// host, and the OS may too.
    Translated,
    /// `64:ff9b::a.b.c.d` (RFC 6052 well-known prefix `64:ff9b::/96`): on a
    /// NAT64 network this reaches the IPv4 host.
    Nat64WellKnown,
    /// `64:ff9b:1::/48` (RFC 8215 local-use NAT64 prefix), read with the
    /// RFC 6052 §2.2 /48 layout: IPv4 in octets 6–7 and 9–10, octet 8 is the
    /// reserved "u" octet (ignored here: a translator may ignore it too).
    /// Operators may carve longer prefixes out of the /48, where this reading
    /// is wrong, so the address is not treated as an alias of this IPv4; the
    /// whole /48 is special-purpose anyway.
    Nat64LocalUse,
    /// `2002:AABB:CCDD::/48` (6to4, RFC 3056): the site behind the 6to4
    /// router at `a.b.c.d`, octets 2–5.
    SixToFour,
    /// Teredo (`2001:0::/32`, RFC 4380 §4) server, octets 4–7.
    TeredoServer,
    /// Teredo client, octets 12–15 with every bit inverted (RFC 4380
    /// "obfuscated" so NATs don't rewrite it).
    TeredoClient,
}

impl Ipv4Carrier {
    /// Whether an address of this form is simply another spelling of the
    /// IPv4 host it carries, so allow-lists, deny-lists and "is this our own
    /// address" checks may compare it as that IPv4. Teredo addresses (which
    /// reach a tunnel endpoint, not the carried hosts) and local-use NAT64
    /// addresses (whose layout is the operator's choice) are not: comparing
    /// them as IPv4 could let an IPv4 allowance open them. Both live in
    /// ranges that are special-purpose in themselves, so leaving them out of
    /// [`embedded_ipv4`] only ever makes a check stricter.
    pub fn is_alias(self) -> bool {
        !matches!(
            self,
            Ipv4Carrier::Nat64LocalUse | Ipv4Carrier::TeredoServer | Ipv4Carrier::TeredoClient
        )
    }
}

/// One IPv4 address found inside an IPv6 address, and how it was carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CarriedIpv4 {
    pub carrier: Ipv4Carrier,
    pub addr: Ipv4Addr,
}

/// Every IPv4 address `ip` carries (none, one, or for Teredo the server and
/// the de-obfuscated client), so a special-purpose IPv4 cannot hide inside an
/// IPv6 literal. Used to *refuse*; for comparing addresses as IPv4 use
/// [`embedded_ipv4`]. Allocation-free: this runs per datagram in TURN.
pub fn carried_ipv4s(ip: &Ipv6Addr) -> impl Iterator<Item = CarriedIpv4> + use<> {
    use Ipv4Carrier::*;
    let o = ip.octets();
    let v4 = |a: usize, b: usize, c: usize, d: usize| Ipv4Addr::new(o[a], o[b], o[c], o[d]);
    let tail = v4(12, 13, 14, 15);
    let one = |carrier, addr| [Some(CarriedIpv4 { carrier, addr }), None];
    let found = match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, _, _] => one(Mapped, tail),
        [0, 0, 0, 0, 0xffff, 0, _, _] => one(Translated, tail),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => [None, None],
        [0, 0, 0, 0, 0, 0, _, _] => one(Compatible, tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => one(Nat64WellKnown, tail),
        [0x64, 0xff9b, 1, ..] => one(Nat64LocalUse, v4(6, 7, 9, 10)),
        [0x2002, ..] => one(SixToFour, v4(2, 3, 4, 5)),
        [0x2001, 0, ..] => [
            Some(CarriedIpv4 {
                carrier: TeredoServer,
                addr: v4(4, 5, 6, 7),
            }),
            Some(CarriedIpv4 {
                carrier: TeredoClient,
                addr: Ipv4Addr::from(!u32::from(tail)),
            }),
        ],
        _ => [None, None],
    };
    found.into_iter().flatten()
}

/// The IPv4 host `ip` is another spelling of, if any: mapped
/// (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), translated
/// (`::ffff:0:a.b.c.d`), NAT64 well-known prefix (`64:ff9b::/96`) and 6to4
/// (`2002::/16`) forms. For comparing addresses (allow-lists, own
/// addresses) as IPv4; see [`Ipv4Carrier::is_alias`] for why Teredo and
/// local-use NAT64 are left out, and [`carried_ipv4s`] for all of them.
pub fn embedded_ipv4(ip: &Ipv6Addr) -> Option<Ipv4Addr> {
    carried_ipv4s(ip)
        .find(|c| c.carrier.is_alias())
        .map(|c| c.addr)
}

/// IANA IPv4 special-purpose ranges that must not be reachable from outside
/// (the tests restate them as a CIDR table and check the two agree).
fn v4_special(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    matches!(
        (a, b, c),
        (0, _, _)
            | (10, _, _)
            | (127, _, _)
            | (169, 254, _)
            | (192, 0, 0)
            | (192, 0, 2)
            | (192, 88, 99)
            | (192, 168, _)
            | (198, 51, 100)
            | (203, 0, 113)
    ) || (a == 100 && (64..128).contains(&b))
        || (a == 172 && (16..32).contains(&b))
        || (a == 198 && (18..20).contains(&b))
        || a >= 224
}

/// IANA IPv6 special-purpose ranges, judged on the IPv6 address alone.
/// Forms that carry IPv4 (`::ffff:0:0/96`, `2002::/16`, `64:ff9b::/96`…) are
/// not listed: they are as reachable as the IPv4 they carry, which
/// [`is_special_purpose`] judges separately.
fn v6_special(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site local
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x0200) // 2001::/23 IETF protocol assignments (incl. Teredo 2001::/32)
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // 100::/64 discard
        // 64:ff9b:1::/48 local-use NAT64 (RFC 8215): translates into whatever
        // IPv4 space the operator chose, private ranges included.
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 1)
}

/// True for every IANA special-purpose address (private, loopback, link-local,
/// documentation, multicast, reserved…). An IPv6 address is special if its
/// own range is, or if any IPv4 address it carries ([`carried_ipv4s`]) is:
/// checking only one of the two lets `::ffff:0:7f00:1` (127.0.0.1) or a
/// Teredo address through.
pub fn is_special_purpose(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_special(v4),
        IpAddr::V6(v6) => v6_special(v6) || carried_ipv4s(&v6).any(|c| v4_special(c.addr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ipv4Carrier::*;
    use proptest::prelude::*;

    fn special(s: &str) -> bool {
        is_special_purpose(s.parse().unwrap())
    }

    fn carried(s: &str) -> Vec<(Ipv4Carrier, Ipv4Addr)> {
        carried_ipv4s(&s.parse().unwrap())
            .map(|c| (c.carrier, c.addr))
            .collect()
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_reserved_ranges_are_special() {
        for s in [
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "100::1",
            "64:ff9b:1::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::10.0.0.1",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1:7f00:0:100::",
            "2002:a00:1::1",
            "2002:7f00:1::",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
        ] {
            assert!(special(s), "{s} must be special");
        }
    }

    #[test]
    fn public_addresses_are_not() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "::ffff:0:808:808",
            "64:ff9b::808:808",
            "2002:808:808::",
            "2002:808:808:1:2:3:4:5",
        ] {
            assert!(!special(s), "{s} must be public");
        }
    }

    /// The webhook target `http://[::ffff:0:7f00:1]/` used to be accepted:
    /// RFC 2765/6145 IPv4-translated addresses are judged as their IPv4.
    #[test]
    fn ipv4_translated_addresses_are_judged_as_their_ipv4() {
        assert_eq!(carried("::ffff:0:7f00:1"), [(Translated, v4("127.0.0.1"))]);
        assert_eq!(
            embedded_ipv4(&"::ffff:0:7f00:1".parse().unwrap()),
            Some(v4("127.0.0.1"))
        );
        assert!(special("::ffff:0:7f00:1"));
        assert!(special("::ffff:0:a00:1"));
        assert!(special("::ffff:0:c0a8:101"));
        assert!(special("::ffff:0:0:0"), "0.0.0.0");
        assert!(!special("::ffff:0:808:808"));
        // ::ffff:0:0/96 (mapped) and ::ffff:0:0:0/96 (translated) differ by
        // one segment; neither swallows the other.
        assert_eq!(carried("::ffff:808:808"), [(Mapped, v4("8.8.8.8"))]);
        assert_eq!(carried("::ffff:0:808:808"), [(Translated, v4("8.8.8.8"))]);
    }

    #[test]
    fn mapped_compatible_nat64_and_6to4_forms() {
        assert_eq!(carried("::ffff:10.0.0.1"), [(Mapped, v4("10.0.0.1"))]);
        assert_eq!(carried("::10.0.0.1"), [(Compatible, v4("10.0.0.1"))]);
        assert_eq!(carried("::2"), [(Compatible, v4("0.0.0.2"))]);
        assert!(special("::2"));
        // `::` and `::1` are IPv6's own and stay special as such.
        assert_eq!(carried("::"), []);
        assert_eq!(carried("::1"), []);
        assert!(special("::") && special("::1"));
        assert_eq!(
            carried("64:ff9b::7f00:1"),
            [(Nat64WellKnown, v4("127.0.0.1"))]
        );
        assert_eq!(carried("2002:7f00:1:2::3"), [(SixToFour, v4("127.0.0.1"))]);
        assert_eq!(carried("2606:4700::1111"), []);
        // Only the well-known /96, not the rest of 64:ff9b::/32.
        assert_eq!(carried("64:ff9b:0:1::a00:1"), []);
    }

    #[test]
    fn nat64_local_use_prefix_is_special_and_carries_ipv4() {
        // /48 layout (RFC 6052 §2.2): 64:ff9b:1:AABB:uuCC:DD00::.
        assert_eq!(
            carried("64:ff9b:1:7f00:0:100::"),
            [(Nat64LocalUse, v4("127.0.0.1"))]
        );
        assert_eq!(
            carried("64:ff9b:1:c0a8:1:100::"),
            [(Nat64LocalUse, v4("192.168.1.1"))]
        );
        // The range is special whatever it carries…
        assert_eq!(
            carried("64:ff9b:1:808:8:800::"),
            [(Nat64LocalUse, v4("8.8.8.8"))]
        );
        assert!(special("64:ff9b:1:808:8:800::"));
        // …and not an alias of that IPv4 (so an IPv4 allowance can't open it).
        assert_eq!(
            embedded_ipv4(&"64:ff9b:1:808:8:800::".parse().unwrap()),
            None
        );
    }

    #[test]
    fn teredo_is_special_and_exposes_server_and_client() {
        // RFC 4380 §4 example: server 65.54.227.120, client 192.0.2.45.
        assert_eq!(
            carried("2001:0:4136:e378:8000:63bf:3fff:fdd2"),
            [
                (TeredoServer, v4("65.54.227.120")),
                (TeredoClient, v4("192.0.2.45"))
            ]
        );
        // Client 127.0.0.1 (obfuscated 80ff:fffe).
        let loopback_client = "2001:0:4136:e378:8000:63bf:80ff:fffe";
        assert!(carried(loopback_client).contains(&(TeredoClient, v4("127.0.0.1"))));
        assert!(special(loopback_client));
        // Always refused, even with public server and client…
        let public = "2001:0:808:808:0:0:f7f7:f7f7";
        assert_eq!(
            carried(public),
            [(TeredoServer, v4("8.8.8.8")), (TeredoClient, v4("8.8.8.8"))]
        );
        assert!(special(public));
        // …and never compared as either IPv4.
        assert_eq!(embedded_ipv4(&public.parse().unwrap()), None);
        // 2001:1::/32 and up are not Teredo.
        assert_eq!(carried("2001:1::1"), []);
    }

    /// Every IPv4 special-purpose range, as `(base, prefix length)`: a
    /// restatement of `v4_special` that the properties below draw from.
    const V4_SPECIAL_RANGES: &[([u8; 4], u8)] = &[
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 0, 2, 0], 24),
        ([192, 88, 99, 0], 24),
        ([192, 168, 0, 0], 16),
        ([198, 18, 0, 0], 15),
        ([198, 51, 100, 0], 24),
        ([203, 0, 113, 0], 24),
        ([224, 0, 0, 0], 3),
    ];

    const ALL_CARRIERS: [Ipv4Carrier; 8] = [
        Mapped,
        Compatible,
        Translated,
        Nat64WellKnown,
        Nat64LocalUse,
        SixToFour,
        TeredoServer,
        TeredoClient,
    ];

    fn in_table(ip: Ipv4Addr) -> bool {
        V4_SPECIAL_RANGES.iter().any(|&(base, len)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from_be_bytes(base)
        })
    }

    fn special_v4() -> impl Strategy<Value = Ipv4Addr> {
        (prop::sample::select(V4_SPECIAL_RANGES), any::<u32>()).prop_map(|((base, len), host)| {
            let host_mask = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            Ipv4Addr::from(u32::from_be_bytes(base) | (host & host_mask))
        })
    }

    fn public_v4() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>()
            .prop_map(Ipv4Addr::from)
            .prop_filter("public", |ip| !is_special_purpose(IpAddr::V4(*ip)))
    }

    /// Builds `ip` in the IPv6 form `carrier`, straight from the RFC layouts
    /// (independently of the parser under test). `noise` fills the bits the
    /// form leaves free (6to4 subnet and interface id, Teredo flags, port and
    /// other endpoint, the NAT64 "u" octet and suffix), which must not change
    /// the verdict.
    fn wrap(carrier: Ipv4Carrier, ip: Ipv4Addr, noise: u128) -> Ipv6Addr {
        let [a, b, c, d] = ip.octets();
        let n = noise.to_be_bytes();
        Ipv6Addr::from(match carrier {
            Mapped => return ip.to_ipv6_mapped(),
            Compatible => return ip.to_ipv6_compatible(),
            Translated => [0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, a, b, c, d],
            Nat64WellKnown => [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, a, b, c, d],
            Nat64LocalUse => [
                0, 0x64, 0xff, 0x9b, 0, 1, a, b, n[8], c, d, n[11], n[12], n[13], n[14], n[15],
            ],
            SixToFour => [
                0x20, 0x02, a, b, c, d, n[6], n[7], n[8], n[9], n[10], n[11], n[12], n[13], n[14],
                n[15],
            ],
            TeredoServer => [
                0x20, 0x01, 0, 0, a, b, c, d, n[8], n[9], n[10], n[11], n[12], n[13], n[14], n[15],
            ],
            TeredoClient => [
                0x20, 0x01, 0, 0, n[4], n[5], n[6], n[7], n[8], n[9], n[10], n[11], !a, !b, !c, !d,
            ],
        })
    }

    #[test]
    fn every_range_in_the_table_is_special_to_its_edges() {
        for &(base, len) in V4_SPECIAL_RANGES {
            let first = u32::from_be_bytes(base);
            let last = first | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            for ip in [first, last] {
                assert!(v4_special(Ipv4Addr::from(ip)), "{}", Ipv4Addr::from(ip));
            }
            // Just outside: special only if another range of the table says so.
            for ip in [first.checked_sub(1), last.checked_add(1)]
                .into_iter()
                .flatten()
            {
                let ip = Ipv4Addr::from(ip);
                assert_eq!(v4_special(ip), in_table(ip), "{ip}");
            }
        }
    }

    proptest! {
        /// The CIDR table and `v4_special` describe the same set.
        #[test]
        fn special_range_table_matches_v4_special(ip in any::<u32>().prop_map(Ipv4Addr::from)) {
            prop_assert_eq!(v4_special(ip), in_table(ip));
        }

        /// A special-purpose IPv4 is special in every IPv6 disguise, and
        /// each disguise gives it back.
        #[test]
        fn special_ipv4_is_special_in_every_ipv6_form(ip in special_v4(), noise in any::<u128>()) {
            for carrier in ALL_CARRIERS {
                if carrier == Compatible && u32::from(ip) <= 1 {
                    continue; // `::` and `::1`: special as IPv6 anyway
                }
                let v6 = wrap(carrier, ip, noise);
                prop_assert!(is_special_purpose(IpAddr::V6(v6)), "{:?} {} as {}", carrier, ip, v6);
                prop_assert!(
                    carried_ipv4s(&v6).any(|c| c == CarriedIpv4 { carrier, addr: ip }),
                    "{:?} {} as {}", carrier, ip, v6
                );
            }
        }

        /// A public IPv4 stays public in the forms that merely respell it,
        /// Teredo and local-use NAT64 stay refused for their range, and
        /// every form's extracted IPv4 round-trips.
        #[test]
        fn public_ipv4_round_trips_and_stays_public_when_respelled(ip in public_v4(), noise in any::<u128>()) {
            for carrier in ALL_CARRIERS {
                let v6 = wrap(carrier, ip, noise);
                let found: Vec<_> = carried_ipv4s(&v6).collect();
                prop_assert!(
                    found.contains(&CarriedIpv4 { carrier, addr: ip }),
                    "{:?} {} as {}: {:?}", carrier, ip, v6, found
                );
                prop_assert_eq!(embedded_ipv4(&v6), carrier.is_alias().then_some(ip));
                prop_assert_eq!(
                    is_special_purpose(IpAddr::V6(v6)),
                    !carrier.is_alias(),
                    "{:?} {} as {}", carrier, ip, v6
                );
                if !carrier.is_alias() {
                    // Why leaving these out of `embedded_ipv4` is safe.
                    prop_assert!(v6_special(v6));
                }
            }
        }
    }
}
