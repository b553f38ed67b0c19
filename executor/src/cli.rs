//! Network-device drivers as data: per platform, how a session is driven (exec channel or an
//! interactive PTY shell), what to send after login, how enable mode works, which output means
//! a command failed, which pager prompts to answer, how to fetch the running configuration and
//! which of its lines change on every fetch. Plus the text handling of interactive output:
//! terminal control stripped, the echoed command and the trailing prompt removed, and the
//! device's prompt learned after login.

use netcron_common::domain::Platform;
use regex::{Regex, RegexSet};

/// How commands reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelMode {
    /// One `exec` request per command text (Unix and Windows OpenSSH).
    Exec,
    /// A PTY and an interactive shell: commands are typed at the device's prompt, one line at
    /// a time, in one session (network CLIs allow one exec per connection, or none).
    Shell,
}

/// Everything netcron knows about driving one platform.
#[derive(Debug)]
pub struct Driver {
    pub mode: ChannelMode,
    /// Sent after login, before any command; their output is discarded.
    pub setup: &'static [&'static str],
    /// Appended to the login name (MikroTik's `+ct`: no colours, no terminal detection).
    pub username_suffix: &'static str,
    /// The command that enters privileged mode, answered with the enable secret.
    pub enable_command: Option<&'static str>,
    /// Output lines starting with one of these (after leading blanks) mean the command failed.
    pub error_markers: &'static [&'static str],
    /// Pager prompts, answered with a space when `setup` did not turn paging off.
    pub pagers: &'static [&'static str],
    /// The command that prints the running configuration; `None`: the command text is needed.
    pub config_command: Option<&'static str>,
    /// Regexes of configuration lines that change without a configuration change.
    pub volatile: &'static [&'static str],
    /// Returns a pooled session from a configuration mode (or submenu) to its base prompt
    /// before the next run; `None`: the platform has no such command, and a session found
    /// anywhere but at its base prompt is closed instead.
    pub leave_mode: Option<&'static str>,
}

const CISCO_ERRORS: &[&str] = &[
    "% Invalid input",
    "% Incomplete command",
    "% Ambiguous command",
    "% Unknown command",
    "% Invalid command",
    "% Bad IP address",
];
const JUNOS_ERRORS: &[&str] = &["syntax error", "unknown command", "error:"];
const ROUTEROS_ERRORS: &[&str] = &[
    "bad command name",
    "expected end of command",
    "syntax error",
    "failure:",
    "input does not match any value",
];
const GENERIC_ERRORS: &[&str] = &[
    "% Invalid input",
    "% Incomplete command",
    "% Ambiguous command",
    "% Unknown command",
    "% Invalid command",
    "syntax error",
    "unknown command",
    "bad command name",
    "expected end of command",
];
const PAGERS: &[&str] = &["--More--", "---(more", "-- More --", "<--- More --->"];
const CISCO_SETUP: &[&str] = &["terminal length 0", "terminal width 511"];
const IOS_VOLATILE: &[&str] = &[
    r"^! Last configuration change at ",
    r"^! NVRAM config last updated at ",
    r"^! No configuration change since last restart",
    r"^ntp clock-period ",
    r"^Current configuration ?: ?\d+ bytes",
    r"^Building configuration",
];
const NXOS_VOLATILE: &[&str] = &[
    r"^!Time: ",
    r"^!Running configuration last done at: ",
    r"^!Command: show running-config",
    r"^ntp clock-period ",
];
const EOS_VOLATILE: &[&str] = &[
    r"^! Command: show running-config",
    r"^! Time: ",
    r"^! Startup-config last modified at ",
    r"^ntp clock-period ",
];
const JUNOS_VOLATILE: &[&str] = &[r"^## Last commit: ", r"^## Last changed: "];
const ROUTEROS_VOLATILE: &[&str] = &[r"^# \S+ \S+ by RouterOS", r"^# software id = "];
const GENERIC_VOLATILE: &[&str] = &[
    r"^! Last configuration change at ",
    r"^! NVRAM config last updated at ",
    r"^ntp clock-period ",
    r"^Current configuration ?: ?\d+ bytes",
    r"^Building configuration",
    r"^!Time: ",
    r"^## Last commit: ",
    r"^# \S+ \S+ by RouterOS",
];

static LINUX: Driver = Driver {
    mode: ChannelMode::Exec,
    setup: &[],
    username_suffix: "",
    enable_command: None,
    error_markers: &[],
    pagers: &[],
    config_command: None,
    volatile: &[],
    leave_mode: None,
};
static IOS: Driver = Driver {
    mode: ChannelMode::Shell,
    setup: CISCO_SETUP,
    username_suffix: "",
    enable_command: Some("enable"),
    error_markers: CISCO_ERRORS,
    pagers: PAGERS,
    config_command: Some("show running-config"),
    volatile: IOS_VOLATILE,
    leave_mode: Some("end"),
};
static NXOS: Driver = Driver {
    volatile: NXOS_VOLATILE,
    ..IOS
};
static EOS: Driver = Driver {
    volatile: EOS_VOLATILE,
    ..IOS
};
static JUNOS: Driver = Driver {
    mode: ChannelMode::Shell,
    setup: &["set cli screen-length 0", "set cli screen-width 0"],
    username_suffix: "",
    enable_command: None,
    error_markers: JUNOS_ERRORS,
    pagers: PAGERS,
    config_command: Some("show configuration | display set"),
    volatile: JUNOS_VOLATILE,
    leave_mode: Some("exit configuration-mode"),
};
static ROUTEROS: Driver = Driver {
    mode: ChannelMode::Shell,
    setup: &[],
    username_suffix: "+ct",
    enable_command: None,
    error_markers: ROUTEROS_ERRORS,
    pagers: PAGERS,
    config_command: Some("/export"),
    volatile: ROUTEROS_VOLATILE,
    leave_mode: Some("/"),
};
static GENERIC: Driver = Driver {
    mode: ChannelMode::Shell,
    setup: &[],
    username_suffix: "",
    enable_command: None,
    error_markers: GENERIC_ERRORS,
    pagers: PAGERS,
    config_command: None,
    volatile: GENERIC_VOLATILE,
    leave_mode: None,
};

/// The driver of `platform`.
pub fn driver(platform: Platform) -> &'static Driver {
    match platform {
        Platform::Linux | Platform::Windows => &LINUX,
        Platform::CiscoIos => &IOS,
        Platform::CiscoNxos => &NXOS,
        Platform::AristaEos => &EOS,
        Platform::JuniperJunos => &JUNOS,
        Platform::MikrotikRouteros => &ROUTEROS,
        Platform::Generic => &GENERIC,
    }
}

impl Driver {
    /// The login name for `username` (MikroTik's suffix, unless the user already gave one).
    pub fn login_name(&self, username: &str) -> String {
        if self.username_suffix.is_empty() || username.contains('+') {
            username.to_owned()
        } else {
            format!("{username}{}", self.username_suffix)
        }
    }

    /// The first output line that marks a failure, if any. Markers are compared as bytes, so a
    /// multi-byte character where a marker would end cannot split anything.
    pub fn error_line<'a>(&self, output: &'a str) -> Option<&'a str> {
        output.lines().map(str::trim).find(|line| {
            self.error_markers
                .iter()
                .any(|m| starts_with_ignore_ascii_case(line, m))
        })
    }

    /// Whether `line` (the last, unterminated line of output) is a pager prompt.
    pub fn is_pager(&self, line: &str) -> bool {
        let line = line.trim();
        !line.is_empty() && self.pagers.iter().any(|p| line.contains(p))
    }

    /// The running configuration as stored: CRLF and trailing blanks gone, volatile lines
    /// removed, no leading or trailing empty lines, one final newline.
    pub fn normalize_config(&self, text: &str) -> String {
        let volatile = RegexSet::new(self.volatile).unwrap_or_else(|_| RegexSet::empty());
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !volatile.is_match(l))
            .collect();
        let start = lines
            .iter()
            .position(|l| !l.is_empty())
            .unwrap_or(lines.len());
        let end = lines
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(start, |i| i + 1);
        let mut out = lines.get(start..end).unwrap_or_default().join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }
}

/// Interactive output as plain text: CRLF as LF, a lone CR (the cursor back to the line's
/// start) and backspaces applied to the current line, then ANSI escape sequences and other
/// control characters stripped. Invalid UTF-8 becomes U+FFFD.
pub fn clean(raw: &[u8]) -> String {
    // Cursor movements first: the ANSI stripper drops CR and backspace without applying them.
    let moved = apply_cursor_moves(&String::from_utf8_lossy(raw));
    let stripped = strip_ansi_escapes::strip(moved.as_bytes());
    String::from_utf8_lossy(&stripped).into_owned()
}

/// The current line is its own buffer, so a carriage return clears it and a backspace pops a
/// whole character: no byte offset into the text is ever taken.
fn apply_cursor_moves(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut line = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                out.push_str(&line);
                out.push('\n');
                line.clear();
            }
            '\r' => {
                if chars.peek() != Some(&'\n') && chars.peek() != Some(&'\r') {
                    line.clear();
                }
            }
            '\u{8}' => {
                line.pop();
            }
            c => line.push(c),
        }
    }
    out.push_str(&line);
    out
}

/// Whether `text` begins with `prefix`, ASCII letters compared without case.
fn starts_with_ignore_ascii_case(text: &str, prefix: &str) -> bool {
    text.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The last, unterminated line of `text` (what a prompt or pager looks like).
pub fn last_line(text: &str) -> &str {
    text.rsplit('\n').next().unwrap_or_default()
}

/// Whether `line` could be a CLI prompt: non-empty and ending in `>`, `#`, `$` or `%`
/// (trailing blanks allowed).
pub fn looks_like_prompt(line: &str) -> bool {
    let t = line.trim_end();
    t.len() >= 2 && t.ends_with(['>', '#', '$', '%'])
}

/// A pattern for the prompt learned after login: the same name, in any mode — `>` or `#`, with
/// or without a `(config…)` part, so enable and configuration modes are recognised too.
pub fn prompt_pattern(learned: &str) -> Option<Regex> {
    let t = learned.trim();
    let base = t.strip_suffix(['>', '#', '$', '%'])?.trim_end();
    let base = match base.rsplit_once('(') {
        Some((name, _)) if base.ends_with(')') => name,
        _ => base,
    };
    if base.is_empty() {
        return None;
    }
    // A mode in parentheses (IOS `(config-if)`) or a menu path (RouterOS `/ip address`).
    Regex::new(&format!(
        r"^\s*{}(\([^)]*\))?(\s+/[^>#$%]*)?\s*[>#$%]\s*$",
        regex::escape(base)
    ))
    .ok()
}

/// One command's output as sent back: the echoed command (first line) and the trailing prompt
/// (last line) removed.
pub fn strip_echo_and_prompt(text: &str, command: &str, prompt: &Regex) -> String {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if let Some(last) = lines.last()
        && (prompt.is_match(last) || last.trim().is_empty())
    {
        lines.pop();
    }
    let command = command.trim();
    let echoed = lines
        .first()
        .is_some_and(|first| !command.is_empty() && first.trim_end().ends_with(command));
    let kept = lines.get(usize::from(echoed)..).unwrap_or_default();
    let mut out = kept.join("\n");
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_learned_for_every_mode() {
        let ios = prompt_pattern("edge-sw1>").expect("pattern");
        for p in [
            "edge-sw1>",
            "edge-sw1#",
            "edge-sw1(config)#",
            "edge-sw1(config-if)# ",
        ] {
            assert!(ios.is_match(p), "{p}");
        }
        assert!(!ios.is_match("other-sw#"));
        assert!(!ios.is_match("edge-sw1 uptime is 3 weeks"));
        let junos = prompt_pattern("netcron@edge-mx1> ").expect("pattern");
        assert!(junos.is_match("netcron@edge-mx1# "));
        let mikrotik = prompt_pattern("[admin@MikroTik] > ").expect("pattern");
        assert!(mikrotik.is_match("[admin@MikroTik] >"));
        assert!(mikrotik.is_match("[admin@MikroTik] /ip address> "));
        assert!(prompt_pattern("#").is_none());
        assert!(looks_like_prompt("edge-sw1#"));
        assert!(looks_like_prompt("[admin@MikroTik] > "));
        assert!(!looks_like_prompt("Password:"));
    }

    #[test]
    fn terminal_control_is_removed() {
        let raw = b"\x1b[1;32mok\x1b[0m\r\nline\x07 two\r\n --More-- \x08\x08\x08\x08\x08\x08\x08\x08\x08\x08          \x08\x08\x08\x08\x08\x08\x08\x08\x08\x08next\r\nprogress 10%\rprogress 100%\r\n";
        assert_eq!(clean(raw), "ok\nline two\nnext\nprogress 100%\n");
    }

    #[test]
    fn echo_and_trailing_prompt_are_stripped() {
        let prompt = prompt_pattern("edge-sw1#").expect("pattern");
        let text = "show clock\n10:00:01.123 UTC Sun Nov 22 2026\nedge-sw1#";
        assert_eq!(
            strip_echo_and_prompt(text, "show clock", &prompt),
            "10:00:01.123 UTC Sun Nov 22 2026\n"
        );
        assert_eq!(
            strip_echo_and_prompt("show x\nedge-sw1#", "show x", &prompt),
            ""
        );
    }

    #[test]
    fn volatile_lines_are_normalized_away() {
        let raw = "Building configuration...\r\n\r\nCurrent configuration : 1234 bytes\r\n!\r\n\
                   ! Last configuration change at 10:00:01 UTC Sun Nov 22 2026 by netops\r\n\
                   ! NVRAM config last updated at 09:00:00 UTC Sun Nov 22 2026\r\n\
                   hostname edge-sw1   \r\nntp clock-period 17179865\r\nend\r\n\r\n";
        assert_eq!(
            driver(Platform::CiscoIos).normalize_config(raw),
            "!\nhostname edge-sw1\nend\n"
        );
        let junos =
            "## Last commit: 2026-11-22 10:00:01 UTC by netcron\nset system host-name edge-mx1\n";
        assert_eq!(
            driver(Platform::JuniperJunos).normalize_config(junos),
            "set system host-name edge-mx1\n"
        );
        let ros = "# 2026-11-22 10:00:01 by RouterOS 7.16\n# software id = AB12-CD34\n/system identity\nset name=edge-ros1\n";
        assert_eq!(
            driver(Platform::MikrotikRouteros).normalize_config(ros),
            "/system identity\nset name=edge-ros1\n"
        );
        for platform in Platform::ALL {
            let d = driver(*platform);
            assert!(RegexSet::new(d.volatile).is_ok(), "{platform}");
        }
    }

    #[test]
    fn a_multi_byte_character_where_a_marker_ends_is_neither_a_panic_nor_an_error() {
        // `% Invalid input` is 15 bytes; the 15th byte of this line is inside `ñ`.
        let config = "interface GigabitEthernet0/1\n description Señal de prueba\n!\n";
        for platform in Platform::ALL {
            assert_eq!(driver(*platform).error_line(config), None, "{platform}");
        }
        let ios = driver(Platform::CiscoIos);
        assert_eq!(ios.error_line("% Invalid inpuñ"), None);
        assert_eq!(
            ios.error_line("% INVALID INPUT: Señal"),
            Some("% INVALID INPUT: Señal")
        );
    }

    #[test]
    fn errors_and_pagers_are_recognised() {
        let ios = driver(Platform::CiscoIos);
        let out = "        ^\n% Invalid input detected at '^' marker.\n";
        assert_eq!(
            ios.error_line(out),
            Some("% Invalid input detected at '^' marker.")
        );
        assert_eq!(ios.error_line("Cisco IOS Software, Version 15.2\n"), None);
        assert!(ios.is_pager(" --More-- "));
        assert!(driver(Platform::JuniperJunos).is_pager("---(more)---"));
        assert!(!ios.is_pager("edge-sw1#"));
        assert_eq!(
            driver(Platform::MikrotikRouteros).login_name("admin"),
            "admin+ct"
        );
        assert_eq!(
            driver(Platform::MikrotikRouteros).login_name("admin+cte"),
            "admin+cte"
        );
        assert_eq!(driver(Platform::CiscoIos).login_name("admin"), "admin");
    }
}
