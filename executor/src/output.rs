//! Captured command output: capped bytes, turned into storable text, and the run's secrets
//! scrubbed from everything a device sends back — before anything is cut, so a secret that
//! straddles a cap never leaves its beginning behind.

/// What a secret becomes.
pub const MASK: &str = "********";

/// Secrets shorter than this are not scrubbed: masking every `ab` of the output would destroy
/// it and protect nothing.
const MIN_SECRET_LEN: usize = 4;

/// The run's secrets (the credential's password or passphrase, the enable secret, the jump
/// host's), to be replaced by [`MASK`] in every text that came from a device. Its `Debug`
/// names no secret.
#[derive(Default)]
pub struct Scrubber<'a> {
    /// Longest first, so a secret that begins another one never leaves the rest behind.
    secrets: Vec<&'a str>,
    /// Whether a byte can begin a secret, so most of the output is skipped at once.
    starts: Vec<bool>,
}

impl<'a> Scrubber<'a> {
    pub fn new(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets: Vec<&'a str> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let mut starts = vec![false; 256];
        for secret in &secrets {
            if let Some(flag) = secret
                .as_bytes()
                .first()
                .and_then(|b| starts.get_mut(usize::from(*b)))
            {
                *flag = true;
            }
        }
        Self { secrets, starts }
    }

    /// How many bytes past a cap must be kept so that a secret beginning before the cap can be
    /// recognised whole.
    pub fn lookahead(&self) -> usize {
        self.secrets.first().map_or(0, |s| s.len())
    }

    /// `text` with every occurrence of a secret replaced by [`MASK`].
    pub fn scrub(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_owned();
        }
        let masked = self.mask_until(text.as_bytes(), usize::MAX);
        // Whole secrets were replaced by ASCII in valid UTF-8, which stays valid.
        String::from_utf8(masked).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// `text` scrubbed, then without a trailing piece that begins a secret: for text that was
    /// cut where the rest of a secret may have followed.
    pub fn scrub_cut(&self, text: &str) -> String {
        let mut out = self.scrub(text);
        let keep = out.len() - self.partial_tail(out.as_bytes());
        // `partial_tail` ends on a character boundary (a secret's prefix at the end of valid
        // UTF-8 starts on one); `floor` only guards against a mistake there.
        out.truncate(floor_char_boundary(&out, keep));
        out
    }

    /// `bytes` up to `cut`, each secret beginning before `cut` replaced by [`MASK`] whole (even
    /// when it ends past `cut`).
    fn mask_until(&self, bytes: &[u8], cut: usize) -> Vec<u8> {
        self.mask_prefix(bytes, cut).0
    }

    /// Scrubs the start of a growing output for showing it live: answers the text safe to show
    /// now and how many bytes of `bytes` it covers. Unless `last`, bytes that may begin a
    /// secret (whose rest has not arrived) or a character are held back for the next call;
    /// a secret is masked whole, so no part of it is ever shown.
    pub fn scrub_prefix(&self, bytes: &[u8], last: bool) -> (String, usize) {
        let hold = if last {
            0
        } else {
            self.lookahead().saturating_sub(1)
        };
        let cut = bytes.len().saturating_sub(hold);
        // A secret beginning before `cut` ends within `bytes` (it is at most `lookahead` long),
        // so masking up to `cut` sees it whole; `consumed` is where masking stopped.
        let (mut masked, mut consumed) = self.mask_prefix(bytes, cut);
        if !last
            && let Err(e) = std::str::from_utf8(&masked)
            && e.error_len().is_none()
        {
            // An incomplete character at the end waits for its other bytes. Masks are ASCII,
            // so these trailing bytes are the output's own.
            let incomplete = masked.len() - e.valid_up_to();
            masked.truncate(e.valid_up_to());
            consumed -= incomplete;
        }
        let text = String::from_utf8_lossy(&masked).replace('\0', "\u{FFFD}");
        (text, consumed)
    }

    /// [`Self::mask_until`], also answering how far into `bytes` masking went (past `cut` when
    /// a secret straddles it).
    fn mask_prefix(&self, bytes: &[u8], cut: usize) -> (Vec<u8>, usize) {
        let end = bytes.len().min(cut);
        let mut out = Vec::with_capacity(end);
        let mut i = 0;
        while i < end {
            let rest = bytes.get(i..).unwrap_or_default();
            if let Some(secret) = self.secrets.iter().find(|s| rest.starts_with(s.as_bytes())) {
                out.extend_from_slice(MASK.as_bytes());
                i += secret.len();
                continue;
            }
            // Copy up to the next byte that could begin a secret.
            let skip = rest
                .iter()
                .take(end - i)
                .skip(1)
                .position(|b| self.starts.get(usize::from(*b)).copied().unwrap_or(false))
                .map_or(end - i, |p| p + 1);
            out.extend_from_slice(rest.get(..skip).unwrap_or_default());
            i += skip;
        }
        (out, i)
    }

    /// How many bytes at the start of `bytes`, which follow a gap (bytes never seen), to drop
    /// so that nothing shown is part of a secret the gap cut: the longest beginning that is a
    /// proper end of a secret (what is left of a secret cut by the gap is exactly such an
    /// end), extended over every whole secret that begins inside it (dropping part of one
    /// would cut it in turn). `None` until `bytes` is long enough to tell, unless `last`.
    pub fn gap_head(&self, bytes: &[u8], last: bool) -> Option<usize> {
        let hold = self.lookahead().saturating_sub(1);
        if !last && bytes.len() < hold {
            return None;
        }
        let mut n = self
            .secrets
            .iter()
            .filter_map(|s| {
                let s = s.as_bytes();
                (1..s.len())
                    .find(|&k| s.get(k..).is_some_and(|end| bytes.starts_with(end)))
                    .map(|k| s.len() - k)
            })
            .max()
            .unwrap_or(0);
        loop {
            let whole = (0..n)
                .filter_map(|i| {
                    let rest = bytes.get(i..)?;
                    let secret = self
                        .secrets
                        .iter()
                        .find(|s| rest.starts_with(s.as_bytes()))?;
                    Some(i + secret.len())
                })
                .max();
            match whole {
                Some(end) if end > n => n = end,
                _ => break,
            }
        }
        // A secret beginning before `n` must have been seen whole to be ruled out.
        if !last && bytes.len() < n + hold {
            return None;
        }
        Some(n.min(bytes.len()))
    }

    /// The length of the longest end of `bytes` that is a proper beginning of a secret.
    fn partial_tail(&self, bytes: &[u8]) -> usize {
        self.secrets
            .iter()
            .filter_map(|s| {
                let s = s.as_bytes();
                (1..s.len())
                    .rev()
                    .find(|&n| s.get(..n).is_some_and(|prefix| bytes.ends_with(prefix)))
            })
            .max()
            .unwrap_or(0)
    }
}

impl std::fmt::Debug for Scrubber<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} secrets)", self.secrets.len())
    }
}

/// The largest character boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// `text` cut to at most `cap` bytes, on a character boundary.
#[cfg(test)]
pub fn cap_text(text: &str, cap: usize) -> &str {
    text.get(..floor_char_boundary(text, cap))
        .unwrap_or_default()
}

/// One output stream, kept up to `cap` bytes. Bytes past the cap are read (so the command is
/// never blocked by a full SSH window) but dropped, and `truncated` is set — except for
/// `lookahead` bytes past the cap, kept so that a secret straddling the cap is recognised and
/// masked whole before the text is cut.
pub struct Capture {
    bytes: Vec<u8>,
    cap: usize,
    lookahead: usize,
    pub truncated: bool,
    /// Who else sees kept bytes as they arrive (live output), if anyone follows.
    observer: Option<Observer>,
}

/// Called with each piece of output a [`Capture`] keeps, on the SSH thread: it must not block.
pub type Observer = Box<dyn Fn(&[u8]) + Send>;

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("bytes", &self.bytes.len())
            .field("cap", &self.cap)
            .field("truncated", &self.truncated)
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

impl Capture {
    pub fn new(cap: usize, lookahead: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
            lookahead,
            truncated: false,
            observer: None,
        }
    }

    /// Shows what is kept to `observer` as well, as it arrives.
    pub fn observe(&mut self, observer: Option<Observer>) {
        self.observer = observer;
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.bytes.len().saturating_add(data.len()) > self.cap {
            self.truncated = true;
        }
        let room = self
            .cap
            .saturating_add(self.lookahead)
            .saturating_sub(self.bytes.len());
        let kept = data.get(..data.len().min(room)).unwrap_or_default();
        self.bytes.extend_from_slice(kept);
        if let Some(observer) = &self.observer {
            observer(kept);
        }
    }

    #[cfg(test)]
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes
            .get(..self.cap.min(self.bytes.len()))
            .unwrap_or_default()
    }

    /// The output as text:
    /// - every occurrence of a secret becomes [`MASK`], in case the device echoes the password
    ///   back — a secret that begins before the cap too, whole, before the text is cut there;
    /// - each invalid UTF-8 sequence becomes U+FFFD (`String::from_utf8_lossy`), except a
    ///   multi-byte character cut in half by the cap, which is dropped;
    /// - NUL becomes U+FFFD too, because Postgres text cannot hold it.
    pub fn to_text(&self, scrubber: &Scrubber<'_>) -> String {
        let masked = scrubber.mask_until(&self.bytes, self.cap);
        let mut bytes = masked.as_slice();
        if self.truncated
            && let Err(e) = std::str::from_utf8(bytes)
            && e.error_len().is_none()
        {
            bytes = bytes.get(..e.valid_up_to()).unwrap_or_default();
        }
        let text = String::from_utf8_lossy(bytes);
        if text.contains('\0') {
            text.replace('\0', "\u{FFFD}")
        } else {
            text.into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_flags_truncation() {
        let mut c = Capture::new(5, 0);
        c.push(b"abc");
        assert!(!c.truncated);
        c.push(b"defgh");
        assert!(c.truncated);
        assert_eq!(c.as_bytes(), b"abcde");
        assert_eq!(c.to_text(&Scrubber::default()), "abcde");
    }

    #[test]
    fn invalid_utf8_and_nul_become_replacement_characters() {
        let mut c = Capture::new(100, 0);
        c.push(b"ok\xff\0end");
        assert_eq!(c.to_text(&Scrubber::default()), "ok\u{FFFD}\u{FFFD}end");
    }

    #[test]
    fn a_character_cut_by_the_cap_is_dropped() {
        let mut c = Capture::new(3, 0);
        c.push("abé!".as_bytes()); // a b 0xC3 | 0xA9 !
        assert!(c.truncated);
        assert_eq!(c.to_text(&Scrubber::default()), "ab");
    }

    #[test]
    fn echoed_secrets_are_scrubbed() {
        let mut c = Capture::new(100, 8);
        c.push(b"Password: hunter22\nok");
        assert_eq!(
            c.to_text(&Scrubber::new(["hunter22"])),
            "Password: ********\nok"
        );
    }

    #[test]
    fn a_secret_straddling_the_cap_leaves_no_prefix() {
        let scrubber = Scrubber::new(["hunter22"]);
        for cap in 0..=20 {
            let mut c = Capture::new(cap, scrubber.lookahead());
            // Pushed in small pieces, as the SSH window delivers it.
            for piece in b"Password: hunter22 and more".chunks(3) {
                c.push(piece);
            }
            let text = c.to_text(&scrubber);
            for n in 2..="hunter22".len() {
                assert!(!text.contains(&"hunter22"[..n]), "cap {cap}: {text:?}");
            }
            assert!(text.len() <= cap + MASK.len(), "cap {cap}: {text:?}");
        }
    }

    #[test]
    fn the_longest_secret_wins_and_short_ones_are_kept() {
        let s = Scrubber::new(["pass", "password1", "pw"]);
        assert_eq!(s.scrub("password1 pass pw"), "******** ******** pw");
        assert_eq!(s.scrub("no secret here"), "no secret here");
        assert_eq!(
            Scrubber::new(["Señal-pw"]).scrub("x Señal-pw y"),
            "x ******** y"
        );
    }

    #[test]
    fn a_cut_text_loses_a_trailing_secret_prefix() {
        let s = Scrubber::new(["hunter22"]);
        assert_eq!(s.scrub_cut("echo hunter22 hunt"), "echo ******** ");
        assert_eq!(s.scrub_cut("echo h"), "echo ");
        assert_eq!(s.scrub_cut("echo x"), "echo x");
        assert_eq!(Scrubber::new(["ñandú-secret"]).scrub_cut("a ñan"), "a ");
    }

    #[test]
    fn cap_text_cuts_on_a_character_boundary() {
        assert_eq!(cap_text("abé", 3), "ab");
        assert_eq!(cap_text("abé", 4), "abé");
        assert_eq!(cap_text("abé", 100), "abé");
        assert_eq!(cap_text("é", 0), "");
    }

    #[test]
    fn live_output_never_shows_part_of_a_secret_whatever_the_chunking() {
        let scrubber = Scrubber::new(["hunter22", "pässwörd"]);
        let output = "login hunter22 ok\npässwörd é hunter2 hunter22".as_bytes();
        for size in 1..output.len() {
            let mut pending: Vec<u8> = Vec::new();
            let mut shown = String::new();
            for piece in output.chunks(size) {
                pending.extend_from_slice(piece);
                let (text, consumed) = scrubber.scrub_prefix(&pending, false);
                pending.drain(..consumed);
                // The pieces shown, put together, must be the scrubbed whole: a piece with
                // part of a secret in it would make them differ.
                shown.push_str(&text);
            }
            let (text, consumed) = scrubber.scrub_prefix(&pending, true);
            assert_eq!(consumed, pending.len());
            shown.push_str(&text);
            assert_eq!(
                shown,
                scrubber.scrub(std::str::from_utf8(output).expect("the fixture is UTF-8")),
                "chunks of {size} bytes"
            );
        }
    }
}
