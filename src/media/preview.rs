//! URL previews (`GET /_matrix/client/v1/media/preview_url`): the server
//! fetches a page a user linked to and answers its Open Graph data.
//!
//! Fetching arbitrary URLs on a user's behalf is a way into the server's own
//! network, so every address the host name resolves to is checked against
//! `url_preview_ip_range_blacklist` (loopback, private, link-local and the
//! other special ranges by default) before connecting, the connection goes
//! to the checked address (a second DNS answer cannot swap it), redirects
//! are followed by hand and checked the same way, and the page is read up
//! to `max_spider_size` within a timeout.
//!
//! Not built yet: only the address ranges and their check are here; the
//! endpoint answers `404 M_UNRECOGNIZED` whatever `url_preview_enabled` says.

use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

/// A CIDR range (`10.0.0.0/8`, `::1/128`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn contains(&self, address: IpAddr) -> bool {
        // An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is the IPv4 one.
        let address = match address {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                prefix_matches(&network.octets(), &address.octets(), self.prefix)
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                prefix_matches(&network.octets(), &address.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(network: &[u8], address: &[u8], prefix: u8) -> bool {
    let mut bits = usize::from(prefix);
    for (n, a) in network.iter().zip(address) {
        if bits == 0 {
            return true;
        }
        let take = bits.min(8);
        let mask: u8 = 0xFFu8 << (8 - take);
        if n & mask != a & mask {
            return false;
        }
        bits -= take;
    }
    true
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP range such as 10.0.0.0/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(IpRange { network, prefix })
    }
}

impl TryFrom<String> for IpRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// The ranges previews never fetch from unless configured otherwise: those
/// Synapse's documentation recommends (loopback, private, carrier-grade NAT,
/// link-local, documentation, benchmarking, multicast and their IPv6
/// counterparts), plus "this network".
pub fn default_ip_range_blacklist() -> Vec<IpRange> {
    [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "169.254.0.0/16",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "::1/128",
        "::/128",
        "fe80::/10",
        "fc00::/7",
        "2001:db8::/32",
        "ff00::/8",
        "fec0::/10",
    ]
    .iter()
    .filter_map(|range| range.parse().ok())
    .collect()
}

/// Whether previews may connect to `address`: not in the blacklist, or in
/// the whitelist.
pub fn address_allowed(address: IpAddr, blacklist: &[IpRange], whitelist: &[IpRange]) -> bool {
    whitelist.iter().any(|range| range.contains(address))
        || !blacklist.iter().any(|range| range.contains(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn ranges_parse_and_match() {
        let range: IpRange = "10.0.0.0/8".parse().expect("range");
        assert!(range.contains(ip("10.1.2.3")));
        assert!(!range.contains(ip("11.0.0.1")));
        let range: IpRange = "172.16.0.0/12".parse().expect("range");
        assert!(range.contains(ip("172.31.255.255")));
        assert!(!range.contains(ip("172.32.0.0")));
        let range: IpRange = "fc00::/7".parse().expect("range");
        assert!(range.contains(ip("fd12::1")));
        assert!(!range.contains(ip("2001:4860::1")));
        let single: IpRange = "127.0.0.1".parse().expect("range");
        assert!(single.contains(ip("127.0.0.1")));
        assert!(!single.contains(ip("127.0.0.2")));
        for bad in ["10.0.0.0/33", "nonsense", "::1/129", "1.2.3.4/x"] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_blacklist_covers_loopback_and_private_addresses() {
        let blacklist = default_ip_range_blacklist();
        for denied in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert!(!address_allowed(ip(denied), &blacklist, &[]), "{denied}");
        }
        for allowed in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(address_allowed(ip(allowed), &blacklist, &[]), "{allowed}");
        }
        let whitelist = vec!["127.0.0.1/32".parse().expect("range")];
        assert!(address_allowed(ip("127.0.0.1"), &blacklist, &whitelist));
        assert!(!address_allowed(ip("127.0.0.2"), &blacklist, &whitelist));
    }
}
