//! Property tests of every function that reads text a device sent: nothing a device sends may
//! panic the executor (issue 13), and the basic promises of each function hold for any input —
//! arbitrary Unicode with multi-byte characters, control characters, escape sequences, NUL and
//! CR, mixed with the markers, prompts and tokens the functions look for.
//!
//! Each property runs a bounded number of cases, so the set stays a few seconds in a debug
//! build. A failing case is saved under `executor/proptest-regressions/` (commit it).

use chrono::{DateTime, TimeZone as _, Utc};
use netcron_common::domain::Platform;
use proptest::prelude::*;
use serde_json::Value;

use crate::cli::{
    clean, driver, last_line, looks_like_prompt, prompt_pattern, strip_echo_and_prompt,
};
use crate::inventory::{parse_powershell, parse_reg_query, split_value};
use crate::output::{Capture, MASK, Scrubber, cap_text};

/// Pieces that make device text interesting: terminal control, awkward characters, and what
/// the parsers look for.
const SNIPPETS: &[&str] = &[
    "\u{1b}[1;32m",
    "\u{1b}[0m",
    "\u{1b}[K",
    "\u{1b}[24;1H",
    "\u{1b}]0;title\u{7}",
    "\u{1b}",
    "\u{9b}",
    "\r",
    "\r\n",
    "\n",
    "\0",
    "\u{8}",
    "\t",
    "\u{7f}",
    "é",
    "ñ",
    "€",
    "𝄞",
    "\u{feff}",
    "\u{fffd}",
    "\u{3000}",
    " description Señal de prueba",
    "--More--",
    " --More-- ",
    "---(more)---",
    "<--- More --->",
    "edge-sw1#",
    "edge-sw1>",
    "edge-sw1(config-if)#",
    "[admin@MikroTik] > ",
    "netcron@edge-mx1> ",
    "! Last configuration change at ",
    "Current configuration : 12 bytes",
    "## Last commit: ",
    "# 2026-11-22 10:00:01 by RouterOS 7.16",
    "    REG_SZ    ",
    "    REG_DWORD    0x",
    "    REG_",
    "    ",
    "HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion",
    "CurrentBuild",
    "ProductName",
    "(Default)",
    "{\"os\":",
    "[",
    "]",
    "\"",
    "(",
    ")",
];

/// Every driver's error markers.
fn all_markers() -> Vec<&'static str> {
    let mut markers: Vec<&'static str> = Platform::ALL
        .iter()
        .flat_map(|p| driver(*p).error_markers.iter().copied())
        .collect();
    markers.sort_unstable();
    markers.dedup();
    markers
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<char>().prop_map(String::from),
        3 => "[a-zA-Z0-9 #>$%()/:.,_-]{1,8}",
        3 => prop::sample::select(SNIPPETS).prop_map(str::to_owned),
        1 => prop::sample::select(all_markers()).prop_map(str::to_owned),
    ]
}

/// Text as a device might send it, and worse.
fn device_text() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..40).prop_map(|pieces| pieces.concat())
}

/// Raw output: device text, or any bytes at all (invalid UTF-8 included).
fn device_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        device_text().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// `reg query` answers: the real shape with arbitrary names and data, or anything.
fn reg_text() -> impl Strategy<Value = String> {
    const NAMES: &[&str] = &[
        "CurrentBuild",
        "CurrentBuildNumber",
        "ProductName",
        "UBR",
        "InstallDate",
        "(Default)",
    ];
    const KINDS: &[&str] = &["REG_SZ", "REG_DWORD", "REG_QWORD", "REG_", "REG_X"];
    let name = prop_oneof![
        prop::sample::select(NAMES).prop_map(str::to_owned),
        device_text(),
    ];
    let kind = prop::sample::select(KINDS);
    let value = (name, kind, device_text())
        .prop_map(|(name, kind, data)| format!("    {name}    {kind}    {data}\r\n"));
    prop_oneof![
        prop::collection::vec(value, 0..8).prop_map(|values| {
            format!(
                "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\r\n{}",
                values.concat()
            )
        }),
        device_text(),
    ]
}

/// The PowerShell script's keys, so that generated documents reach every field.
const KEYS: &[&str] = &[
    "os",
    "system",
    "disks",
    "network_adapters",
    "hotfixes",
    "software",
    "errors",
    "ProductName",
    "DisplayVersion",
    "ReleaseId",
    "CurrentBuild",
    "UBR",
    "EditionID",
    "InstallDate",
    "Architecture",
    "LastBoot",
    "Hostname",
    "Cores",
    "MemoryBytes",
    "DeviceID",
    "Size",
    "IPAddress",
    "HotFixID",
    "InstalledOn",
    "DisplayName",
    "DisplayVersion",
    "Arch",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        device_text().prop_map(Value::String),
        Just(Value::String("2026-11-22T10:00:01Z".into())),
        Just(Value::String("20261122".into())),
    ];
    leaf.prop_recursive(3, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|fields| {
                Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
        .single()
        .expect("time")
}

/// Characters that never occur in [`secret`]s, so any of a secret's characters in scrubbed
/// output can only be a piece of the secret.
const OTHER: &str = "[A-Z \n\r\u{1b};:%#ü]{0,40}";

const PROMPT_ENDS: &[char] = &['>', '#', '$', '%'];
const VALUE_KINDS: &[&str] = &["REG_SZ", "REG_DWORD", "REG_EXPAND_SZ", "REG_MULTI_SZ"];

fn secret() -> impl Strategy<Value = String> {
    "[a-zñé€0-9]{4,12}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn error_markers_and_pagers_are_found_in_any_text_of_every_driver(text in device_text()) {
        let last = last_line(&text);
        for platform in Platform::ALL {
            let d = driver(*platform);
            if let Some(line) = d.error_line(&text) {
                prop_assert!(text.contains(line));
                let lower = line.to_ascii_lowercase();
                prop_assert!(
                    d.error_markers.iter().any(|m| lower.starts_with(&m.to_ascii_lowercase())),
                    "{platform}: {line:?}"
                );
            }
            if d.is_pager(last) {
                prop_assert!(d.pagers.iter().any(|p| last.contains(p)));
            }
        }
    }

    #[test]
    fn a_marker_cut_by_a_multi_byte_character_is_neither_a_panic_nor_a_match(
        marker in prop::sample::select(all_markers()),
        cut in 0usize..32,
        c in any::<char>().prop_filter("multi-byte, not blank", |c| {
            c.len_utf8() > 1 && !c.is_whitespace()
        }),
        tail in "[^\n]{0,12}",
    ) {
        let cut = cut.min(marker.len());
        let head = marker.get(..cut).unwrap_or(marker);
        let line = format!("{head}{c}{tail}");
        for platform in Platform::ALL {
            let d = driver(*platform);
            let found = d.error_line(&line);
            if cut == marker.len() && d.error_markers.contains(&marker) {
                prop_assert_eq!(found, Some(line.trim()));
            } else if let Some(found) = found {
                // Only a shorter marker of the same driver can match a cut one.
                prop_assert!(d.error_markers.iter().any(|m| m.len() <= cut), "{found:?}");
            }
        }
    }

    #[test]
    fn terminal_control_is_stripped_from_any_bytes(raw in device_bytes()) {
        let text = clean(&raw);
        prop_assert!(
            !text.chars().any(|c| (c < ' ' && c != '\n') || ('\u{80}'..='\u{9f}').contains(&c)),
            "{text:?}"
        );
        prop_assert!(text.matches('\n').count() <= raw.iter().filter(|b| **b == b'\n').count());
    }

    #[test]
    fn any_text_may_be_offered_as_a_prompt(text in device_text()) {
        let last = last_line(&text);
        let _ = looks_like_prompt(last);
        if prompt_pattern(last).is_some() {
            prop_assert!(last.trim().ends_with(['>', '#', '$', '%']), "{last:?}");
        }
    }

    #[test]
    fn a_learned_prompt_is_recognised_in_every_mode(
        name in "[^()\n]{1,24}",
        suffix in prop::sample::select(PROMPT_ENDS),
    ) {
        let name = name.trim();
        prop_assume!(!name.is_empty());
        let pattern = prompt_pattern(&format!("{name}{suffix} "));
        prop_assert!(pattern.is_some(), "{name:?}");
        let pattern = pattern.expect("checked");
        for mode in [">", "#", "$ ", "%", "(config)#", "(config-if)# "] {
            let prompt = format!("{name}{mode}");
            prop_assert!(pattern.is_match(&prompt), "{prompt:?}");
        }
    }

    #[test]
    fn echo_and_prompt_removal_keeps_a_slice_of_the_text(
        text in device_text(),
        command in device_text(),
    ) {
        let prompt = prompt_pattern("edge-sw1#").expect("pattern");
        let out = strip_echo_and_prompt(&text, &command, &prompt);
        prop_assert!(out.is_empty() || out.ends_with('\n'), "{out:?}");
        let body = out.strip_suffix('\n').unwrap_or(&out);
        prop_assert!(text.contains(body), "{out:?}");
    }

    #[test]
    fn the_echo_and_the_prompt_are_removed(
        command in "[a-z][a-z0-9 |-]{0,20}[a-z0-9]",
        rest in "[^\n]{0,40}",
    ) {
        let prompt = prompt_pattern("edge-sw1#").expect("pattern");
        let text = format!("{command}\n{rest}\nedge-sw1#");
        let expected = if rest.is_empty() { String::new() } else { format!("{rest}\n") };
        prop_assert_eq!(strip_echo_and_prompt(&text, &command, &prompt), expected);
    }

    #[test]
    fn normalized_configurations_are_trimmed_and_stable(
        text in device_text(),
        platform in prop::sample::select(Platform::ALL),
    ) {
        let d = driver(platform);
        let once = d.normalize_config(&text);
        prop_assert!(
            once.is_empty()
                || (once.ends_with('\n') && !once.ends_with("\n\n") && !once.starts_with('\n')),
            "{once:?}"
        );
        prop_assert!(once.lines().all(|l| l == l.trim_end()), "{once:?}");
        prop_assert_eq!(d.normalize_config(&once), once);
    }

    #[test]
    fn reg_query_text_is_parsed_or_refused_without_a_panic(text in reg_text()) {
        match parse_reg_query(&text, at(), vec![]) {
            Ok(inventory) => {
                prop_assert!(inventory.os.build.is_some() || inventory.os.name.is_some());
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
        for line in text.lines() {
            if let Some((name, kind, data)) = split_value(line) {
                prop_assert!(kind.starts_with("REG_") && kind.len() > 4, "{kind:?}");
                prop_assert_eq!(name, name.trim_end());
                prop_assert_eq!(data, data.trim());
                prop_assert!(line.contains(kind));
            }
        }
    }

    #[test]
    fn a_reg_value_line_splits_around_its_type(
        name in "[A-Za-z(][a-z0-9 .()]{0,20}",
        kind in prop::sample::select(VALUE_KINDS),
        data in "[^\n]{0,30}",
    ) {
        let line = format!("{name}    {kind}    {data}");
        prop_assert_eq!(split_value(&line), Some((name.trim_end(), kind, data.trim())));
    }

    #[test]
    fn powershell_output_is_parsed_or_refused_without_a_panic(
        doc in json_value(),
        bom in any::<bool>(),
        text in device_text(),
    ) {
        let json = serde_json::to_string(&doc).expect("JSON");
        let json = if bom { format!("\u{feff}{json}\r\n") } else { json };
        let has_os = doc.as_object().is_some_and(|o| o.contains_key("os"));
        prop_assert_eq!(parse_powershell(&json, at()).is_ok(), has_os);
        let _ = parse_powershell(&text, at());
    }

    #[test]
    fn a_secret_never_survives_the_output_cap(
        secret in secret(),
        before in OTHER,
        after in OTHER,
        cap in 0usize..100,
        chunk in 1usize..16,
    ) {
        let scrubber = Scrubber::new([secret.as_str()]);
        let text = format!("{before}{secret}{after}");
        let mut capture = Capture::new(cap, scrubber.lookahead());
        for piece in text.as_bytes().chunks(chunk) {
            capture.push(piece);
        }
        let out = capture.to_text(&scrubber);
        prop_assert!(!out.chars().any(|c| secret.contains(c)), "{out:?}");
        prop_assert!(out.len() <= cap + MASK.len(), "{out:?}");
        if text.len() <= cap {
            prop_assert_eq!(out, format!("{before}{MASK}{after}"));
        }
    }

    #[test]
    fn a_cut_text_keeps_no_piece_of_a_secret(
        secret in secret(),
        before in OTHER,
        after in OTHER,
        cut in 0usize..120,
    ) {
        let scrubber = Scrubber::new([secret.as_str()]);
        let text = format!("{before}{secret}{after}");
        let out = scrubber.scrub_cut(cap_text(&text, cut));
        prop_assert!(!out.chars().any(|c| secret.contains(c)), "{out:?}");
    }

    #[test]
    fn every_occurrence_of_every_secret_is_scrubbed(
        first in "[^*]{4,16}",
        second in "[^*]{4,16}",
        pieces in prop::collection::vec(device_text(), 1..5),
    ) {
        let scrubber = Scrubber::new([first.as_str(), second.as_str()]);
        let text = pieces.join(first.as_str()) + &second;
        let out = scrubber.scrub(&text);
        prop_assert!(!out.contains(&first) && !out.contains(&second), "{out:?}");
    }

    #[test]
    fn live_output_across_gaps_never_shows_a_piece_of_a_secret(
        secret in secret(),
        before in OTHER,
        after in OTHER,
        chunk in 1usize..12,
        dropped in prop::collection::vec(any::<bool>(), 1..40),
    ) {
        let scrubber = Scrubber::new([secret.as_str()]);
        let text = format!("{before}{secret}{after}");
        // The tap drops the chunks marked in `dropped` (cycled), counting their bytes into
        // the gap it reports with the next chunk it sends.
        let mut pieces: Vec<(u64, &[u8])> = Vec::new();
        let mut gap = 0u64;
        for (k, piece) in text.as_bytes().chunks(chunk).enumerate() {
            if dropped[k % dropped.len()] {
                gap += piece.len() as u64;
            } else {
                pieces.push((std::mem::take(&mut gap), piece));
            }
        }
        if gap > 0 {
            pieces.push((gap, &[]));
        }
        let shown = crate::live::published(&scrubber, &pieces);
        let out = crate::live::without_markers(&shown);
        prop_assert!(!out.chars().any(|c| secret.contains(c)), "{shown:?}");
        if !dropped.iter().any(|d| *d) {
            prop_assert_eq!(shown, format!("{before}{MASK}{after}"));
        }
    }

    #[test]
    fn live_output_across_gaps_shows_nothing_of_several_secrets(
        first in secret(),
        second in secret(),
        pieces in prop::collection::vec(OTHER, 1..5),
        chunk in 1usize..12,
        dropped in prop::collection::vec(any::<bool>(), 1..40),
    ) {
        let scrubber = Scrubber::new([first.as_str(), second.as_str()]);
        let text = pieces.join(&format!("{first}{second}"));
        let mut chunks: Vec<(u64, &[u8])> = Vec::new();
        let mut gap = 0u64;
        for (k, piece) in text.as_bytes().chunks(chunk).enumerate() {
            if dropped[k % dropped.len()] {
                gap += piece.len() as u64;
            } else {
                chunks.push((std::mem::take(&mut gap), piece));
            }
        }
        if gap > 0 {
            chunks.push((gap, &[]));
        }
        let shown = crate::live::published(&scrubber, &chunks);
        let out = crate::live::without_markers(&shown);
        prop_assert!(
            !out.chars().any(|c| first.contains(c) || second.contains(c)),
            "{shown:?}"
        );
    }

    #[test]
    fn live_output_kept_while_nobody_follows_shows_no_piece_of_a_secret(
        secret in secret(),
        before in OTHER,
        after in OTHER,
        chunk in 1usize..12,
        hold in 1usize..24,
        watched_from in 0usize..20,
    ) {
        // Nobody follows for the first `watched_from` chunks: the pane keeps only the last
        // `hold` bytes, cutting the oldest (a gap at the front).
        let scrubber = Scrubber::new([secret.as_str()]);
        let text = format!("{before}{secret}{after}");
        let mut pane = crate::live::Pane::default();
        let mut shown = String::new();
        for (k, piece) in text.as_bytes().chunks(chunk).enumerate() {
            pane.push(&scrubber, 0, piece);
            if k < watched_from {
                pane.bound(hold);
            } else {
                shown.push_str(&pane.take(&scrubber, false));
            }
        }
        shown.push_str(&pane.take(&scrubber, true));
        let out = crate::live::without_markers(&shown);
        prop_assert!(!out.chars().any(|c| secret.contains(c)), "{shown:?}");
    }
}
