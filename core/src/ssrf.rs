//! The SSRF guard: webhook targets may only be global addresses.
//!
//! The check happens where the address is chosen: [`GuardedResolver`] is the HTTP
//! client's DNS resolver, so the address that is connected to is the address that was
//! checked (no time-of-check/time-of-use gap, no DNS rebinding). IP literals never reach
//! a resolver, so [`check_url`] checks them before the request; with no proxies (the
//! client is built with `no_proxy`) the literal is the connected address.
//!
//! A hostname is refused if *any* of its addresses is refused. An admin can allow
//! ranges with `HERALD_WEBHOOK_ALLOW_CIDRS`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// What an owner is told when the SSRF guard refuses their endpoint's address: not the
/// address (the API must not be a probe of the internal network). Operators get the
/// detail in the log and `herald_webhook_ssrf_refused_total`.
pub const REFUSED_BY_POLICY: &str = "refused by the network policy: the endpoint's address is not allowed";

/// Why an address or URL was refused. Attempts refused for this reason are not retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused by the SSRF guard: {0}")]
pub struct Refused(pub String);

static BLOCKED: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    [
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (CGNAT, 100.64.0.0/10)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.169.254/32", "the cloud metadata service"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "documentation (TEST-NET-1)"),
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("198.51.100.0/24", "documentation (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation (TEST-NET-3)"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "reserved (local-use NAT64)"),
        ("100::/64", "reserved (discard-only)"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("2001::/23", "reserved (IETF protocol assignments)"),
        ("fc00::/7", "unique local (fc00::/7)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    ]
    .into_iter()
    .map(|(net, why)| (net.parse().expect("valid CIDR"), why))
    .collect()
});

/// The IPv4 address embedded in IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`) forms.
fn embedded_v4(v6: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0, 0, 0, 0, 0, 0, _, _] if !(s[6] == 0 && s[7] <= 1) => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        _ => None,
    }
}

/// The allow-list and the table of refused ranges.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<IpNet>,
}

impl Guard {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Parses `HERALD_WEBHOOK_ALLOW_CIDRS`: comma-separated CIDRs or single addresses.
    pub fn parse_allow(v: &str) -> Result<Vec<IpNet>, String> {
        v.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("'{p}' is not a CIDR range such as 10.1.0.0/16 or an address"))
            })
            .collect()
    }

    /// `Err` with the reason when `ip` may not be connected to.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        // An IPv4-mapped IPv6 address is the IPv4 address as far as the network goes.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        if let Some((_, why)) = BLOCKED.iter().find(|(n, _)| n.contains(&ip)) {
            return Err(Refused(format!("{ip} is {why}")));
        }
        if let IpAddr::V6(v6) = ip {
            if let Some(v4) = embedded_v4(&v6) {
                return self
                    .check(IpAddr::V4(v4))
                    .map_err(|r| Refused(format!("{ip} embeds an IPv4 address: {}", r.0)));
            }
            // Only 2000::/3 is global unicast.
            if v6.segments()[0] & 0xe000 != 0x2000 {
                return Err(Refused(format!("{ip} is not a global unicast address")));
            }
        }
        Ok(())
    }

    /// Checks a target URL before a request: scheme, and the host when it is an IP
    /// literal (hostnames are checked by [`GuardedResolver`] at connection time).
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused(format!("the scheme '{}' is not allowed; use http or https", url.scheme())));
        }
        match url.host() {
            None => Err(Refused("the URL has no host".into())),
            Some(url::Host::Ipv4(ip)) => self.check(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }

    pub fn resolver(self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { guard: self })
    }
}

/// The HTTP client's resolver: resolves with the system resolver, then refuses the
/// name if any address is refused.
#[derive(Debug)]
pub struct GuardedResolver {
    guard: Guard,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no addresses").into());
            }
            for a in &addrs {
                guard.check(a.ip()).map_err(|r| Refused(format!("{host} resolves to a refused address: {}", r.0)))?;
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Finds a [`Refused`] in an error's source chain.
pub fn refused_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_refuses_every_non_global_form() {
        let g = Guard::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:c0a8:0101::1",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(g.check(ip).is_err(), "{bad} must be refused");
        }
        for good in ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:1.1.1.1"] {
            assert!(g.check(good.parse().unwrap()).is_ok(), "{good} must be allowed");
        }
        assert!(g.check("169.254.169.254".parse().unwrap()).unwrap_err().0.contains("metadata"));
    }

    #[test]
    fn the_allow_list_opens_ranges_including_mapped_forms() {
        let g = Guard::new(Guard::parse_allow("127.0.0.1, 10.0.0.0/8").unwrap());
        assert!(g.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(g.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(g.check("127.0.0.2".parse().unwrap()).is_err());
        assert!(g.check("10.9.9.9".parse().unwrap()).is_ok());
        assert!(Guard::parse_allow("10.0.0.0/33").is_err());
    }

    #[test]
    fn urls_are_checked_for_scheme_and_literal_hosts() {
        let g = Guard::default();
        for bad in [
            "ftp://example.com/",
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]:8080/",
            "http://2130706433/",
            "http://0x7f.1/",
            "https://169.254.169.254/latest/meta-data/",
        ] {
            assert!(g.check_url(&bad.parse().unwrap()).is_err(), "{bad}");
        }
        assert!(g.check_url(&"https://example.com/hook".parse().unwrap()).is_ok());
    }
}
