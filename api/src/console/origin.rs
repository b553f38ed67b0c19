//! Which origin the console is served from, for the same-origin check of state-changing forms.

use std::fmt;
use std::str::FromStr;

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
