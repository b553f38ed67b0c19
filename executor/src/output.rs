//! Captured command output: capped bytes, turned into storable text.

/// One output stream, kept up to `cap` bytes. Bytes past the cap are read (so the command is
/// never blocked by a full SSH window) but dropped, and `truncated` is set.
#[derive(Debug)]
pub struct Capture {
    bytes: Vec<u8>,
    cap: usize,
    pub truncated: bool,
}

impl Capture {
    pub fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
            truncated: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.bytes.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }

    #[cfg(test)]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The output as text:
    /// - each invalid UTF-8 sequence becomes U+FFFD (`String::from_utf8_lossy`), except a
    ///   multi-byte character cut in half by the cap, which is dropped;
    /// - NUL becomes U+FFFD too, because Postgres text cannot hold it;
    /// - every occurrence of a secret (at least 4 bytes long) becomes `********`, in case the
    ///   device echoes the password back.
    pub fn to_text(&self, secrets: &[&str]) -> String {
        let mut bytes = self.bytes.as_slice();
        if self.truncated
            && let Err(e) = std::str::from_utf8(bytes)
            && e.error_len().is_none()
        {
            bytes = &bytes[..e.valid_up_to()];
        }
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        if text.contains('\0') {
            text = text.replace('\0', "\u{FFFD}");
        }
        scrub(text, secrets)
    }
}

/// Every occurrence of a secret (at least 4 bytes long) becomes `********`.
pub fn scrub(mut text: String, secrets: &[&str]) -> String {
    for secret in secrets {
        if secret.len() >= 4 && text.contains(secret) {
            text = text.replace(secret, "********");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_flags_truncation() {
        let mut c = Capture::new(5);
        c.push(b"abc");
        assert!(!c.truncated);
        c.push(b"defgh");
        assert!(c.truncated);
        assert_eq!(c.as_bytes(), b"abcde");
    }

    #[test]
    fn invalid_utf8_and_nul_become_replacement_characters() {
        let mut c = Capture::new(100);
        c.push(b"ok\xff\0end");
        assert_eq!(c.to_text(&[]), "ok\u{FFFD}\u{FFFD}end");
    }

    #[test]
    fn a_character_cut_by_the_cap_is_dropped() {
        let mut c = Capture::new(3);
        c.push("abé!".as_bytes()); // a b 0xC3 | 0xA9 !
        assert!(c.truncated);
        assert_eq!(c.to_text(&[]), "ab");
    }

    #[test]
    fn echoed_secrets_are_scrubbed() {
        let mut c = Capture::new(100);
        c.push(b"Password: hunter22\nok");
        assert_eq!(c.to_text(&["hunter22"]), "Password: ********\nok");
    }
}
