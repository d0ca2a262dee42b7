//! Keeps HTTP actions away from internal addresses (server-side request forgery): loopback,
//! private, link-local, shared (CGNAT), cloud metadata and other non-public ranges, including
//! IPv4 hidden inside IPv6 (mapped, compatible, NAT64, 6to4). Host names are checked after
//! resolution by the client's resolver, so a name that points inside — or is re-pointed
//! there — is refused, and the client connects only to the addresses that were checked.
//! Numeric host forms (`2130706433`, `0x7f.1`) are normalised by the URL parser first.
//! A target with `allow_private_network: true` skips all of this.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why an address may not be contacted, if it may not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() || a == 0 => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_private() => "a private address",
        _ if ip.is_link_local() => "a link-local address (cloud metadata lives there)",
        _ if a == 100 && (64..128).contains(&b) => "a shared (CGNAT) address",
        _ if a == 192 && b == 0 && c == 0 => "an IETF-reserved address",
        _ if a == 198 && (b == 18 || b == 19) => "a benchmarking address",
        _ if ip.is_broadcast() || ip.is_multicast() || a >= 240 => {
            "a broadcast, multicast or reserved address"
        }
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // IPv4 carried in IPv6: judge the IPv4 address.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4).map(|_| "an IPv4-mapped internal address");
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return forbidden_v4(embedded(s[6], s[7])).map(|_| "an IPv4-compatible internal address");
    }
    if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64, well-known (64:ff9b::/96) and local-use (64:ff9b:1::/48) prefixes.
        return forbidden_v4(embedded(s[6], s[7])).map(|_| "a NAT64 internal address");
    }
    if s[0] == 0x2002 {
        return forbidden_v4(embedded(s[1], s[2])).map(|_| "a 6to4 internal address");
    }
    Some(match () {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unique_local() => "a unique-local address (cloud metadata lives there)",
        _ if ip.is_unicast_link_local() => "a link-local address",
        _ if (s[0] & 0xffc0) == 0xfec0 => "a site-local address",
        _ if ip.is_multicast() => "a multicast address",
        _ if s[0] == 0x2001 && s[1] == 0 => "a Teredo address",
        _ if s[0] == 0x0100 && s[1..4] == [0, 0, 0] => "a discard-only address",
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves to {ip}, {why}; trueup does not send actions there unless the target sets `allow_private_network: true`"
)]
pub struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub why: &'static str,
}

/// Checks a URL whose host is an IP address (names are checked by [`GuardedResolver`]).
pub fn check_url(url: &reqwest::Url) -> Result<(), Refused> {
    // The URL parser has already turned every numeric IPv4 spelling into dotted form.
    let host = url.host_str().unwrap_or_default();
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return Ok(());
    };
    match forbidden(ip) {
        Some(why) => Err(Refused {
            host: url.host_str().unwrap_or_default().to_owned(),
            ip,
            why,
        }),
        None => Ok(()),
    }
}

/// Whether to follow a redirect to `to` after `hops` redirects: only a few, only under the
/// target's base URL, and (for a guarded target) not to an internal address. Names are
/// checked again by the resolver when the redirect is followed.
pub fn check_redirect(
    to: &reqwest::Url,
    hops: usize,
    base: &str,
    guarded: bool,
) -> Result<(), String> {
    if hops >= 3 {
        return Err("more than 3 redirects".into());
    }
    if !to.as_str().starts_with(base) {
        return Err(format!(
            "a redirect to {to}, outside the target's base_url {base}"
        ));
    }
    if guarded {
        check_url(to).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A DNS resolver that refuses a name if any of its addresses is internal.
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some((ip, why)) = addrs
                .iter()
                .find_map(|a| forbidden(a.ip()).map(|why| (a.ip(), why)))
            {
                return Err(Box::new(Refused { host, ip, why }) as Box<_>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_refused(raw: &str) -> bool {
        check_url(&reqwest::Url::parse(raw).unwrap()).is_err()
    }

    #[test]
    fn internal_addresses_in_every_spelling_are_refused() {
        for raw in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://10.0.0.5/",
            "http://172.16.3.4/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.100.100.200/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[64:ff9b:1::10.0.0.1]/",
            "http://[2002:7f00:1::]/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
        ] {
            assert!(url_refused(raw), "{raw} was allowed");
        }
    }

    #[test]
    fn public_addresses_and_names_pass_the_literal_check() {
        for raw in [
            "https://93.184.215.14/",
            "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
            "https://[64:ff9b::5db8:d70e]/",
            "https://billing.example.com/api/",
        ] {
            assert!(!url_refused(raw), "{raw} was refused");
        }
    }

    #[test]
    fn redirects_stay_under_the_base_url_and_off_internal_addresses() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let base = "https://billing.example.com/api/";
        assert!(
            check_redirect(&url("https://billing.example.com/api/v2/x"), 0, base, true).is_ok()
        );
        for to in [
            "http://169.254.169.254/latest/meta-data/",
            "https://billing.example.com/admin",
            "https://evil.example.net/api/",
        ] {
            assert!(check_redirect(&url(to), 0, base, true).is_err(), "{to}");
        }
        assert!(check_redirect(&url("https://billing.example.com/api/x"), 3, base, true).is_err());
        // A base URL on an internal address (allowed for that target) still cannot redirect
        // elsewhere inside.
        let inside = "http://10.1.2.3/api/";
        assert!(check_redirect(&url("http://10.1.2.3/api/next"), 0, inside, false).is_ok());
        assert!(check_redirect(&url("http://10.1.2.4/api/next"), 0, inside, false).is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_inside_is_refused() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match GuardedResolver.resolve(name).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("loopback"), "{err}");
    }
}
