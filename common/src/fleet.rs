//! Fleet jobs' domain types: which devices a job targets (`Target`), its limits, and where a
//! job run is in its life (`JobRunStatus`). A job is a command whose target is a selector; a
//! device command is the degenerate case (one device, named by id), so the rest of netcron —
//! schedules, runs, the executor — sees one shape.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{ParseError, Platform, Zone, invalid};

/// The most of each list a target may name (tags, platforms, zones, ids).
pub const MAX_TARGET_ITEMS: usize = 10_000;

/// Which devices a job runs on, evaluated when the job fires. Every criterion given must hold
/// (`tags_all`: the device has every tag; `tags_any`: at least one; `platforms`, `zones`,
/// `device_ids`: the device is one of them); `exclude_ids` and `exclude_tags` then remove
/// devices. Disabled devices never match. A target names at least one criterion or says
/// `all: true`, so an empty selector never means "every device" by accident.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Every device (still narrowed by the other criteria and exclusions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Devices that have every one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags_all: Vec<String>,
    /// Devices that have at least one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags_any: Vec<String>,
    /// Devices of one of these platforms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<Platform>,
    /// Devices in one of these zones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// These devices (by id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_ids: Vec<Uuid>,
    /// Never these devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_ids: Vec<Uuid>,
    /// Never devices with any of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tags: Vec<String>,
}

impl Target {
    /// Checks a target as the API received it: at least one criterion (or `all`), lists within
    /// bounds, valid zone names, no empty tag; duplicates are dropped.
    ///
    /// # Errors
    /// A [`ParseError`] naming the list at fault (`target.zones: …`).
    pub fn parse(mut self) -> Result<Self, ParseError> {
        let narrows = !(self.tags_all.is_empty()
            && self.tags_any.is_empty()
            && self.platforms.is_empty()
            && self.zones.is_empty()
            && self.device_ids.is_empty());
        if !narrows && !self.all {
            return Err(invalid(
                "names no devices: give tags_all, tags_any, platforms, zones or device_ids, \
                 or all: true",
            ));
        }
        for (name, list) in [
            ("tags_all", &mut self.tags_all),
            ("tags_any", &mut self.tags_any),
            ("exclude_tags", &mut self.exclude_tags),
        ] {
            *list = tags(name, std::mem::take(list))?;
        }
        for (name, len) in [
            ("platforms", self.platforms.len()),
            ("device_ids", self.device_ids.len()),
            ("exclude_ids", self.exclude_ids.len()),
        ] {
            bounded(name, len)?;
        }
        bounded("zones", self.zones.len())?;
        for zone in &self.zones {
            Zone::parse(zone).map_err(|e| invalid(format!("zones: `{zone}` {e}")))?;
        }
        dedup(&mut self.platforms);
        dedup(&mut self.zones);
        dedup(&mut self.device_ids);
        dedup(&mut self.exclude_ids);
        Ok(self)
    }

    /// The platforms as the texts `devices.platform` holds.
    pub fn platform_texts(&self) -> Vec<String> {
        self.platforms
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect()
    }
}

fn bounded(name: &str, len: usize) -> Result<(), ParseError> {
    if len > MAX_TARGET_ITEMS {
        return Err(invalid(format!(
            "{name}: must name at most {MAX_TARGET_ITEMS} items"
        )));
    }
    Ok(())
}

fn tags(name: &str, list: Vec<String>) -> Result<Vec<String>, ParseError> {
    bounded(name, list.len())?;
    let mut out = Vec::with_capacity(list.len());
    for tag in list {
        let tag = tag.trim().to_owned();
        if tag.is_empty() {
            return Err(invalid(format!("{name}: a tag must not be empty")));
        }
        // Device tags never hold these (their own rule), so a target naming one matches
        // nothing; NUL could not even be sent to Postgres.
        if tag.len() > 64 || tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!(
                "{name}: `{}` is not a tag (1 to 64 characters without spaces)",
                tag.escape_debug()
            )));
        }
        out.push(tag);
    }
    dedup(&mut out);
    Ok(out)
}

fn dedup<T: Eq + std::hash::Hash + Clone>(list: &mut Vec<T>) {
    let mut seen = HashSet::new();
    list.retain(|x| seen.insert(x.clone()));
}

/// The most bytes a `vars` map may take as JSON.
pub const MAX_VARS_BYTES: usize = 64 * 1024;

/// Template variables (a device's own, or a job's defaults): names are identifiers, so
/// `{{ vars.name }}` reaches each; values are any JSON.
///
/// # Errors
/// A [`ParseError`] naming the first bad key, or the size bound.
pub fn parse_vars(
    vars: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, ParseError> {
    for key in vars.keys() {
        let mut chars = key.chars();
        let identifier = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier || key.len() > 64 {
            return Err(invalid(format!(
                "`{key}` is not a variable name: letters, digits and `_`, not starting with a \
                 digit, at most 64 characters"
            )));
        }
    }
    if let Some(key) = vars
        .keys()
        .find(|k| vars.get(*k).is_some_and(|v| sealed_var(v).is_some()))
    {
        return Err(invalid(format!(
            "`{key}`: `{SEALED}` is reserved for stored secrets"
        )));
    }
    if let Some(key) = vars.iter().find_map(|(k, v)| {
        (is_secret_var(k, v) && !(v.is_string() || v.is_number() || v.is_boolean())).then_some(k)
    }) {
        return Err(invalid(format!(
            "`{key}` is a secret variable (see `is_secret_var`): its value must be text, a number \
             or a boolean"
        )));
    }
    // Postgres' jsonb cannot hold U+0000 in any string.
    if vars.values().any(has_nul) {
        return Err(invalid("must not contain NUL characters"));
    }
    let size = serde_json::to_vec(&vars).map_or(usize::MAX, |b| b.len());
    if size > MAX_VARS_BYTES {
        return Err(invalid(format!(
            "must be at most {MAX_VARS_BYTES} bytes as JSON"
        )));
    }
    Ok(vars)
}

/// How a secret variable is stored: `{"$sealed": "<base64 of the sealed value>"}`, sealed
/// under `secret::context::variable(owner, name)`.
pub const SEALED: &str = "$sealed";

/// What the API shows, and accepts back on update to keep the stored value, for a secret
/// variable.
pub const VAR_MASK: &str = "********";

/// Words that make a variable a secret when they are a whole `_`-separated part of its name
/// (`snmp_community`, `enable_password`, `api_key`, `psk`): the names Ansible's and
/// Rundeck's users give secrets, matched as words so `keyboard` or `passive` are not.
const SECRET_WORDS: [&str; 13] = [
    "password",
    "passwd",
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "apikey",
    "community",
    "psk",
    "passphrase",
    "credential",
    "credentials",
];

/// Whether the variable `name` holding `value` is a secret: its name has a secret word (see
/// [`SECRET_WORDS`]), or its value is a private key. Such a value is sealed at rest, shown as
/// [`VAR_MASK`], travels sealed on the tasks stream and is scrubbed from the run's output.
pub fn is_secret_var(name: &str, value: &serde_json::Value) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.split('_').any(|word| SECRET_WORDS.contains(&word))
        || value
            .as_str()
            .is_some_and(|v| v.contains("-----BEGIN") && v.contains("PRIVATE KEY"))
}

/// The base64 of a stored secret variable, when `value` is one.
pub fn sealed_var(value: &serde_json::Value) -> Option<&str> {
    let object = value.as_object()?;
    (object.len() == 1).then_some(())?;
    object.get(SEALED)?.as_str()
}

/// The text a secret variable's value is sent as (a string as it is, a number or boolean as
/// JSON writes it).
pub fn var_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `vars` as the API shows them: each secret as [`VAR_MASK`].
pub fn masked_vars(vars: &serde_json::Value) -> serde_json::Value {
    match vars.as_object() {
        Some(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let shown = if sealed_var(v).is_some() {
                        serde_json::Value::String(VAR_MASK.to_owned())
                    } else {
                        v.clone()
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        None => vars.clone(),
    }
}

fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Where a job run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobRunStatus {
    /// Some device runs are queued or running.
    Running,
    /// Every device run succeeded (or the target matched no device).
    Succeeded,
    /// Some device runs succeeded and some did not.
    PartiallyFailed,
    /// No device run succeeded.
    Failed,
    /// Cancelled, or stopped by `max_fail_percent`: devices not started are `skipped` or
    /// `cancelled`, with the reason.
    Stopped,
}

impl JobRunStatus {
    pub const ALL: &'static [JobRunStatus] = &[
        Self::Running,
        Self::Succeeded,
        Self::PartiallyFailed,
        Self::Failed,
        Self::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::PartiallyFailed => "partially_failed",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }

    /// The status of a job run whose device runs have all ended, from how many succeeded and
    /// how many did not.
    pub fn settled(succeeded: u64, unsuccessful: u64, stopped: bool) -> Self {
        match (stopped, succeeded, unsuccessful) {
            (true, _, _) => Self::Stopped,
            (false, _, 0) => Self::Succeeded,
            (false, 0, _) => Self::Failed,
            _ => Self::PartiallyFailed,
        }
    }
}

impl fmt::Display for JobRunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobRunStatus {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        Self::ALL
            .iter()
            .copied()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                invalid(format!(
                    "`{s}` is not one of: running, succeeded, partially_failed, failed, stopped"
                ))
            })
    }
}

/// A device's start offset within a job's spread window: fixed by a hash of the job and the
/// device (Jenkins' `H`), so each device starts at the same offset every time and the fleet
/// is spread evenly over the window. FNV-1a over both ids: stable across builds and versions,
/// unlike `std`'s randomly keyed hasher.
pub fn spread_offset_s(job_id: Uuid, device_id: Uuid, spread_s: u32) -> u32 {
    if spread_s == 0 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in job_id.as_bytes().iter().chain(device_id.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(spread_s)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_variables_are_known_by_a_word_of_their_name_or_a_private_key_value() {
        let text = serde_json::json!("x");
        for name in [
            "snmp_community",
            "enable_password",
            "api_key",
            "PSK",
            "tacacs_secret",
        ] {
            assert!(is_secret_var(name, &text), "{name}");
        }
        for name in ["keyboard", "passive_mode", "bypass", "vlan", "site"] {
            assert!(!is_secret_var(name, &text), "{name}");
        }
        let pem = serde_json::json!("-----BEGIN OPENSSH PRIVATE KEY-----\nabc");
        assert!(is_secret_var("banner", &pem));
        let sealed = serde_json::json!({ SEALED: "AAAA" });
        assert_eq!(sealed_var(&sealed), Some("AAAA"));
        let shown = masked_vars(&serde_json::json!({"a": 1, "pw": sealed}));
        assert_eq!(shown, serde_json::json!({"a": 1, "pw": VAR_MASK}));
        let mut reserved = serde_json::Map::new();
        reserved.insert("x".into(), serde_json::json!({ SEALED: "forged" }));
        assert!(parse_vars(reserved).is_err());
        let mut structured = serde_json::Map::new();
        structured.insert("snmp_community".into(), serde_json::json!(["a"]));
        assert!(parse_vars(structured).is_err());
    }

    #[test]
    fn a_target_that_names_nothing_is_refused_unless_it_says_all() {
        assert!(Target::default().parse().is_err());
        assert!(
            Target {
                all: true,
                ..Target::default()
            }
            .parse()
            .is_ok()
        );
        assert!(
            Target {
                exclude_tags: vec!["lab".into()],
                ..Target::default()
            }
            .parse()
            .is_err()
        );
    }

    #[test]
    fn tags_are_trimmed_and_deduplicated_and_empty_ones_refused() {
        let t = Target {
            tags_any: vec![" a".into(), "a".into(), "b".into()],
            ..Target::default()
        }
        .parse()
        .expect("valid");
        assert_eq!(t.tags_any, vec!["a", "b"]);
        let err = Target {
            tags_all: vec![" ".into()],
            ..Target::default()
        }
        .parse()
        .expect_err("empty tag");
        assert!(err.0.contains("tags_all"), "{}", err.0);
    }

    #[test]
    fn a_bad_zone_is_named() {
        let err = Target {
            zones: vec!["Not A Zone".into()],
            ..Target::default()
        }
        .parse()
        .expect_err("zone");
        assert!(err.0.starts_with("zones:"), "{}", err.0);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<Target>(r#"{"tag": ["a"]}"#).expect_err("unknown");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn variable_names_are_identifiers() {
        let ok: serde_json::Map<_, _> =
            serde_json::from_str(r#"{"vlan": 10, "_x1": {"a": [1]}}"#).expect("json");
        assert!(parse_vars(ok).is_ok());
        for bad in [
            r#"{"1x": 1}"#,
            r#"{"a-b": 1}"#,
            r#"{"": 1}"#,
            r#"{"a.b": 1}"#,
        ] {
            let map: serde_json::Map<_, _> = serde_json::from_str(bad).expect("json");
            assert!(parse_vars(map).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_spread_offset_is_stable_and_within_the_window_and_even() {
        let job = Uuid::from_u128(7);
        let mut buckets = [0u32; 10];
        for i in 0..10_000u128 {
            let device = Uuid::from_u128(i * 7919 + 1);
            let offset = spread_offset_s(job, device, 600);
            assert!(offset < 600);
            assert_eq!(offset, spread_offset_s(job, device, 600));
            buckets[usize::try_from(offset / 60).expect("bucket")] += 1;
        }
        // 1,000 per minute expected; a hash that clumps would leave some minute far off.
        for (minute, n) in buckets.iter().enumerate() {
            assert!((850..=1150).contains(n), "minute {minute}: {n}");
        }
        assert_eq!(spread_offset_s(job, Uuid::from_u128(1), 0), 0);
    }

    #[test]
    fn a_settled_job_run_status_follows_its_counts() {
        assert_eq!(JobRunStatus::settled(3, 0, false), JobRunStatus::Succeeded);
        assert_eq!(JobRunStatus::settled(0, 0, false), JobRunStatus::Succeeded);
        assert_eq!(JobRunStatus::settled(0, 2, false), JobRunStatus::Failed);
        assert_eq!(
            JobRunStatus::settled(1, 2, false),
            JobRunStatus::PartiallyFailed
        );
        assert_eq!(JobRunStatus::settled(5, 0, true), JobRunStatus::Stopped);
    }
}
