//! Addresses a webhook must never reach: every entry of the IANA IPv4 and
//! IPv6 special-purpose address registries, plus multicast, the deprecated
//! site-local and IPv4-compatible IPv6 ranges, and everything IPv6 outside
//! the global unicast space. One table per family, read top to bottom, so a
//! refusal names the range that caused it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `(network, prefix length, what the range is)`.
type V4Range = (Ipv4Addr, u8, &'static str);
type V6Range = (Ipv6Addr, u8, &'static str);

const V4: &[V4Range] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (0.0.0.0/8)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private-use (10.0.0.0/8)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space (100.64.0.0/10)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (127.0.0.0/8)"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local (169.254.0.0/16)",
    ),
    (
        Ipv4Addr::new(172, 16, 0, 0),
        12,
        "private-use (172.16.0.0/12)",
    ),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation TEST-NET-1 (192.0.2.0/24)",
    ),
    (
        Ipv4Addr::new(192, 31, 196, 0),
        24,
        "AS112-v4 (192.31.196.0/24)",
    ),
    (Ipv4Addr::new(192, 52, 193, 0), 24, "AMT (192.52.193.0/24)"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast (192.88.99.0/24)",
    ),
    (
        Ipv4Addr::new(192, 168, 0, 0),
        16,
        "private-use (192.168.0.0/16)",
    ),
    (
        Ipv4Addr::new(192, 175, 48, 0),
        24,
        "AS112 direct delegation (192.175.48.0/24)",
    ),
    (
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        "benchmarking (198.18.0.0/15)",
    ),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation TEST-NET-2 (198.51.100.0/24)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation TEST-NET-3 (203.0.113.0/24)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (224.0.0.0/4)"),
    // Includes the limited broadcast address 255.255.255.255.
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (240.0.0.0/4)"),
];

const V6: &[V6Range] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        128,
        "unspecified (::/128)",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1),
        128,
        "loopback (::1/128)",
    ),
    // `::127.0.0.1` and friends: deprecated, and some stacks route them
    // to the embedded IPv4 address.
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "IPv4-compatible (::/96)",
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "IPv4-mapped (::ffff:0:0/96)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        "IPv4/IPv6 translation (64:ff9b::/96)",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local IPv4/IPv6 translation (64:ff9b:1::/48)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only (100::/64)",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        "dummy prefix (100:0:0:1::/64)",
    ),
    // Teredo (2001::/32), benchmarking, ORCHID, AMT, AS112, ...
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments (2001::/23)",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation (2001:db8::/32)",
    ),
    // Embeds an IPv4 address the relay would reach for us.
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        "6to4 (2002::/16)",
    ),
    (
        Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0),
        48,
        "AS112 direct delegation (2620:4f:8000::/48)",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation (3fff::/20)",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing SIDs (5f00::/16)",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local (fc00::/7)",
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local (fe80::/10)",
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local, deprecated (fec0::/10)",
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast (ff00::/8)",
    ),
    // Only 2000::/3 is allocated for global unicast; the rest is reserved.
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        3,
        "reserved, not global unicast (::/3)",
    ),
    (
        Ipv6Addr::new(0x4000, 0, 0, 0, 0, 0, 0, 0),
        2,
        "reserved, not global unicast (4000::/2)",
    ),
    (
        Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0),
        1,
        "reserved, not global unicast (8000::/1)",
    ),
];

fn v4_in(ip: Ipv4Addr, (net, len, _): &V4Range) -> bool {
    let shift = 32 - u32::from(*len);
    u32::from(ip).checked_shr(shift).unwrap_or(0) == u32::from(*net).checked_shr(shift).unwrap_or(0)
}

fn v6_in(ip: Ipv6Addr, (net, len, _): &V6Range) -> bool {
    let shift = 128 - u32::from(*len);
    u128::from(ip).checked_shr(shift).unwrap_or(0)
        == u128::from(*net).checked_shr(shift).unwrap_or(0)
}

/// The special-purpose range `ip` falls in, if any.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => V4.iter().find(|r| v4_in(v4, r)).map(|r| r.2),
        IpAddr::V6(v6) => V6.iter().find(|r| v6_in(v6, r)).map(|r| r.2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> Option<&'static str> {
        special_purpose(ip.parse().expect("test address"))
    }

    #[test]
    fn every_ipv4_range_is_refused_at_both_ends_and_neighbours_are_not() {
        for (net, len, name) in V4 {
            let first = u32::from(*net);
            let last = first | (u32::MAX.checked_shr(u32::from(*len)).unwrap_or(0));
            for ip in [first, last] {
                assert_eq!(special_purpose(IpAddr::V4(ip.into())), Some(*name), "{ip}");
            }
        }
        for ok in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert_eq!(refused(ok), None, "{ok} is public");
        }
    }

    #[test]
    fn the_ranges_an_audit_found_open_are_refused() {
        for (ip, expect) in [
            ("::127.0.0.1", "IPv4-compatible (::/96)"),
            ("::ffff:127.0.0.1", "IPv4-mapped (::ffff:0:0/96)"),
            ("::ffff:8.8.8.8", "IPv4-mapped (::ffff:0:0/96)"),
            ("64:ff9b::7f00:1", "IPv4/IPv6 translation (64:ff9b::/96)"),
            (
                "64:ff9b:1::1",
                "local IPv4/IPv6 translation (64:ff9b:1::/48)",
            ),
            ("fec0::1", "site-local, deprecated (fec0::/10)"),
            ("198.18.0.1", "benchmarking (198.18.0.0/15)"),
            ("198.19.255.255", "benchmarking (198.18.0.0/15)"),
            ("240.0.0.1", "reserved (240.0.0.0/4)"),
            ("255.255.255.255", "reserved (240.0.0.0/4)"),
            ("224.0.0.1", "multicast (224.0.0.0/4)"),
            ("239.255.255.250", "multicast (224.0.0.0/4)"),
            ("ff02::1", "multicast (ff00::/8)"),
            ("0.1.2.3", "\"this network\" (0.0.0.0/8)"),
            ("192.0.0.8", "IETF protocol assignments (192.0.0.0/24)"),
            ("2001::1", "IETF protocol assignments (2001::/23)"),
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "IETF protocol assignments (2001::/23)",
            ),
            ("2001:db8::1", "documentation (2001:db8::/32)"),
            ("2002:7f00:1::1", "6to4 (2002::/16)"),
            ("2002:a9fe:a9fe::1", "6to4 (2002::/16)"),
            ("100::1", "discard-only (100::/64)"),
            ("100:0:0:1::5", "dummy prefix (100:0:0:1::/64)"),
            (
                "2620:4f:8000::1",
                "AS112 direct delegation (2620:4f:8000::/48)",
            ),
            ("3fff:fff::1", "documentation (3fff::/20)"),
            ("5f00::1", "segment routing SIDs (5f00::/16)"),
            ("fd00::1", "unique local (fc00::/7)"),
            ("fe80::1", "link-local (fe80::/10)"),
            ("::", "unspecified (::/128)"),
            ("::1", "loopback (::1/128)"),
            ("1::1", "reserved, not global unicast (::/3)"),
            ("4000::1", "reserved, not global unicast (4000::/2)"),
            ("c000::1", "reserved, not global unicast (8000::/1)"),
        ] {
            assert_eq!(refused(ip), Some(expect), "{ip}");
        }
    }

    #[test]
    fn every_ipv6_range_is_refused_at_both_ends() {
        for (net, len, _) in V6 {
            let first = u128::from(*net);
            let last = first | (u128::MAX.checked_shr(u32::from(*len)).unwrap_or(0));
            for ip in [first, last] {
                // A more specific range listed earlier may name it; any
                // refusal will do here.
                assert!(
                    special_purpose(IpAddr::V6(ip.into())).is_some(),
                    "{}",
                    Ipv6Addr::from(ip)
                );
            }
        }
    }

    #[test]
    fn global_unicast_ipv6_is_allowed() {
        for ok in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:200::1",
            "2003::1",
            "3ffe:ffff::1",
            "2620:4f:8001::1",
        ] {
            assert_eq!(refused(ok), None, "{ok} is public");
        }
    }
}
