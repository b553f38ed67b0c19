//! Where the console sends a browser after sign-in (`next`): a page of the console's own, never
//! another site.

use url::Url;

/// A path (and query) of the console, parsed from an untrusted `next`. Its text is a
/// path-absolute URL in ASCII with nothing a browser could read as another origin, so it is
/// always a valid `Location` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnPath(String);

/// How many times `next` is percent-decoded when looking for hidden characters: enough for
/// double and triple encoding, bounded so that no input makes the check loop.
const DECODE_ROUNDS: usize = 4;

impl ReturnPath {
    /// The console's home page, where a refused `next` leads.
    pub fn home() -> Self {
        Self("/".to_owned())
    }

    /// `next` when it names a page of the console, else the home page.
    pub fn parse_or_home(next: Option<&str>) -> Self {
        next.and_then(Self::parse).unwrap_or_else(Self::home)
    }

    /// Parses `next`. Refused: control characters and whitespace anywhere, raw or
    /// percent-decoded (browsers drop tabs and newlines from URLs, so `/<TAB>/evil.example`
    /// becomes `//evil.example`); backslashes (browsers read `\` as `/`); anything but a
    /// path-absolute reference (schemes such as `https:` or `javascript:`, and `//host`,
    /// scheme-relative); and any path outside the console's (`/` and `/console/…`), after
    /// resolving `.` and `..`.
    pub fn parse(next: &str) -> Option<Self> {
        let unsafe_text = |text: &str| {
            text.chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
                || !text.starts_with('/')
                || text.starts_with("//")
        };
        let mut text = next.to_owned();
        let mut rounds = 0;
        loop {
            if unsafe_text(&text) {
                return None;
            }
            let decoded = percent_decode(&text);
            if decoded == text {
                break;
            }
            rounds += 1;
            if rounds > DECODE_ROUNDS {
                return None;
            }
            text = decoded;
        }
        // Resolved against a fixed origin of our own: whatever the browser's origin is, a
        // reference that stays on this one stays on that one, because only the path and query
        // are kept, and the browser resolves them against the page it is on.
        let base = Url::parse("http://console.invalid/").ok()?;
        let resolved = base.join(next).ok()?;
        if resolved.origin() != base.origin() {
            return None;
        }
        let path = resolved.path();
        let console = path == "/" || path == "/console" || path.starts_with("/console/");
        if !console || path.starts_with("//") || path == "/console/sign-in" {
            return None;
        }
        let target = match resolved.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        // `Url` serializes in ASCII and escapes what a path or query may not hold; this keeps
        // the promise of the type should that ever change.
        target
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'\\')
            .then_some(Self(target))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `text` with every `%XX` escape decoded, as bytes and then lossily as UTF-8 (a stray byte
/// becomes U+FFFD, which is neither a control nor whitespace, and the path is refused later
/// only if it is otherwise unsafe).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits make at most 0xFF.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(u8::MAX));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_paths_are_kept_and_everything_else_is_home() {
        for kept in [
            "/",
            "/console/devices",
            "/console/devices?tag=lab&cursor=x",
            "/console/runs/1?stdout=65536",
        ] {
            assert_eq!(ReturnPath::parse(kept).map(|p| p.0), Some(kept.to_owned()));
        }
        assert_eq!(
            ReturnPath::parse("/console/./devices/../runs").map(|p| p.0),
            Some("/console/runs".to_owned())
        );
        for refused in [
            "",
            "/\t/evil.example/",
            "/%09/evil.example/",
            "/%2509/evil.example/",
            "/%252509/evil.example/",
            "/\r\n/evil",
            "/%0D%0Aset-cookie:x",
            "/ /evil",
            "/\u{a0}/evil",
            "/%C2%A0/evil",
            "//evil.example",
            "/%2F%2Fevil.example",
            "/%2f/evil.example",
            "/\\evil.example",
            "/%5Cevil.example",
            "https://evil.example/console",
            "javascript:alert(1)",
            "evil.example/console",
            "/console/../../evil",
            "/console/%2e%2e/%2e%2e//evil",
            "/devices",
            "/console/sign-in?next=/",
        ] {
            assert_eq!(ReturnPath::parse(refused), None, "{refused:?}");
        }
        assert_eq!(ReturnPath::parse_or_home(Some("//evil")).as_str(), "/");
        assert_eq!(ReturnPath::parse_or_home(None).as_str(), "/");
    }
}
