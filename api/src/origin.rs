//! Which origin the console is served from, for the same-origin check of state-changing forms.
//! It stands beside the settings and the state that hold it, below the console that uses it,
//! and knows nothing of either.

use std::fmt;
use std::str::FromStr;

use axum::http::{HeaderMap, header};
use url::Url;

/// The console's public address (`NETCRON_PUBLIC_URL`), such as `https://netcron.example.net`:
/// the origin browsers see when a proxy in front of netcron rewrites `Host`. Only its origin
/// (scheme, host and port) counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl(url::Origin);

impl FromStr for PublicUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("the scheme must be http or https".into());
        }
        if url.host().is_none() {
            return Err("a host is required".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("a user name or password has no place in it".into());
        }
        Ok(Self(url.origin()))
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.ascii_serialization())
    }
}

/// How the console knows its own origin, for the `Origin` check of state-changing forms (see
/// the console's `Action` extractor) and the cookie's `Secure` flag.
#[derive(Clone, Debug, Default)]
pub struct ConsoleOrigin {
    public: Option<PublicUrl>,
}

impl ConsoleOrigin {
    pub fn new(public: Option<PublicUrl>) -> Self {
        Self { public }
    }

    /// Whether a request with these headers may change state: a browser sends `Origin` with
    /// every POST and a page of another origin cannot forge it. Without `Origin` (clients that
    /// are not browsers, which carry no ambient cookie to abuse) the CSRF token alone decides.
    ///
    /// With a public URL configured, `Origin` must be its origin. Without one, it must be the
    /// origin the browser asked for: `Host`, or the host and scheme a proxy in front says the
    /// browser asked for (`Forwarded: host=…;proto=…`, RFC 7239, or `X-Forwarded-Host` and
    /// `X-Forwarded-Proto`). Trusting forwarded headers is safe for this check although
    /// anyone can send them: the check defends against a *cross-site* request made by the
    /// victim's browser, and such a request cannot carry them — an HTML form sends no headers
    /// of its choosing, and `fetch` from another origin may add these only after a CORS
    /// preflight, which netcron never grants. A client that can set any header is not a
    /// browser with the victim's cookie, and still needs the session's CSRF token.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Some(origin) = origin
            .to_str()
            .ok()
            .and_then(|o| Url::parse(o).ok())
            .map(|u| u.origin())
            .filter(url::Origin::is_tuple)
        else {
            // `null` (a sandboxed page, a redirect across sites) and anything malformed.
            return false;
        };
        if let Some(public) = &self.public {
            return origin == public.0;
        }
        Requested::from_headers(headers)
            .iter()
            .any(|requested| requested.matches(&origin))
    }

    /// The console's origin as the browser sees it, for the redirect URI given to an OpenID
    /// Connect provider: the public URL when one is configured, else `Host` with `https` when
    /// [`Self::secure_cookies`] says the browser came over TLS and `http` otherwise.
    pub fn origin_of(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(public) = &self.public {
            return Some(public.to_string());
        }
        let host = headers
            .get(header::HOST)?
            .to_str()
            .ok()
            .filter(|h| !h.contains(['/', '@', '?', '#', '\\']))?;
        let scheme = if self.secure_cookies(headers) {
            "https"
        } else {
            "http"
        };
        Url::parse(&format!("{scheme}://{host}"))
            .ok()
            .map(|u| u.origin())
            .filter(url::Origin::is_tuple)
            .map(|o| o.ascii_serialization())
    }

    /// Whether the session cookie is marked `Secure`: the public URL is `https`, or a proxy
    /// that terminates TLS says the browser came over it. netcron itself serves plain HTTP.
    pub fn secure_cookies(&self, headers: &HeaderMap) -> bool {
        if let Some(public) = &self.public {
            return matches!(&public.0, url::Origin::Tuple(scheme, _, _) if scheme == "https");
        }
        let x_forwarded = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
        x_forwarded
            || Requested::from_headers(headers)
                .iter()
                .any(|r| r.scheme.as_deref() == Some("https"))
    }
}

/// An origin the browser may have asked for, from one header: a host (with its port, if any)
/// and, when the header says, the scheme.
#[derive(Debug, PartialEq, Eq)]
struct Requested {
    scheme: Option<String>,
    host: String,
}

impl Requested {
    /// Every origin the request's headers name: each element of `Forwarded`, each
    /// `X-Forwarded-Host` (with the first `X-Forwarded-Proto`), and `Host`.
    fn from_headers(headers: &HeaderMap) -> Vec<Self> {
        let mut found = Vec::new();
        for value in headers.get_all(header::FORWARDED) {
            let Ok(value) = value.to_str() else { continue };
            for element in value.split(',') {
                let (mut host, mut scheme) = (None, None);
                for pair in element.split(';') {
                    let Some((key, value)) = pair.split_once('=') else {
                        continue;
                    };
                    let value = value.trim().trim_matches('"').to_owned();
                    match key.trim().to_ascii_lowercase().as_str() {
                        "host" => host = Some(value),
                        "proto" => scheme = Some(value.to_ascii_lowercase()),
                        _ => {}
                    }
                }
                if let Some(host) = host {
                    found.push(Self { scheme, host });
                }
            }
        }
        let first = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let proto = first("x-forwarded-proto").map(|p| p.to_ascii_lowercase());
        for value in headers.get_all("x-forwarded-host") {
            let Ok(value) = value.to_str() else { continue };
            for host in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                found.push(Self {
                    scheme: proto.clone(),
                    host: host.to_owned(),
                });
            }
        }
        if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
            found.push(Self {
                scheme: None,
                host: host.trim().to_owned(),
            });
        }
        found
    }

    /// Whether `origin` is this host over this scheme; over `http` or `https` when the header
    /// did not say which (a default port is the same as none).
    fn matches(&self, origin: &url::Origin) -> bool {
        let schemes: &[&str] = match self.scheme.as_deref() {
            Some("http") => &["http"],
            Some("https") => &["https"],
            Some(_) => &[],
            None => &["http", "https"],
        };
        schemes.iter().any(|scheme| {
            // The host must be a host and nothing more: no path, user or query smuggled in.
            if self.host.contains(['/', '@', '?', '#', '\\']) {
                return false;
            }
            Url::parse(&format!("{scheme}://{}", self.host)).is_ok_and(|u| u.origin() == *origin)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn origin_is_checked_against_host_forwarded_headers_or_the_public_url() {
        let open = ConsoleOrigin::default();
        let accepts = |o: &ConsoleOrigin, pairs| o.accepts(&headers(pairs));
        assert!(accepts(
            &open,
            &[("host", "a:8080"), ("origin", "http://a:8080")]
        ));
        assert!(accepts(
            &open,
            &[("host", "a"), ("origin", "https://a:443")]
        ));
        assert!(accepts(&open, &[("host", "a")]), "no Origin: token only");
        assert!(!accepts(&open, &[("host", "a"), ("origin", "http://b")]));
        assert!(!accepts(&open, &[("host", "a"), ("origin", "null")]));
        assert!(!accepts(&open, &[("origin", "http://a")]), "no Host");
        let forwarded = [
            ("host", "internal:8080"),
            (
                "forwarded",
                "for=192.0.2.1, for=10.0.0.1;host=\"pub.example\";proto=https",
            ),
            ("origin", "https://pub.example"),
        ];
        assert!(accepts(&open, &forwarded));
        let x = [
            ("host", "internal:8080"),
            ("x-forwarded-host", "pub.example, internal"),
            ("x-forwarded-proto", "https,http"),
            ("origin", "https://pub.example"),
        ];
        assert!(accepts(&open, &x));
        let wrong_scheme = [
            ("host", "internal:8080"),
            ("x-forwarded-host", "pub.example"),
            ("x-forwarded-proto", "https"),
            ("origin", "http://pub.example"),
        ];
        assert!(!accepts(&open, &wrong_scheme));
        let smuggled = [
            ("host", "internal"),
            ("x-forwarded-host", "evil.example/@pub.example"),
            ("origin", "http://evil.example"),
        ];
        assert!(!accepts(&open, &smuggled));

        let public = ConsoleOrigin::new("https://pub.example/console".parse().ok());
        assert!(accepts(
            &public,
            &[("host", "x"), ("origin", "https://pub.example")]
        ));
        assert!(!accepts(&public, &[("host", "x"), ("origin", "http://x")]));
        let claimed = [
            ("host", "x"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("origin", "https://evil.example"),
        ];
        assert!(
            !accepts(&public, &claimed),
            "forwarded headers do not count"
        );
        assert!(public.secure_cookies(&HeaderMap::new()));
        assert!(open.secure_cookies(&headers(&[("x-forwarded-proto", "https")])));
        assert!(!open.secure_cookies(&headers(&[("host", "a")])));
    }

    #[test]
    fn public_urls_are_http_or_https_origins() {
        assert_eq!(
            "https://Pub.Example:443/x?y"
                .parse::<PublicUrl>()
                .map(|p| p.to_string()),
            Ok("https://pub.example".to_owned())
        );
        for bad in [
            "pub.example",
            "ftp://pub.example",
            "https://u:p@pub.example",
            "/x",
        ] {
            assert!(bad.parse::<PublicUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_origin_for_a_redirect_uri_is_the_public_url_else_the_host() {
        let plain = ConsoleOrigin::default();
        assert_eq!(
            plain.origin_of(&headers(&[("host", "netcron.example:8080")])),
            Some("http://netcron.example:8080".to_owned())
        );
        assert_eq!(
            plain.origin_of(&headers(&[
                ("host", "netcron.example"),
                ("x-forwarded-proto", "https")
            ])),
            Some("https://netcron.example".to_owned())
        );
        assert_eq!(plain.origin_of(&headers(&[("host", "a.example/b")])), None);
        assert_eq!(plain.origin_of(&HeaderMap::new()), None);
        let public = ConsoleOrigin::new(Some("https://nc.example/".parse().expect("url")));
        assert_eq!(
            public.origin_of(&headers(&[("host", "other.example")])),
            Some("https://nc.example".to_owned())
        );
    }
}
