//! Who a call comes from: the address every per-client limit is keyed by.
//!
//! By default that is the socket's peer, which a client cannot forge. Behind a reverse
//! proxy or load balancer every call would seem to come from the proxy, so
//! `TRUSTED_PROXIES` names the proxies (as CIDRs) whose `X-Forwarded-For` or
//! `Forwarded` headers are believed. The chain is read from the right: each hop that is
//! itself a trusted proxy is skipped, and the first address that is not is the client.
//! Anything further left was written by the client and proves nothing.
//!
//! IPv6 clients are keyed by their /64: one host is routinely given a whole /64, and
//! keying by single addresses would hand it 2^64 buckets.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client a request with these headers, arriving from `peer`, comes from.
    pub fn client_of(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientAddress {
        let peer = canonical(peer.ip());
        if !self.contains(peer) {
            return ClientAddress(peer);
        }
        let forwarded = forwarded_chain(headers);
        let client = forwarded
            .iter()
            .rev()
            .copied()
            .map(canonical)
            .find(|hop| !self.contains(*hop))
            // Every hop is a proxy of ours (or there were none): the leftmost is the
            // farthest we can see.
            .or_else(|| forwarded.first().copied().map(canonical))
            .unwrap_or(peer);
        ClientAddress(client)
    }
}

/// A client's address, as the limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddress(IpAddr);

impl ClientAddress {
    pub fn ip(self) -> IpAddr {
        self.0
    }

    /// The key per-client limits use: the address itself for IPv4, the /64 for IPv6.
    pub fn limit_key(self) -> IpAddr {
        match self.0 {
            IpAddr::V4(_) => self.0,
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        }
    }
}

impl std::fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is that IPv4 client.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The hops named by `Forwarded` (RFC 7239) or, without it, `X-Forwarded-For`, left to
/// right, across every occurrence of the header. Unparseable hops (`unknown`,
/// obfuscated names) end the chain there: nothing left of them can be placed.
fn forwarded_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let standard: Vec<&str> = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    let hops: Vec<Option<IpAddr>> = if standard.is_empty() {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|hop| parse_hop(hop.trim()))
            .collect()
    } else {
        standard
            .iter()
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, value)| parse_hop(value.trim().trim_matches('"')))
            })
            .collect()
    };
    // Keep only the parseable suffix: a hop we cannot read hides everything before it.
    let readable = hops.iter().rev().take_while(|hop| hop.is_some()).count();
    hops[hops.len() - readable..]
        .iter()
        .flatten()
        .copied()
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = hop.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(inside, _)| inside.parse().ok())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn proxies(cidrs: &[&str]) -> TrustedProxies {
        TrustedProxies::new(cidrs.iter().map(|cidr| cidr.parse().unwrap()).collect())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_from_untrusted_peers_are_ignored() {
        let none = TrustedProxies::default();
        let forged = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            none.client_of(peer("198.51.100.7"), &forged).ip(),
            ip("198.51.100.7")
        );
        let other = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            other.client_of(peer("198.51.100.7"), &forged).ip(),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        // The client wrote "1.1.1.1" itself; 203.0.113.9 is what our first proxy saw.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(
            trusted.client_of(peer("10.0.0.1"), &chain).ip(),
            ip("203.0.113.9")
        );
        let split = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            trusted.client_of(peer("10.0.0.1"), &split).ip(),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_accepts_ports_and_brackets() {
        let trusted = proxies(&["127.0.0.0/8"]);
        let both = headers(&[
            (
                "forwarded",
                "for=198.51.100.1;proto=https, for=\"[2001:db8::7]:4711\"",
            ),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(
            trusted.client_of(peer("127.0.0.1"), &both).ip(),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn an_unreadable_hop_hides_everything_left_of_it() {
        let trusted = proxies(&["127.0.0.0/8"]);
        let chain = headers(&[("x-forwarded-for", "198.51.100.1, unknown")]);
        // Nothing readable to the right of "unknown": the proxy itself is the client.
        assert_eq!(
            trusted.client_of(peer("127.0.0.1"), &chain).ip(),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn ipv6_clients_share_a_limit_per_64_and_mapped_ipv4_is_ipv4() {
        let a = ClientAddress(ip("2001:db8:1:2:aaaa::1"));
        let b = ClientAddress(ip("2001:db8:1:2:bbbb::2"));
        assert_eq!(a.limit_key(), b.limit_key());
        assert_eq!(a.limit_key(), ip("2001:db8:1:2::"));
        let none = TrustedProxies::default();
        let mapped = none.client_of(peer("::ffff:192.0.2.5"), &HeaderMap::new());
        assert_eq!(mapped.ip(), ip("192.0.2.5"));
    }
}
