//! The SSRF guard: a resolver that drops non-public addresses unless they are inside
//! `federation.allowed_networks`, and the address classification it uses.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The resolver refused every address of a name.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves only to non-public addresses (e.g. {ip}) outside federation.allowed_networks"
)]
pub(super) struct BlockedTarget {
    pub(super) host: String,
    pub(super) ip: IpAddr,
}

/// A DNS resolver that drops non-public addresses unless they are explicitly allowed.
pub(super) struct GuardedResolver {
    pub(super) allowed: Arc<[IpNet]>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = Arc::clone(&self.allowed);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let refused = found
                .iter()
                .map(SocketAddr::ip)
                .find(|ip| !is_permitted(*ip, &allowed));
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| is_permitted(a.ip(), &allowed))
                .collect();
            if kept.is_empty() {
                let error: Box<dyn StdError + Send + Sync> = match refused {
                    Some(ip) => Box::new(BlockedTarget { host, ip }),
                    None => Box::new(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{host} has no address"),
                    )),
                };
                return Err(error);
            }
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether connecting to `ip` is allowed: public, or inside an allowed network.
pub(super) fn is_permitted(ip: IpAddr, allowed: &[IpNet]) -> bool {
    // `::ffff:10.0.0.1` is 10.0.0.1 on the wire: judge (and match networks) as IPv4.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    allowed.iter().any(|net| net.contains(&ip)) || is_public(ip)
}

/// Whether an address is globally routable (not loopback, private, link-local, …).
pub(super) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

pub(super) fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0 // "this network", includes 0.0.0.0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10 CGNAT
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24 IETF protocol assignments
        || ip.is_documentation()
        || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || ip.is_multicast()
        || a >= 240; // 240.0.0.0/4 reserved, and broadcast
    !special
}

pub(super) fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        // 64:ff9b::/96 NAT64 reaches the embedded IPv4 address.
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4 relays to the embedded IPv4 address.
        return is_public_v4(embedded_v4(s[1], s[2]));
    }
    let special = s[..6] == [0; 6] // ::/96: unspecified, loopback, IPv4-compatible
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32 documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // 3fff::/20 documentation
        || (s[0] == 0x0100 && s[1..4] == [0; 3]) // 100::/64 discard
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // 64:ff9b:1::/48 local NAT64
        || (s[0] == 0x2001 && s[1] == 0); // 2001::/32 Teredo (embeds any IPv4)
    !special
}
