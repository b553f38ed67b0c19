//! Which addresses a webhook may reach.
//!
//! Anyone holding an API token can create a webhook, and the dispatcher POSTs from inside the
//! operator's network, so without a policy a token would be enough to probe loopback services,
//! the cloud metadata endpoint or the internal network. The policy is applied three times:
//! - to a URL's literal host when a webhook is created (the api answers 422);
//! - to a URL's literal host before each delivery (webhooks stored before the policy, or
//!   before the operator narrowed it);
//! - to every address a host name resolves to, by the webhook client's own resolver
//!   ([`VettingResolver`]), so the client connects only to addresses that were vetted: a name
//!   that resolves (or starts resolving) somewhere forbidden is refused too.
//!
//! Redirects are never followed (the client's redirect policy is `none`): a redirect could
//! otherwise lead anywhere after the first hop was vetted.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The environment variable the policy is read from.
pub const VARIABLE: &str = "NETCRON_WEBHOOK_ALLOW";

/// What an IP address is, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Anything not below: allowed.
    Public,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT), fc00::/7 (unique local),
    /// fec0::/10 (the deprecated site-local): allowed only with `private`.
    Private,
    /// 127/8, ::1: allowed only with `loopback`.
    Loopback,
    /// Never a webhook target: unspecified (0.0.0.0/8, ::), link-local (169.254/16, which holds
    /// the cloud metadata address 169.254.169.254, and fe80::/10), multicast, broadcast.
    Forbidden(&'static str),
}

impl AddressClass {
    fn name(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Loopback => "loopback",
            Self::Forbidden(kind) => kind,
        }
    }
}

/// Classifies `ip`. IPv6 addresses that carry an IPv4 address to reach (IPv4-mapped
/// `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) are classified by that IPv4 address.
#[must_use]
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => embedded_v4(v6).map_or_else(|| classify_v6(v6), classify_v4),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, ..] = ip.octets();
    if a == 0 {
        // 0.0.0.0/8 is "this network"; connecting to 0.0.0.0 reaches the local host.
        AddressClass::Forbidden("unspecified")
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_link_local() {
        AddressClass::Forbidden("link-local")
    } else if ip.is_broadcast() {
        AddressClass::Forbidden("broadcast")
    } else if ip.is_multicast() {
        AddressClass::Forbidden("multicast")
    } else if ip.is_private() || (a == 100 && b & 0xc0 == 64) {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        AddressClass::Forbidden("unspecified")
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_multicast() {
        AddressClass::Forbidden("multicast")
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::Forbidden("link-local")
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0])
        .then(|| Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])))
}

/// The URL's host as an IP address, if it is one. The URL parser has already normalized every
/// IPv4 spelling (`0x7f000001`, `2130706433`) to dotted decimal; IPv6 hosts keep brackets.
fn literal_ip(url: &Url) -> Option<(&str, IpAddr)> {
    let host = url.host_str()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse().ok().map(|ip| (bare, ip))
}

/// Which address classes beyond public ones webhooks may reach (`NETCRON_WEBHOOK_ALLOW`, a
/// comma-separated list of `private` and `loopback`; empty by default). The forbidden classes
/// cannot be allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookPolicy {
    pub allow_private: bool,
    pub allow_loopback: bool,
}

impl FromStr for WebhookPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut policy = Self::default();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word.to_ascii_lowercase().as_str() {
                "private" => policy.allow_private = true,
                "loopback" => policy.allow_loopback = true,
                _ => return Err(format!("`{word}` is not one of: private, loopback")),
            }
        }
        Ok(policy)
    }
}

impl WebhookPolicy {
    /// Whether a webhook may connect to `ip`.
    ///
    /// # Errors
    /// The refusal, naming `host` (the URL's host, which may be `ip` itself).
    pub fn check(self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        let class = classify(ip);
        let allowed = match class {
            AddressClass::Public => true,
            AddressClass::Private => self.allow_private,
            AddressClass::Loopback => self.allow_loopback,
            AddressClass::Forbidden(_) => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal {
                host: host.to_owned(),
                address: ip,
                class,
            })
        }
    }

    /// Checks the URL's host when it is an IP address (which no resolver sees); a name passes.
    ///
    /// # Errors
    /// The refusal.
    pub fn check_literal(self, url: &Url) -> Result<(), Refusal> {
        match literal_ip(url) {
            Some((host, ip)) => self.check(host, ip),
            None => Ok(()),
        }
    }

    /// What can be checked without DNS, when a webhook is created: [`Self::check_literal`], and
    /// `localhost` with its subdomains, which RFC 6761 reserves for the loopback interface.
    ///
    /// # Errors
    /// The refusal.
    pub fn check_url(self, url: &Url) -> Result<(), Refusal> {
        self.check_literal(url)?;
        let name = url
            .host_str()
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            self.check(&name, IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else {
            Ok(())
        }
    }

    /// Checks every address `host` resolved to: one forbidden address refuses the name, since
    /// the client may connect to any of them.
    ///
    /// # Errors
    /// The first refused address.
    pub fn check_resolved(self, host: &str, addrs: &[SocketAddr]) -> Result<(), Refusal> {
        addrs
            .iter()
            .try_for_each(|addr| self.check(host, addr.ip()))
    }
}

/// A webhook target the policy refuses. Its `Display` is the sentence recorded on the
/// delivery (or returned by the api).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    host: String,
    address: IpAddr,
    class: AddressClass,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.class.name();
        if self.host == self.address.to_string() {
            write!(f, "{} is a {kind} address", self.address)?;
        } else {
            write!(
                f,
                "{} resolves to {}, a {kind} address",
                self.host, self.address
            )?;
        }
        match self.class {
            AddressClass::Private | AddressClass::Loopback => write!(
                f,
                ", which webhooks may reach only when {VARIABLE} includes `{kind}`"
            ),
            _ => f.write_str(", which webhooks never reach"),
        }
    }
}

impl std::error::Error for Refusal {}

/// The webhook client's DNS resolver: the system resolver, then the policy on every address,
/// so the addresses the client connects to are exactly the ones vetted.
#[derive(Debug, Clone, Copy)]
pub struct VettingResolver {
    pub policy: WebhookPolicy,
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(resolve_vetted(self.policy, name.as_str().to_owned()))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn resolve_vetted(policy: WebhookPolicy, host: String) -> Result<Addrs, BoxError> {
    // Port 0: the client puts the URL's port in.
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address").into());
    }
    policy.check_resolved(&host, &addrs)?;
    Ok(Box::new(addrs.into_iter()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> AddressClass {
        classify(text.parse().expect("an IP address"))
    }

    #[test]
    fn addresses_are_classified() {
        for public in [
            "192.0.2.10",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2001:db8::1",
        ] {
            assert_eq!(class(public), AddressClass::Public, "{public}");
        }
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(class(private), AddressClass::Private, "{private}");
        }
        for loopback in [
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert_eq!(class(loopback), AddressClass::Loopback, "{loopback}");
        }
        for (forbidden, kind) in [
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::ffff:169.254.169.254", "link-local"),
        ] {
            assert_eq!(
                class(forbidden),
                AddressClass::Forbidden(kind),
                "{forbidden}"
            );
        }
    }

    #[test]
    fn the_policy_is_parsed_from_a_comma_list() {
        assert_eq!("".parse::<WebhookPolicy>(), Ok(WebhookPolicy::default()));
        assert_eq!(
            " private , Loopback ".parse::<WebhookPolicy>(),
            Ok(WebhookPolicy {
                allow_private: true,
                allow_loopback: true
            })
        );
        let error = "private,link-local"
            .parse::<WebhookPolicy>()
            .expect_err("not a class");
        assert!(error.contains("`link-local`"), "{error}");
    }

    #[test]
    fn the_default_refuses_everything_but_public_addresses() {
        let policy = WebhookPolicy::default();
        let url = |u: &str| Url::parse(u).expect("URL");
        assert!(
            policy
                .check_url(&url("https://hooks.example.net/x"))
                .is_ok()
        );
        assert!(policy.check_url(&url("http://192.0.2.1:8080/x")).is_ok());
        let refused = policy
            .check_url(&url("http://127.0.0.1:9/x"))
            .expect_err("loopback");
        assert_eq!(
            refused.to_string(),
            "127.0.0.1 is a loopback address, which webhooks may reach only when \
             NETCRON_WEBHOOK_ALLOW includes `loopback`"
        );
        // Every spelling the URL parser accepts for an IPv4 address is the same address.
        assert!(policy.check_url(&url("http://0x7f000001/")).is_err());
        assert!(policy.check_url(&url("http://2130706433/")).is_err());
        assert!(policy.check_url(&url("http://[::1]/")).is_err());
        assert!(policy.check_url(&url("http://LocalHost./")).is_err());
        assert!(policy.check_url(&url("http://api.localhost/")).is_err());
        assert!(policy.check_url(&url("http://10.0.0.1/")).is_err());
        let metadata = policy
            .check_url(&url("http://169.254.169.254/latest/meta-data/"))
            .expect_err("metadata");
        assert!(metadata.to_string().ends_with("never reach"), "{metadata}");
    }

    #[test]
    fn an_operator_can_allow_private_and_loopback_but_not_link_local() {
        let policy = WebhookPolicy {
            allow_private: true,
            allow_loopback: true,
        };
        let ip = |t: &str| t.parse::<IpAddr>().expect("IP");
        assert!(policy.check("h", ip("10.0.0.1")).is_ok());
        assert!(policy.check("h", ip("127.0.0.1")).is_ok());
        assert!(policy.check("h", ip("169.254.169.254")).is_err());
        assert!(policy.check("h", ip("0.0.0.0")).is_err());
        let addrs = [
            SocketAddr::new(ip("192.0.2.1"), 0),
            SocketAddr::new(ip("169.254.169.254"), 0),
        ];
        let refused = policy
            .check_resolved("evil.example", &addrs)
            .expect_err("one bad");
        assert_eq!(
            refused.to_string(),
            "evil.example resolves to 169.254.169.254, a link-local address, which webhooks \
             never reach"
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_to_a_refused_address() {
        let name = || "localhost".parse::<Name>().expect("name");
        let strict = VettingResolver {
            policy: WebhookPolicy::default(),
        };
        let Err(error) = strict.resolve(name()).await else {
            panic!("localhost was resolved under the default policy");
        };
        let refusal = error.downcast_ref::<Refusal>().expect("a refusal");
        assert!(
            refusal.to_string().starts_with("localhost resolves to "),
            "{refusal}"
        );
        let lenient = VettingResolver {
            policy: WebhookPolicy {
                allow_loopback: true,
                ..WebhookPolicy::default()
            },
        };
        let Ok(addrs) = lenient.resolve(name()).await else {
            panic!("localhost was refused with loopback allowed");
        };
        assert!(addrs.map(|a| a.ip()).all(|ip| ip.is_loopback()));
    }

    #[test]
    fn only_a_literal_host_is_checked_before_resolution() {
        let policy = WebhookPolicy::default();
        let url = |u: &str| Url::parse(u).expect("URL");
        assert!(policy.check_literal(&url("http://localhost:9/")).is_ok());
        assert!(policy.check_literal(&url("http://127.0.0.1:9/")).is_err());
    }
}
