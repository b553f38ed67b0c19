//! Domain types that parse user input. Constructing one is the only way to get a value of that
//! type, so a `CronSpec` or a `Host` held anywhere in netcron has already been validated.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::stored::Stored;

mod cron_fields;
#[cfg(test)]
mod cron_properties;

use cron_fields::{Days, Numbering};

/// Why a piece of input was rejected. The caller knows which field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

pub(crate) fn invalid(reason: impl Into<String>) -> ParseError {
    ParseError(reason.into())
}

/// A validated cron expression, with the rule that combines its two day fields.
///
/// Accepted forms:
/// - 5 fields, standard crontab: `minute hour day-of-month month day-of-week`, with day-of-week
///   `0-7` where 0 and 7 are Sunday (as in Vixie cron). It fires at second 0.
/// - 6 fields: `second minute hour day-of-month month day-of-week`.
/// - 7 fields: the 6-field form followed by `year` (1970 to 2100).
/// - The shorthands `@yearly` (or `@annually`), `@monthly`, `@weekly`, `@daily` (or
///   `@midnight`), `@hourly`.
///
/// The 6- and 7-field forms number day-of-week as Quartz and the `cron` crate do: `1-7` with
/// 1 = Sunday. Names (`MON-FRI`, `jan`) work in every form. Fields take lists, ranges and
/// steps (`1,15`, `9-17`, `*/10`, `MON-FRI/2`), and the day fields also take what crontab and
/// Quartz users bring:
/// - day-of-month: `L` (the last day), `LW` (the last weekday), `15W` (the weekday nearest to
///   the 15th, never leaving the month: a Saturday the 1st moves to Monday the 3rd, a Sunday
///   the 31st to Friday the 29th; no fire in a month without that day), `?`;
/// - day-of-week: `MON#1` or `1#1` (the first Monday; `#1` to `#5`, and a month without a
///   fifth one has no fire), `5L` or `FRIL` (the last Friday, in the form's numbering), `?`.
///
/// `?` means "no specific value" and matches every day, like `*`.
///
/// **Day-of-month and day-of-week** ([`DayMatch`]). When both fields are restricted — neither
/// begins with `*` nor is `?`, crontab's own test — [`DayMatch::Either`] fires on a day that
/// matches either field (crontab: `0 0 1,15 * MON` fires on the 1st, the 15th and every
/// Monday) and [`DayMatch::Both`] only on a day that matches both (netcron's rule before
/// `day_match` existed, kept by the schedules created then). When one field is unrestricted
/// the rules agree: the day must match the other (and a step such as `*/2`, which begins with
/// `*`, still filters, as in crontab). The rule applies to every form alike. A Quartz
/// expression writes `?` in one of the two day fields, where the rule makes no difference; a
/// 6- or 7-field expression that restricts both (which Quartz refuses) follows the rule as a
/// 5-field one does — 6-field schedules created before `day_match` keep `both`, the `cron`
/// crate's rule they were written under.
///
/// **Why the day fields are netcron's.** The `cron` crate (the stack's) has `?` but no `L`,
/// `W` or `#`, and always requires a day to match both day fields. So netcron parses the two day fields
/// itself into a predicate on dates (`cron_fields.rs`), and hands the rest to the `cron` crate
/// with both day fields `*`: it finds the next second, minute, hour, month and year, and a day
/// the predicate refuses is skipped to its last second. `croner` (already in the tree through
/// `tokio-cron-scheduler`) has `L`, `W`, `#` and an "or" mode, but not `LW`, and its errors
/// name neither the field nor its bounds; it would also add its dependencies to the
/// executor's tree, which needs no cron at all. Errors quote the expression as typed, never
/// the form handed to the `cron` crate.
#[derive(Clone)]
pub struct CronSpec {
    source: String,
    /// Seconds to years, with both day fields `*`.
    times: cron::Schedule,
    days: Days,
    day_match: DayMatch,
}

impl fmt::Debug for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CronSpec")
            .field(&self.source)
            .field(&self.day_match)
            .finish()
    }
}

/// `detail` with the position of the field it starts with, as the expression was typed:
/// `minute must be 0 to 59, not \`61\`` → `minute (field 1 of 5) must be 0 to 59, not \`61\``.
/// A detail that does not start with a field's name is returned as it is.
fn locate(detail: &str, fields: usize) -> String {
    let order: &[&str] = match fields {
        5 => &["minute", "hour", "day-of-month", "month", "day-of-week"],
        6 => &[
            "second",
            "minute",
            "hour",
            "day-of-month",
            "month",
            "day-of-week",
        ],
        7 => &[
            "second",
            "minute",
            "hour",
            "day-of-month",
            "month",
            "day-of-week",
            "year",
        ],
        _ => &[],
    };
    order
        .iter()
        .enumerate()
        .find_map(|(i, name)| {
            let rest = detail.strip_prefix(name)?;
            rest.starts_with(' ')
                .then(|| format!("{name} (field {} of {fields}){rest}", i + 1))
        })
        .unwrap_or_else(|| detail.to_owned())
}

/// The 6-field forms of the shorthands (Quartz numbering: day-of-week 1 is Sunday).
const SHORTHANDS: &[(&str, &str)] = &[
    ("@yearly", "0 0 0 1 1 *"),
    ("@annually", "0 0 0 1 1 *"),
    ("@monthly", "0 0 0 1 * *"),
    ("@weekly", "0 0 0 * * 1"),
    ("@daily", "0 0 0 * * *"),
    ("@midnight", "0 0 0 * * *"),
    ("@hourly", "0 0 * * * *"),
];

impl CronSpec {
    /// Parses any of the accepted forms, with crontab's day rule ([`DayMatch::Either`]);
    /// [`CronSpec::with_day_match`] chooses another. A stored schedule's expression must be
    /// given its stored rule.
    ///
    /// # Errors
    /// A [`ParseError`] that quotes the expression and says which field is wrong and what it
    /// accepts, or that the expression never fires after now.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let source = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if source.is_empty() {
            return Err(invalid("must not be empty"));
        }
        let count = if source.starts_with('@') {
            6
        } else {
            source.split(' ').count()
        };
        let wrong = |detail: String| {
            invalid(format!(
                "`{source}` is not a valid cron expression: {}",
                locate(&detail, count)
            ))
        };
        let expanded = if source.starts_with('@') {
            SHORTHANDS
                .iter()
                .find(|(name, _)| *name == source)
                .map(|(_, six)| *six)
                .ok_or_else(|| {
                    invalid(format!(
                        "`{source}` is not a shorthand netcron knows: @yearly, @annually, \
                         @monthly, @weekly, @daily, @midnight or @hourly"
                    ))
                })?
        } else {
            source.as_str()
        };
        let fields: Vec<&str> = expanded.split(' ').collect();
        // (second, minute, hour, day-of-month, month, day-of-week, year) and the numbering.
        let (second, rest, numbering) = match fields.len() {
            5 => ("0", &fields[..], Numbering::Posix),
            6 | 7 => (fields[0], &fields[1..], Numbering::Quartz),
            n => {
                return Err(invalid(format!(
                    "`{source}` has {n} fields; expected 5 (minute hour day month weekday), \
                     6 (with seconds first) or 7 (with seconds first and year last)"
                )));
            }
        };
        let (minute, hour, dom, month, dow) = (rest[0], rest[1], rest[2], rest[3], rest[4]);
        let year = rest.get(5).copied();
        let days = Days::parse(dom, dow, numbering).map_err(wrong)?;
        let times_text = match year {
            Some(year) => format!("{second} {minute} {hour} * {month} * {year}"),
            None => format!("{second} {minute} {hour} * {month} *"),
        };
        let times = cron::Schedule::from_str(&times_text).map_err(|_| {
            // The `cron` crate's message would quote `times_text`, not what the user typed, and
            // says "less than 59" of a minute that may be 59; say which field is wrong instead.
            let mut checks = vec![(&cron_fields::MINUTE, minute), (&cron_fields::HOUR, hour)];
            if fields.len() > 5 {
                checks.insert(0, (&cron_fields::SECOND, second));
            }
            checks.push((&cron_fields::MONTH, month));
            if let Some(year) = year {
                checks.push((&cron_fields::YEAR, year));
            }
            let detail = checks
                .into_iter()
                .find_map(|(field, text)| field.check(text).err())
                .unwrap_or_else(|| {
                    "the second, minute, hour, month or year field is malformed".to_owned()
                });
            wrong(detail)
        })?;
        let spec = Self {
            source,
            times,
            days,
            day_match: DayMatch::Either,
        };
        // `either` matches a superset of the days `both` does: an expression that never fires
        // with it never fires at all.
        if spec.next_naive(Utc::now().naive_utc()).is_none() {
            return Err(invalid(format!("`{}` never fires after now", spec.source)));
        }
        Ok(spec)
    }

    /// The same expression with another day rule.
    ///
    /// # Errors
    /// When the expression never fires after now under `day_match` (`0 0 30 2 MON` with
    /// `both`: no Monday is February's 30th).
    pub fn with_day_match(mut self, day_match: DayMatch) -> Result<Self, ParseError> {
        let changes_days = day_match != self.day_match && self.days.both_restricted();
        self.day_match = day_match;
        if changes_days && self.next_naive(Utc::now().naive_utc()).is_none() {
            return Err(invalid(format!(
                "`{}` never fires after now with day_match `{day_match}`: no day matches \
                 both its day-of-month and its day-of-week",
                self.source
            )));
        }
        Ok(self)
    }

    /// The expression as the user wrote it (whitespace normalised).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// How the two day fields combine.
    pub fn day_match(&self) -> DayMatch {
        self.day_match
    }

    /// The first fire time strictly after `after`, evaluated on the wall clock of `tz`.
    ///
    /// Daylight-saving rules:
    /// - A wall-clock time inside a spring-forward gap does not exist; it fires once, at the
    ///   first instant after the gap (02:30 on a 02:00→03:00 night fires at 03:00). Several
    ///   fire times in one gap collapse into that one instant.
    /// - A wall-clock time that occurs twice in a fall-back hour fires once, at its first
    ///   occurrence, unless the expression's hour field is `*`: such schedules run "every hour"
    ///   and follow real time, so they fire in both passes and never pause for an hour.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        let real_time = self.hourly();
        let mut cursor = local;
        // The bound only guards against a pathological expression; a real search ends within
        // a few steps (a handful more around a transition).
        for _ in 0..10_000 {
            let naive = self.next_naive(cursor)?;
            cursor = naive;
            let (candidate, in_fold) = match tz.from_local_datetime(&naive) {
                LocalResult::Single(t) => (t, false),
                LocalResult::Ambiguous(first, second) => {
                    if first.with_timezone(&Utc) > after {
                        (first, true)
                    } else if real_time && second.with_timezone(&Utc) > after {
                        (second, true)
                    } else {
                        continue;
                    }
                }
                LocalResult::None => (gap_end(naive, tz)?, false),
            };
            let candidate = candidate.with_timezone(&Utc);
            if candidate <= after {
                continue;
            }
            // `after` may sit in the first pass of a fall-back hour while the search above has
            // already left it; an hourly schedule's second-pass fires come first then.
            if real_time
                && !in_fold
                && let Some(second) = self.second_pass_after(after, tz)
                && second < candidate
            {
                return Some(second);
            }
            return Some(candidate);
        }
        None
    }

    /// Whether the hour field is `*`.
    fn hourly(&self) -> bool {
        use cron::TimeUnitSpec as _;
        self.times.hours().is_all()
    }

    /// The next wall-clock time strictly after `naive` that matches, ignoring zones: the next
    /// time of day the `cron` crate finds, on the first day from there that the day fields
    /// accept. Ends (`None`) after 2100, the `cron` crate's last year.
    fn next_naive(&self, naive: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut cursor = Utc.from_utc_datetime(&naive);
        loop {
            let candidate = self.times.after(&cursor).next()?;
            let date = candidate.date_naive();
            if self.days.matches(date, self.day_match) {
                return Some(candidate.naive_utc());
            }
            // Nothing on this day: go on from its last second.
            cursor = Utc.from_utc_datetime(&date.and_hms_opt(23, 59, 59)?);
        }
    }

    /// When `after` is in the first pass of a repeated hour: the first match in the second
    /// pass that is later than `after`.
    fn second_pass_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        let LocalResult::Ambiguous(first, second) = tz.from_local_datetime(&local) else {
            return None;
        };
        if first.with_timezone(&Utc) != after {
            return None;
        }
        let shift = second.with_timezone(&Utc) - first.with_timezone(&Utc);
        let mut cursor = local - shift - chrono::Duration::seconds(1);
        for _ in 0..10_000 {
            let naive = self.next_naive(cursor)?;
            cursor = naive;
            match tz.from_local_datetime(&naive) {
                LocalResult::Ambiguous(_, later) if later.with_timezone(&Utc) > after => {
                    return Some(later.with_timezone(&Utc));
                }
                LocalResult::Single(t) if t.with_timezone(&Utc) > after => return None,
                _ => {}
            }
        }
        None
    }

    /// The next `count` fire times strictly after `after`, in `tz`.
    pub fn upcoming(&self, after: DateTime<Utc>, tz: Tz, count: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(count);
        let mut cursor = after;
        while out.len() < count {
            match self.next_after(cursor, tz) {
                Some(t) => {
                    out.push(t.with_timezone(&tz));
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }
}

/// The first instant after the spring-forward gap that swallowed `naive`. Real transitions
/// fall on whole minutes, so stepping by minutes finds the gap's end.
fn gap_end(naive: NaiveDateTime, tz: Tz) -> Option<DateTime<Tz>> {
    let start = naive.with_second(0)?.with_nanosecond(0)?;
    (1..=24 * 60).find_map(|minutes| {
        tz.from_local_datetime(&(start + chrono::Duration::minutes(minutes)))
            .earliest()
    })
}

impl PartialEq for CronSpec {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.day_match == other.day_match
    }
}

/// A validated IANA time zone name such as `Europe/Berlin`.
pub fn parse_timezone(text: &str) -> Result<Tz, ParseError> {
    Tz::from_str(text).map_err(|_| {
        invalid(format!(
            "`{text}` is not an IANA time zone name (e.g. Europe/Berlin)"
        ))
    })
}

/// A host to connect to: an IP address or a DNS name (RFC 1123 labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host(String);

impl Host {
    /// # Errors
    /// When `text` is neither an IP address nor a syntactically valid host name.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let text = text.trim();
        if text.parse::<IpAddr>().is_ok() {
            return Ok(Self(text.to_owned()));
        }
        let bare = text.strip_suffix('.').unwrap_or(text);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
            return Err(invalid(format!(
                "`{text}` is not an IP address or a valid host name"
            )));
        }
        // A dotted name made only of digits would be a malformed IPv4 address, not a name.
        if bare
            .split('.')
            .all(|l| l.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(invalid(format!("`{text}` is not a valid IP address")));
        }
        Ok(Self(bare.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A TCP port, 1 to 65535.
pub fn parse_port(value: i64) -> Result<u16, ParseError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| invalid(format!("{value} is not a TCP port (1-65535)")))
}

/// Defines a text-backed enum shared by the database, the wire and the API schema.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[cfg_attr(feature = "sea-orm", derive(sea_orm::EnumIter, sea_orm::DeriveActiveEnum))]
        #[cfg_attr(feature = "sea-orm", sea_orm(rs_type = "String", db_type = "Text"))]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* #[cfg_attr(feature = "sea-orm", sea_orm(string_value = $text))] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(invalid(format!(
                        "`{s}` is not one of: {}",
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }
    };
}

text_enum!(
    /// The kind of device, which decides how netcron talks to it.
    Platform {
        Linux = "linux",
        Windows = "windows",
        CiscoIos = "cisco_ios",
        CiscoNxos = "cisco_nxos",
        JuniperJunos = "juniper_junos",
        AristaEos = "arista_eos",
        MikrotikRouteros = "mikrotik_routeros",
        Generic = "generic",
    }
);

text_enum!(
    /// How a credential authenticates.
    CredentialKind {
        /// Password (also used to answer keyboard-interactive prompts).
        Password = "password",
        /// OpenSSH private key, optionally protected by a passphrase.
        PrivateKey = "private_key",
    }
);

text_enum!(
    /// What a command does when it runs.
    CommandKind {
        /// Runs `command` through the device's exec channel.
        Shell = "shell",
        /// Succeeds at once without connecting: measures and tests the pipeline (scheduler,
        /// stream, executor, ingest) without a device. `command` is ignored.
        Noop = "noop",
        /// Collects a structured Windows inventory over SSH (PowerShell, with a `reg query`
        /// fallback) into the run's `payload`. `command` is ignored.
        WindowsInventory = "windows_inventory",
        /// Fetches the device's running configuration with its platform's command (the
        /// command text overrides it, and is required for `generic` and `linux`), strips
        /// volatile lines and stores a new config version when the content changed.
        ConfigBackup = "config_backup",
    }
);

text_enum!(
    /// What to do with fire times that passed while netcron was down.
    MisfirePolicy {
        /// Drop them and resume from now; each dropped fire is recorded as a `missed` run.
        Skip = "skip",
        /// Run once to catch up; the other dropped fires are recorded as `missed`.
        RunOnce = "run_once",
        /// Run every missed fire time (at most 100), oldest first.
        RunAll = "run_all",
    }
);

text_enum!(
    /// What to do when a fire time arrives while a run of the same schedule is unfinished.
    OverlapPolicy {
        /// Do not start another; record the fire as a `skipped` run.
        Skip = "skip",
        /// Queue the new run behind the unfinished one.
        Queue = "queue",
        /// Start it anyway, in parallel.
        Allow = "allow",
    }
);

text_enum!(
    /// How a schedule's cron expression combines its day-of-month and day-of-week fields when
    /// both are restricted (neither begins with `*` nor is `?`); see [`CronSpec`].
    DayMatch {
        /// A day matches when its day-of-month or its day-of-week matches, as in crontab:
        /// `0 0 1,15 * MON` fires on the 1st, the 15th and every Monday. The default.
        Either = "either",
        /// A day must match both: `0 0 1,15 * MON` fires only on Mondays that are the 1st or
        /// the 15th. netcron's rule before this field existed; schedules created before it
        /// keep it.
        Both = "both",
    }
);

text_enum!(
    /// Where a run is in its life.
    RunStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Error = "error",
        Missed = "missed",
        Skipped = "skipped",
        /// Cancelled by a user before any executor began it.
        Cancelled = "cancelled",
    }
);

text_enum!(
    /// Why a run ended with status `error`: the command could not run to completion.
    ErrorKind {
        /// No route, no answer to the TCP connect within its timeout, or the name did not
        /// resolve.
        Unreachable = "unreachable",
        /// The host answered the TCP connect with a reset: nothing listens on the port.
        ConnectionRefused = "connection_refused",
        /// TCP connected but the SSH handshake failed or stalled (no banner, no common
        /// algorithm, not an SSH server).
        HandshakeFailed = "handshake_failed",
        /// The server's host key is not the pinned one; no credential was sent.
        HostKeyMismatch = "host_key_mismatch",
        /// The server rejected the credential.
        AuthFailed = "auth_failed",
        /// The command outlived its timeout; the output so far is kept.
        Timeout = "timeout",
        /// The command ran, but what it printed is not what the command kind needs (e.g. an
        /// inventory that is neither the script's JSON nor `reg query` output).
        InvalidOutput = "invalid_output",
        /// A job's template could not be rendered for the device (a variable it does not
        /// have); nothing was sent to it.
        Template = "template",
        /// Anything else: a secret that cannot be decrypted, a task delivered too often,
        /// an unexpected SSH protocol error.
        Internal = "internal",
    }
);

impl ErrorKind {
    /// Whether another attempt may succeed: the device was not reachable at all. Errors after
    /// the connection was made (authentication, host key, timeouts of a running command) are
    /// never retried, since a retry would repeat them or run the command twice.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unreachable | ErrorKind::ConnectionRefused)
    }
}

impl RunStatus {
    /// Whether the run has ended and will not change again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

impl Stored<RunStatus> {
    /// Whether a stored run has ended, as far as this version can tell: a status it does not
    /// know (a newer version's) counts as ended, so nothing here waits on it forever.
    pub fn is_terminal(&self) -> bool {
        self.known().is_none_or(RunStatus::is_terminal)
    }
}

text_enum!(
    /// What caused a run.
    RunTrigger {
        Scheduled = "scheduled",
        Manual = "manual",
    }
);

/// A display name, compared as people see it: trimmed, in Unicode's composed form (NFC), 1 to
/// `max` characters, with no control and no invisible formatting characters.
///
/// `café` typed with a precomposed `é` and with `e` + a combining accent look the same and are
/// stored the same (NFC, as the W3C's character model recommends for identifiers); a
/// zero-width space or a bidirectional control would make two names that look identical
/// differ, or make a name read differently from how it sorts, so such a character is refused
/// with its code point and name rather than silently removed.
///
/// # Errors
/// When the trimmed text is empty, too long, or has a control or invisible character.
pub fn parse_name(text: &str, max: usize) -> Result<String, ParseError> {
    use unicode_normalization::UnicodeNormalization as _;
    let composed: String = text.trim().nfc().collect();
    let trimmed = parse_text_line(&composed, max)?;
    if let Some((position, c)) = trimmed.chars().enumerate().find(|(_, c)| is_invisible(*c)) {
        return Err(invalid(format!(
            "must not contain the invisible character {} at position {}",
            describe_invisible(c),
            position + 1
        )));
    }
    Ok(trimmed)
}

/// One line of text as typed (a user name, say): trimmed, 1 to `max` characters, no control
/// characters, otherwise taken as it is — a device may expect exactly these bytes.
///
/// # Errors
/// When the trimmed text is empty, too long, or has control characters.
pub fn parse_text_line(text: &str, max: usize) -> Result<String, ParseError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid("must not be empty"));
    }
    let length = trimmed.chars().count();
    if length > max {
        return Err(invalid(format!(
            "must be at most {max} characters (this is {length})"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

/// Whether `c` takes no room on screen and changes how text around it reads or compares:
/// Unicode's format characters (zero-width space and joiners, the byte-order mark, soft
/// hyphen, bidirectional controls, tag characters), and the invisible fillers (Hangul fillers,
/// braille blank) that are letters to Unicode but show nothing.
fn is_invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    c.general_category() == GeneralCategory::Format
        || matches!(
            c,
            '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}'
        )
}

/// `U+200B (zero-width space)`: the code point, and a name for the common ones.
fn describe_invisible(c: char) -> String {
    let name = match c {
        '\u{00AD}' => Some("soft hyphen"),
        '\u{061C}' => Some("Arabic letter mark"),
        '\u{180E}' => Some("Mongolian vowel separator"),
        '\u{200B}' => Some("zero-width space"),
        '\u{200C}' => Some("zero-width non-joiner"),
        '\u{200D}' => Some("zero-width joiner"),
        '\u{200E}' => Some("left-to-right mark"),
        '\u{200F}' => Some("right-to-left mark"),
        '\u{202A}'..='\u{202E}' => Some("bidirectional embedding or override"),
        '\u{2060}' => Some("word joiner"),
        '\u{2066}'..='\u{2069}' => Some("bidirectional isolate"),
        '\u{FEFF}' => Some("zero-width no-break space"),
        _ => None,
    };
    let code = format!("U+{:04X}", u32::from(c));
    name.map_or_else(
        || format!("{code} (an invisible formatting character)"),
        |name| format!("{code} ({name})"),
    )
}

/// Which end of a time range a filter's bound is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeEnd {
    /// `from`: at or after.
    Start,
    /// `to`: before.
    End,
}

/// A bound of a time filter as people type it: an RFC 3339 instant, taken as it is, or a
/// plain date (`2026-12-07`, a UTC day), which means the whole day on either end — `from`
/// its first instant, `to` the first instant of the next day, since `to` excludes its
/// instant. So `from=2026-12-07&to=2026-12-07` is all of the 7th, as a person reads it.
///
/// # Errors
/// When `text` is neither.
pub fn parse_time_bound(text: &str, end: RangeEnd) -> Result<DateTime<Utc>, ParseError> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        invalid(format!(
            "`{text}` is neither a date (2026-11-29) nor an RFC 3339 date and time \
             (2026-11-29T02:00:00Z)"
        ))
    })?;
    let day = match end {
        RangeEnd::Start => Some(day),
        RangeEnd::End => day.succ_opt(),
    };
    day.and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| invalid(format!("`{text}` is out of range")))
}

/// A zone: where a device sits on the network, and so which executors can reach it (a site, a
/// management VRF, a customer network). Each zone has its own tasks stream, read only by the
/// executors started for it (`NETCRON_EXECUTOR_ZONES`).
///
/// A name is 1 to 63 characters: lower-case ASCII letters, digits, `_` and `-`, starting with
/// a letter or digit (`^[a-z0-9][a-z0-9_-]{0,62}$`). That keeps it safe inside a Redis key
/// (no `:`, no `*`, no spaces), an ACL key pattern and a Prometheus label, and makes `Site-A`
/// and `site-a` impossible to confuse: the text is taken as it is, never lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zone(String);

impl Zone {
    /// The zone of every device that names none, and of every executor started without
    /// `NETCRON_EXECUTOR_ZONES`; its tasks stream keeps the name it had before zones existed.
    pub const DEFAULT: &'static str = "default";

    /// # Errors
    /// When `text` is not a zone name (see [`Zone`]).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut chars = text.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !first_ok || !rest_ok || text.len() > 63 {
            return Err(invalid(
                "must be 1 to 63 characters: lower-case letters, digits, `_` and `-`, starting \
                 with a letter or digit",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for Zone {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Zone {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The zones an executor serves: one or more [`Zone`]s, comma-separated in
/// `NETCRON_EXECUTOR_ZONES` (`default` when unset). Duplicates are dropped; order is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zones(Vec<Zone>);

impl Zones {
    /// # Errors
    /// When the list is empty or one of its names is not a zone name.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut zones: Vec<Zone> = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let zone = Zone::parse(name).map_err(|e| invalid(format!("`{name}` {e}")))?;
            if !zones.contains(&zone) {
                zones.push(zone);
            }
        }
        if zones.is_empty() {
            return Err(invalid("must name at least one zone"));
        }
        Ok(Self(zones))
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Zone> {
        self.0.iter()
    }
}

impl Default for Zones {
    fn default() -> Self {
        Self(vec![Zone::default()])
    }
}

impl fmt::Display for Zones {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(Zone::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for Zones {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// When a schedule fires: its cron expression on the wall clock of its zone, limited to the
/// optional `[start_at, end_at]` window.
#[derive(Debug, Clone)]
pub struct Timing {
    pub cron: CronSpec,
    pub tz: Tz,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
}

impl Timing {
    /// The first fire time strictly after `after` that lies inside the window, or `None` when the
    /// schedule has no more fire times.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = match self.start_at {
            // A fire exactly at `start_at` counts, so search from just before it.
            Some(start) if start > after => start - chrono::Duration::milliseconds(1),
            _ => after,
        };
        loop {
            let next = self.cron.next_after(from, self.tz)?;
            if self.end_at.is_some_and(|end| next > end) {
                return None;
            }
            if self.start_at.is_none_or(|start| next >= start) {
                return Some(next);
            }
            from = next;
        }
    }

    /// Up to `count` fire times strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut cursor = after;
        while out.len() < count {
            match self.next_after(cursor) {
                Some(t) => {
                    out.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone};

    #[test]
    fn names_are_composed_and_free_of_invisible_characters() {
        // Composed whatever way it was typed; the text otherwise kept.
        assert_eq!(
            parse_name("  cafe\u{301}-router ", 128).expect("valid"),
            "caf\u{e9}-router"
        );
        assert_eq!(parse_name("Ωmega-1", 128).expect("valid"), "Ωmega-1");
        // Joiners inside emoji are format characters too: refused like any other.
        for (text, said) in [
            ("a\u{200B}b", "U+200B (zero-width space) at position 2"),
            ("\u{202E}abc", "U+202E"),
            ("ab\u{2066}c", "U+2066 (bidirectional isolate)"),
            ("a\u{E0041}", "U+E0041 (an invisible formatting character)"),
            ("a\u{3164}b", "U+3164"),
        ] {
            let err = parse_name(text, 128).expect_err(text).0;
            assert!(err.contains(said), "{text:?}: {err}");
        }
        // Length counts characters of the composed form.
        assert!(parse_name(&"e\u{301}".repeat(128), 128).is_ok());
        let err = parse_name(&"x".repeat(129), 128).expect_err("long").0;
        assert_eq!(err, "must be at most 128 characters (this is 129)");
        // A user name is one line as typed: not recomposed.
        assert_eq!(
            parse_text_line("cafe\u{301}", 64).expect("valid"),
            "cafe\u{301}"
        );
    }

    #[test]
    fn a_plain_date_bound_covers_the_whole_day() {
        let start = parse_time_bound("2026-12-07", RangeEnd::Start).expect("valid");
        let end = parse_time_bound("2026-12-07", RangeEnd::End).expect("valid");
        assert_eq!(start.to_rfc3339(), "2026-12-07T00:00:00+00:00");
        assert_eq!(end.to_rfc3339(), "2026-12-08T00:00:00+00:00");
        let instant = parse_time_bound("2026-12-07T10:00:00+01:00", RangeEnd::End).expect("valid");
        assert_eq!(instant.to_rfc3339(), "2026-12-07T09:00:00+00:00");
        assert!(parse_time_bound("yesterday", RangeEnd::Start).is_err());
    }

    #[test]
    fn zone_names_are_identifiers_safe_in_keys_and_labels() {
        for ok in ["default", "site-a", "dc1", "0", "a_b-c", &"z".repeat(63)] {
            assert_eq!(
                Zone::parse(ok).map(|z| z.to_string()),
                Ok(ok.to_owned()),
                "{ok}"
            );
        }
        for bad in [
            "",
            "Site-A",
            "-a",
            "_a",
            "a:b",
            "a b",
            "a*",
            "é",
            &"z".repeat(64),
        ] {
            assert!(Zone::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn executor_zones_are_a_list_without_duplicates() {
        let zones = Zones::parse(" site-a, default ,site-a,").expect("zones");
        assert_eq!(zones.to_string(), "site-a,default");
        assert_eq!(Zones::default().to_string(), "default");
        assert!(Zones::parse(" , ").is_err());
        assert!(Zones::parse("a,B").is_err());
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid timestamp")
            .with_timezone(&Utc)
    }

    #[test]
    fn five_field_fires_at_second_zero() {
        let spec = CronSpec::parse("*/15 * * * *").expect("valid");
        let next = spec
            .next_after(at("2026-01-01T00:07:30Z"), Tz::UTC)
            .expect("fires");
        assert_eq!(next, at("2026-01-01T00:15:00Z"));
    }

    #[test]
    fn five_field_weekdays_use_posix_numbering() {
        // 2026-01-03 is a Saturday; 1-5 means Monday to Friday.
        let spec = CronSpec::parse("0 9 * * 1-5").expect("valid");
        let next = spec
            .next_after(at("2026-01-03T00:00:00Z"), Tz::UTC)
            .expect("fires");
        assert_eq!(next, at("2026-01-05T09:00:00Z"));
        // 0 and 7 both mean Sunday.
        for expr in ["0 9 * * 0", "0 9 * * 7", "0 9 * * sun"] {
            let spec = CronSpec::parse(expr).expect("valid");
            let next = spec
                .next_after(at("2026-01-03T00:00:00Z"), Tz::UTC)
                .expect("fires");
            assert_eq!(next, at("2026-01-04T09:00:00Z"), "{expr}");
        }
        // Ranges and steps keep their crontab meaning: 5-7 is Friday to Sunday, 1-5/2 Monday,
        // Wednesday and Friday, */2 Sunday, Tuesday, Thursday and Saturday.
        let from = at("2026-01-04T12:00:00Z"); // a Sunday
        let days = |expr: &str| -> Vec<u32> {
            let spec = CronSpec::parse(expr).expect("valid");
            spec.upcoming(from, Tz::UTC, 7)
                .iter()
                .map(|t| t.weekday().num_days_from_sunday())
                .collect()
        };
        assert_eq!(days("0 9 * * 5-7"), [5, 6, 0, 5, 6, 0, 5]);
        assert_eq!(days("0 9 * * 1-5/2"), [1, 3, 5, 1, 3, 5, 1]);
        assert_eq!(days("0 9 * * */2"), [2, 4, 6, 0, 2, 4, 6]);
        assert_eq!(days("0 9 * * 1/2"), [1, 3, 5, 1, 3, 5, 1]);
    }

    #[test]
    fn six_and_seven_fields_take_seconds() {
        let spec = CronSpec::parse("*/10 * * * * *").expect("valid");
        let next = spec
            .next_after(at("2026-01-01T00:00:01Z"), Tz::UTC)
            .expect("fires");
        assert_eq!(next, at("2026-01-01T00:00:10Z"));
        assert!(CronSpec::parse("0 0 12 1 1 * 2030").is_ok());
    }

    #[test]
    fn bad_expressions_are_explained() {
        assert!(CronSpec::parse("").is_err());
        assert!(
            CronSpec::parse("* * *")
                .expect_err("too few")
                .0
                .contains("3 fields")
        );
        assert!(CronSpec::parse("61 * * * *").is_err());
        assert!(CronSpec::parse("* * * * 8").is_err());
        assert!(
            CronSpec::parse("0 0 0 1 1 * 2001")
                .expect_err("past")
                .0
                .contains("never")
        );
    }

    /// The dates of the next `count` fire times after `from` (UTC), as `YYYY-MM-DD`.
    fn fire_dates(spec: &CronSpec, from: &str, count: usize) -> Vec<String> {
        spec.upcoming(at(from), Tz::UTC, count)
            .iter()
            .map(|t| t.format("%Y-%m-%d").to_string())
            .collect()
    }

    fn dates(expr: &str, from: &str, count: usize) -> Vec<String> {
        fire_dates(&CronSpec::parse(expr).expect("valid"), from, count)
    }

    #[test]
    fn l_is_the_last_day_of_the_month_across_the_year_end() {
        assert_eq!(
            dates("0 2 L * *", "2026-11-15T00:00:00Z", 4),
            ["2026-11-30", "2026-12-31", "2027-01-31", "2027-02-28"]
        );
        assert_eq!(
            dates("0 2 L 2 *", "2027-03-01T00:00:00Z", 2),
            ["2028-02-29", "2029-02-28"]
        );
        let spec = CronSpec::parse("0 2 L * *").expect("valid");
        let next = spec
            .next_after(at("2026-01-31T01:59:59Z"), Tz::UTC)
            .expect("fires");
        assert_eq!(next, at("2026-01-31T02:00:00Z"));
        // A list may mix L with days; 6-field (Quartz) forms take it too.
        assert_eq!(
            dates("0 2 1,L * *", "2026-01-02T00:00:00Z", 3),
            ["2026-01-31", "2026-02-01", "2026-02-28"]
        );
        assert_eq!(
            dates("0 0 2 L * ?", "2026-01-02T00:00:00Z", 2),
            ["2026-01-31", "2026-02-28"]
        );
    }

    #[test]
    fn lw_is_the_last_weekday_of_the_month() {
        // January 2026 ends on a Saturday, February on a Saturday, May on a Sunday, August on
        // a Monday.
        assert_eq!(
            dates("0 9 LW * *", "2026-01-01T00:00:00Z", 2),
            ["2026-01-30", "2026-02-27"]
        );
        assert_eq!(
            dates("0 9 LW * *", "2026-05-01T00:00:00Z", 4),
            ["2026-05-29", "2026-06-30", "2026-07-31", "2026-08-31"]
        );
    }

    #[test]
    fn w_is_the_nearest_weekday_without_leaving_the_month() {
        // The 15th: a Thursday in January, a Sunday in February and March (Monday 16th),
        // a Saturday in August (Friday 14th), a Sunday in November.
        assert_eq!(
            dates("0 9 15W * *", "2026-01-01T00:00:00Z", 3),
            ["2026-01-15", "2026-02-16", "2026-03-16"]
        );
        assert_eq!(
            dates("0 9 15W * *", "2026-08-01T00:00:00Z", 4),
            ["2026-08-14", "2026-09-15", "2026-10-15", "2026-11-16"]
        );
        // A Saturday the 1st (August 2026) goes forward to Monday the 3rd, not back to July;
        // a Sunday the 1st (November 2026) to Monday the 2nd.
        assert_eq!(
            dates("0 9 1W * *", "2026-07-31T00:00:00Z", 1),
            ["2026-08-03"]
        );
        assert_eq!(
            dates("0 9 1W * *", "2026-10-31T00:00:00Z", 1),
            ["2026-11-02"]
        );
        // A Sunday the 31st (May 2026) goes back to Friday the 29th, not on to June; a month
        // without a 31st (April) has no fire.
        assert_eq!(
            dates("0 9 31W * *", "2026-04-01T00:00:00Z", 2),
            ["2026-05-29", "2026-07-31"]
        );
    }

    #[test]
    fn hash_is_the_nth_weekday_of_the_month() {
        for expr in [
            "0 9 * * MON#1",
            "0 9 * * 1#1",
            "0 9 * * mon#1",
            "0 0 9 ? * 2#1",
        ] {
            assert_eq!(
                dates(expr, "2026-12-01T00:00:00Z", 3),
                ["2026-12-07", "2027-01-04", "2027-02-01"],
                "{expr}"
            );
        }
        // Months without a fifth Friday (February to April 2026) have no fire.
        assert_eq!(
            dates("0 9 * * FRI#5", "2026-01-01T00:00:00Z", 4),
            ["2026-01-30", "2026-05-29", "2026-07-31", "2026-10-30"]
        );
    }

    #[test]
    fn a_day_with_l_is_the_last_such_day_of_the_month() {
        // 5 is Friday in crontab's numbering, 6 in Quartz's.
        for expr in ["0 9 * * 5L", "0 9 * * FRIL", "0 0 9 ? * 6L"] {
            assert_eq!(
                dates(expr, "2026-11-01T00:00:00Z", 4),
                ["2026-11-27", "2026-12-25", "2027-01-29", "2027-02-26"],
                "{expr}"
            );
        }
    }

    #[test]
    fn question_mark_is_no_specific_value() {
        assert_eq!(
            dates("0 0 12 ? * MON", "2026-01-01T00:00:00Z", 2),
            ["2026-01-05", "2026-01-12"]
        );
        assert_eq!(
            dates("0 0 12 15 * ?", "2026-01-01T00:00:00Z", 2),
            ["2026-01-15", "2026-02-15"]
        );
        assert_eq!(
            dates("0 12 ? * ?", "2026-01-01T00:00:00Z", 2),
            ["2026-01-01", "2026-01-02"]
        );
        // `?` is unrestricted: with day-of-month `?` and a weekday, only the weekday decides,
        // whatever the rule.
        for rule in DayMatch::ALL {
            let spec = CronSpec::parse("0 12 ? * MON")
                .and_then(|s| s.with_day_match(*rule))
                .expect("valid");
            assert_eq!(
                fire_dates(&spec, "2026-01-01T00:00:00Z", 2),
                ["2026-01-05", "2026-01-12"],
                "{rule}"
            );
        }
    }

    #[test]
    fn either_fires_when_one_day_field_matches_and_both_when_both_do() {
        let either = CronSpec::parse("0 0 1,15 * MON").expect("valid");
        assert_eq!(either.day_match(), DayMatch::Either);
        assert_eq!(
            fire_dates(&either, "2026-01-01T00:00:00Z", 10),
            [
                "2026-01-05",
                "2026-01-12",
                "2026-01-15",
                "2026-01-19",
                "2026-01-26",
                "2026-02-01",
                "2026-02-02",
                "2026-02-09",
                "2026-02-15",
                "2026-02-16"
            ]
        );
        assert_eq!(
            fire_dates(&either, "2026-12-20T00:00:00Z", 6),
            [
                "2026-12-21",
                "2026-12-28",
                "2027-01-01",
                "2027-01-04",
                "2027-01-11",
                "2027-01-15"
            ]
        );
        let both = either.with_day_match(DayMatch::Both).expect("fires");
        assert_eq!(
            fire_dates(&both, "2026-01-01T00:00:00Z", 6),
            [
                "2026-06-01",
                "2026-06-15",
                "2027-02-01",
                "2027-02-15",
                "2027-03-01",
                "2027-03-15"
            ]
        );
        // The same holds for a 6-field expression that restricts both day fields.
        let six = CronSpec::parse("0 0 0 1,15 * 2").expect("valid");
        assert_eq!(
            fire_dates(&six, "2026-01-01T00:00:00Z", 3),
            ["2026-01-05", "2026-01-12", "2026-01-15"]
        );
        let six = six.with_day_match(DayMatch::Both).expect("fires");
        assert_eq!(
            fire_dates(&six, "2026-01-01T00:00:00Z", 2),
            ["2026-06-01", "2026-06-15"]
        );
    }

    #[test]
    fn a_field_that_begins_with_a_star_leaves_the_other_to_decide() {
        // crontab's rule: `*/2` begins with `*`, so it is not "restricted", and with a weekday
        // a day must match both (odd Mondays), whatever day_match says.
        for rule in DayMatch::ALL {
            let spec = CronSpec::parse("0 0 */2 * MON")
                .and_then(|s| s.with_day_match(*rule))
                .expect("valid");
            assert_eq!(
                fire_dates(&spec, "2026-01-01T00:00:00Z", 3),
                ["2026-01-05", "2026-01-19", "2026-02-09"],
                "{rule}"
            );
        }
    }

    #[test]
    fn both_refuses_an_expression_that_no_day_can_match() {
        let spec = CronSpec::parse("0 0 30 2 MON").expect("either: the Mondays of February");
        let err = spec
            .with_day_match(DayMatch::Both)
            .expect_err("no Monday is February's 30th");
        assert!(
            err.0.contains("`0 0 30 2 MON`") && err.0.contains("day_match `both`"),
            "{err}"
        );
        assert!(CronSpec::parse("0 0 30 2 *").is_err());
    }

    #[test]
    fn errors_quote_the_expression_as_typed_and_the_bounds() {
        let cases = [
            ("61  * * * *", "minute must be 0 to 59, not `61`"),
            ("0 24 * * *", "hour must be 0 to 23, not `24`"),
            ("60 0 0 * * *", "second must be 0 to 59, not `60`"),
            ("0 0 * 13 *", "month must be 1 to 12"),
            ("0 0 0 1 1 * 2200", "year must be 1970 to 2100, not `2200`"),
            ("*/60 * * * *", "minute step must be 1 to 59, not `60`"),
            ("0 0 32 * *", "day-of-month must be 1 to 31"),
            (
                "0 0 * * 8",
                "day-of-week must be 0 to 7 (0 and 7 are Sunday)",
            ),
            ("0 0 0 * * 0", "day-of-week must be 1 to 7 (1 is Sunday"),
            (
                "0 0 * * FRI-MON",
                "day-of-week range `FRI-MON` runs backwards",
            ),
            ("0 9 32W * *", "day-of-month must be 1 to 31"),
            ("0 9 1-5W * *", "W follows a single day"),
            ("0 9 * * MON#6", "the number after # must be 1 to 5"),
            ("0 9 * * L", "cannot be `L` alone"),
            ("0 9 5L * *", "`5L` and `MON#1` belong to day-of-week"),
            ("0 9 * * 15W", "W belongs to day-of-month"),
            ("5L * * * *", "minute cannot use `5L`"),
            ("0 ? * * *", "hour cannot be `?`"),
            ("0 9 * * MON,,FRI", "day-of-week has an empty list item"),
            (
                "0 0 * jnu *",
                "month must be 1 to 12 or a name such as JAN, not `jnu`",
            ),
        ];
        for (expr, detail) in cases {
            let err = CronSpec::parse(expr).expect_err(expr).0;
            let typed = expr.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                err.starts_with(&format!("`{typed}` is not a valid cron expression: ")),
                "{expr}: {err}"
            );
            // The position (`(field 2 of 5)`) is checked below; here, the words around it.
            let plain = match (err.find(" (field "), err.find(" of ")) {
                (Some(at), Some(_)) => {
                    let end = err[at..].find(')').map_or(at, |e| at + e + 1);
                    format!("{}{}", &err[..at], &err[end..])
                }
                _ => err.clone(),
            };
            assert!(plain.contains(detail), "{expr}: {err}");
        }
        // Never the 6-field form netcron hands to the `cron` crate; the field by name and
        // position as typed.
        let err = CronSpec::parse("61 * * * *").expect_err("61").0;
        assert!(!err.contains("0 61"), "{err}");
        assert_eq!(
            err,
            "`61 * * * *` is not a valid cron expression: minute (field 1 of 5) must be 0 to \
             59, not `61`"
        );
        let err = CronSpec::parse("0 0 25 * * *").expect_err("25").0;
        assert!(err.contains("hour (field 3 of 6) must be 0 to 23"), "{err}");
        let err = CronSpec::parse("0 0 * * 8").expect_err("8").0;
        assert!(err.contains("day-of-week (field 5 of 5) must be"), "{err}");
        let err = CronSpec::parse("@fortnightly").expect_err("unknown").0;
        assert!(
            err.contains("`@fortnightly`") && err.contains("@hourly"),
            "{err}"
        );
    }

    #[test]
    fn shorthands_keep_their_meaning() {
        let cases = [
            ("@yearly", ["2027-01-01", "2028-01-01"]),
            ("@annually", ["2027-01-01", "2028-01-01"]),
            ("@monthly", ["2026-12-01", "2027-01-01"]),
            ("@weekly", ["2026-11-22", "2026-11-29"]),
            ("@daily", ["2026-11-21", "2026-11-22"]),
            ("@midnight", ["2026-11-21", "2026-11-22"]),
        ];
        for (expr, expected) in cases {
            assert_eq!(dates(expr, "2026-11-20T12:00:00Z", 2), expected, "{expr}");
        }
        let hourly = CronSpec::parse("@hourly").expect("valid");
        assert!(hourly.hourly());
    }

    #[test]
    fn fire_times_follow_the_zone() {
        let spec = CronSpec::parse("0 9 * * *").expect("valid");
        let tz: Tz = parse_timezone("Europe/Berlin").expect("zone");
        let next = spec
            .next_after(at("2026-07-01T00:00:00Z"), tz)
            .expect("fires");
        assert_eq!(
            next,
            tz.with_ymd_and_hms(2026, 7, 1, 9, 0, 0)
                .unwrap()
                .with_timezone(&Utc)
        );
        assert!(parse_timezone("Mars/Olympus").is_err());
    }

    #[test]
    fn hosts_are_ip_or_dns_names() {
        assert_eq!(
            Host::parse("Core-SW1.Example.net").expect("valid").as_str(),
            "core-sw1.example.net"
        );
        assert!(Host::parse("10.0.0.1").is_ok());
        assert!(Host::parse("::1").is_ok());
        for bad in [
            "",
            "bad host",
            "-x.example",
            "a..b",
            "999.1.1.1",
            "x;rm -rf",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad}");
        }
        assert!(parse_port(0).is_err() && parse_port(70000).is_err() && parse_port(22).is_ok());
    }

    #[test]
    fn enums_round_trip_their_text() {
        for p in Platform::ALL {
            assert_eq!(p.as_str().parse::<Platform>().expect("round trip"), *p);
        }
        assert!(
            "ios"
                .parse::<Platform>()
                .expect_err("unknown")
                .0
                .contains("cisco_ios")
        );
    }

    /// (zone, spring-forward instant, fall-back instant) for 2026 and 2027.
    const TRANSITIONS: &[(&str, &str, &str)] = &[
        (
            "Europe/Berlin",
            "2026-03-29T01:00:00Z",
            "2026-10-25T01:00:00Z",
        ),
        (
            "Europe/Berlin",
            "2027-03-28T01:00:00Z",
            "2027-10-31T01:00:00Z",
        ),
        (
            "America/New_York",
            "2026-03-08T07:00:00Z",
            "2026-11-01T06:00:00Z",
        ),
        (
            "America/New_York",
            "2027-03-14T07:00:00Z",
            "2027-11-07T06:00:00Z",
        ),
    ];

    fn fires(expr: &str, tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let spec = CronSpec::parse(expr).expect("valid");
        let mut out = Vec::new();
        let mut cursor = from;
        while let Some(next) = spec.next_after(cursor, tz) {
            if next > to {
                break;
            }
            assert!(next > cursor, "{expr}: {next} is not after {cursor}");
            out.push(next);
            cursor = next;
        }
        out
    }

    #[test]
    fn every_second_follows_real_time_across_both_transitions() {
        for (zone, spring, fall) in TRANSITIONS {
            let tz = parse_timezone(zone).expect("zone");
            for edge in [at(spring), at(fall)] {
                let from = edge - chrono::Duration::hours(2);
                let to = edge + chrono::Duration::hours(2);
                let got = fires("* * * * * *", tz, from, to);
                assert_eq!(got.len(), 4 * 3600, "{zone} around {edge}");
                assert!(
                    got.windows(2)
                        .all(|w| w[1] - w[0] == chrono::Duration::seconds(1))
                );
            }
        }
    }

    #[test]
    fn hourly_schedules_fire_once_per_real_hour() {
        for (zone, spring, fall) in TRANSITIONS {
            let tz = parse_timezone(zone).expect("zone");
            for edge in [at(spring), at(fall)] {
                let from = edge - chrono::Duration::minutes(150);
                let to = edge + chrono::Duration::minutes(150);
                let got = fires("0 * * * *", tz, from, to);
                // The transitions fall on whole hours in both zones, so every real hour has
                // exactly one fire at minute 0 of UTC too.
                assert_eq!(got.len(), 5, "{zone} around {edge}: {got:?}");
                assert!(got.iter().all(|t| t.minute() == 0 && t.second() == 0));
                let half = fires("*/30 * * * *", tz, from, to);
                assert_eq!(half.len(), 10, "{zone} around {edge}: {half:?}");
            }
        }
    }

    #[test]
    fn a_time_in_the_spring_gap_runs_once_right_after_the_gap() {
        for (zone, spring, _) in TRANSITIONS {
            let tz = parse_timezone(zone).expect("zone");
            let edge = at(spring);
            let day = |d: i64| edge + chrono::Duration::days(d);
            // 02:30 does not exist on the transition night: it runs at 03:00 local, which is
            // the transition instant itself.
            let got = fires(
                "30 2 * * *",
                tz,
                edge - chrono::Duration::hours(12),
                day(1) + chrono::Duration::hours(12),
            );
            assert_eq!(got.len(), 2, "{zone}: {got:?}");
            assert_eq!(got[0], edge, "{zone}");
            assert_eq!(got[1].with_timezone(&tz).hour(), 2, "{zone}");
            // Several fire times inside the gap collapse into that one instant.
            let many = fires(
                "0,15,30,45 2 * * *",
                tz,
                day(-1) + chrono::Duration::hours(12),
                day(0) + chrono::Duration::hours(1),
            );
            assert_eq!(many, vec![edge], "{zone}");
        }
    }

    #[test]
    fn a_time_in_the_repeated_hour_runs_once() {
        for (zone, _, fall) in TRANSITIONS {
            let tz = parse_timezone(zone).expect("zone");
            let edge = at(fall);
            // The repeated hour is 02:xx in Berlin and 01:xx in New York.
            let hour = (edge - chrono::Duration::minutes(30))
                .with_timezone(&tz)
                .hour();
            let expr = format!("30 {hour} * * *");
            let from = edge - chrono::Duration::hours(12);
            let got = fires(&expr, tz, from, edge + chrono::Duration::hours(36));
            assert_eq!(got.len(), 2, "{zone}: {got:?}");
            // The first occurrence, half an hour before the clocks go back.
            assert!(
                got.contains(&(edge - chrono::Duration::minutes(30))),
                "{zone}: {got:?}"
            );
            assert!(
                !got.contains(&(edge + chrono::Duration::minutes(30))),
                "{zone}: {got:?}"
            );
        }
    }
}
