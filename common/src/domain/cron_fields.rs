//! The fields of a cron expression as netcron reads them.
//!
//! netcron evaluates the two day fields itself and leaves seconds, minutes, hours, months and
//! years to the `cron` crate (see [`super::CronSpec`] for why). This module parses the day
//! fields — lists, ranges, steps and names as in crontab, plus Quartz's `L`, `LW`, `W`, `#`,
//! `nL` and `?` — into a [`Days`] predicate, and explains what is wrong with a field the
//! `cron` crate refused, in the words and bounds of the expression the user typed.

use chrono::{Datelike, NaiveDate, Weekday};

use super::DayMatch;

/// How a day-of-week field numbers the days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Numbering {
    /// Crontab (5 fields): `0-7`, where 0 and 7 are Sunday.
    Posix,
    /// Quartz (6 and 7 fields, the `cron` crate's): `1-7`, where 1 is Sunday.
    Quartz,
}

/// What a field accepts: its name in messages, its bounds and its names.
pub(super) struct Field {
    pub name: &'static str,
    min: u32,
    max: u32,
    /// Where `*` and `n/step` end. Equal to `max` except for crontab's day-of-week, whose 7 is
    /// a second name for Sunday: `*/2` and `1/2` stop at Saturday (6), as they always did.
    open_end: u32,
    /// The largest step; `None`: any step of 1 or more.
    max_step: Option<u32>,
    names: &'static [(&'static str, u32)],
    /// How the bounds are said in messages.
    bounds: &'static str,
}

const MONTH_NAMES: &[(&str, u32)] = &[
    ("jan", 1),
    ("january", 1),
    ("feb", 2),
    ("february", 2),
    ("mar", 3),
    ("march", 3),
    ("apr", 4),
    ("april", 4),
    ("may", 5),
    ("jun", 6),
    ("june", 6),
    ("jul", 7),
    ("july", 7),
    ("aug", 8),
    ("august", 8),
    ("sep", 9),
    ("september", 9),
    ("oct", 10),
    ("october", 10),
    ("nov", 11),
    ("november", 11),
    ("dec", 12),
    ("december", 12),
];

/// Day names (those the `cron` crate knows) as days from Sunday.
const DAY_NAMES: &[(&str, u32)] = &[
    ("sun", 0),
    ("sunday", 0),
    ("mon", 1),
    ("monday", 1),
    ("tue", 2),
    ("tues", 2),
    ("tuesday", 2),
    ("wed", 3),
    ("wednesday", 3),
    ("thu", 4),
    ("thurs", 4),
    ("thursday", 4),
    ("fri", 5),
    ("friday", 5),
    ("sat", 6),
    ("saturday", 6),
];

// The step bounds of the fields the `cron` crate evaluates are its own (a step up to the
// field's largest value), so these messages describe exactly what it refuses.
pub(super) const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    open_end: 59,
    max_step: Some(59),
    names: &[],
    bounds: "0 to 59",
};
pub(super) const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    open_end: 59,
    max_step: Some(59),
    names: &[],
    bounds: "0 to 59",
};
pub(super) const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    open_end: 23,
    max_step: Some(23),
    names: &[],
    bounds: "0 to 23",
};
pub(super) const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    open_end: 12,
    max_step: Some(12),
    names: MONTH_NAMES,
    bounds: "1 to 12 or a name such as JAN",
};
pub(super) const YEAR: Field = Field {
    name: "year",
    min: 1970,
    max: 2100,
    open_end: 2100,
    max_step: Some(2100),
    names: &[],
    bounds: "1970 to 2100",
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    open_end: 31,
    max_step: None,
    names: &[],
    bounds: "1 to 31, L (the last day), LW (the last weekday) or a day followed by W \
             (the nearest weekday, e.g. 15W)",
};
/// Day names are stored here with crontab's numbers (`sun` = 0) and shifted for Quartz.
const DAY_OF_WEEK_POSIX: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    open_end: 6,
    max_step: None,
    names: DAY_NAMES,
    bounds: "0 to 7 (0 and 7 are Sunday) or a name such as MON",
};
const DAY_OF_WEEK_QUARTZ: Field = Field {
    name: "day-of-week",
    min: 1,
    max: 7,
    open_end: 7,
    max_step: None,
    names: DAY_NAMES,
    bounds: "1 to 7 (1 is Sunday when seconds come first, as in Quartz) or a name such as MON",
};

impl Field {
    fn value(&self, text: &str, numbering: Option<Numbering>) -> Result<u32, String> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse::<u32>()
                .ok()
                .filter(|v| (self.min..=self.max).contains(v))
                .ok_or_else(|| format!("{} must be {}, not `{text}`", self.name, self.bounds));
        }
        let lower = text.to_ascii_lowercase();
        match self.names.iter().find(|(name, _)| *name == lower) {
            // Day names are kept as days from Sunday; Quartz counts from 1.
            Some((_, v)) if numbering == Some(Numbering::Quartz) => Ok(v + 1),
            Some((_, v)) => Ok(*v),
            None if text.is_empty() => Err(format!("{} has an empty value", self.name)),
            None => Err(format!(
                "{} must be {}, not `{text}`",
                self.name, self.bounds
            )),
        }
    }

    /// The values of one list item without `L`, `W` or `#`: `*`, `?`, `n`, `a-b`, each
    /// optionally with `/step`.
    fn item(&self, item: &str, numbering: Option<Numbering>) -> Result<Vec<u32>, String> {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => {
                let bounds = match self.max_step {
                    Some(max) => format!("1 to {max}"),
                    None => "1 or more".to_owned(),
                };
                let step = step
                    .parse::<u32>()
                    .ok()
                    .filter(|s| *s >= 1 && self.max_step.is_none_or(|max| *s <= max))
                    .ok_or_else(|| format!("{} step must be {bounds}, not `{step}`", self.name))?;
                (base, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = match base {
            "*" | "?" => (self.min, self.open_end),
            _ => match base.split_once('-') {
                Some((a, z)) => {
                    let (lo, hi) = (self.value(a, numbering)?, self.value(z, numbering)?);
                    if lo > hi {
                        return Err(format!("{} range `{base}` runs backwards", self.name));
                    }
                    (lo, hi)
                }
                None => {
                    let v = self.value(base, numbering)?;
                    (v, if step.is_some() { self.open_end } else { v })
                }
            },
        };
        if lo > hi {
            return Err(format!(
                "{} `{item}` starts after {}, where its steps end",
                self.name, self.open_end
            ));
        }
        Ok((lo..=hi)
            .step_by(step.unwrap_or(1) as usize)
            .collect::<Vec<_>>())
    }

    /// Checks a field the `cron` crate evaluates, for the message when it refused it.
    pub(super) fn check(&self, text: &str) -> Result<(), String> {
        for item in text.split(',') {
            if item.is_empty() {
                return Err(format!("{} has an empty list item", self.name));
            }
            if item.contains('?') {
                return Err(format!(
                    "{} cannot be `?`; `?` (no specific value) is for day-of-month or \
                     day-of-week",
                    self.name
                ));
            }
            if item.contains(['L', 'l', 'W', 'w', '#']) && !self.names_cover(item) {
                return Err(format!(
                    "{} cannot use `{item}`: `L`, `W` and `#` belong to day-of-month \
                     (`L`, `LW`, `15W`) and day-of-week (`5L`, `MON#1`)",
                    self.name
                ));
            }
            self.item(item, None)?;
        }
        Ok(())
    }

    /// Whether every letter run of `item` is one of the field's names (`jul`, `aug-dec`).
    fn names_cover(&self, item: &str) -> bool {
        !self.names.is_empty()
            && item
                .split(|c: char| !c.is_ascii_alphabetic())
                .filter(|w| !w.is_empty())
                .all(|w| {
                    let w = w.to_ascii_lowercase();
                    self.names.iter().any(|(n, _)| *n == w)
                })
    }
}

/// The day fields of an expression, as a predicate on dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Days {
    dom: DayOfMonth,
    dow: DayOfWeek,
    /// Whether a field is restricted in crontab's sense: it does not begin with `*` (nor is it
    /// `?`). Only when both are does [`DayMatch`] choose between "or" and "and".
    dom_restricted: bool,
    dow_restricted: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DayOfMonth {
    /// Bit `d` for day `d` of the month.
    days: u32,
    last: bool,
    last_weekday: bool,
    /// Bit `d` for `dW`, the weekday nearest to day `d`.
    nearest_weekday: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DayOfWeek {
    /// Bit `w` for the weekday `w` days after Sunday.
    days: u8,
    /// `(weekday, n)` for the `n`th such weekday of the month (`MON#1`).
    nth: Vec<(u8, u8)>,
    /// Bit `w` for the last such weekday of the month (`5L`).
    last: u8,
}

impl Days {
    /// Parses the day-of-month and day-of-week fields.
    pub(super) fn parse(dom: &str, dow: &str, numbering: Numbering) -> Result<Self, String> {
        let restricted = |f: &str| !(f.starts_with('*') || f.starts_with('?'));
        Ok(Self {
            dom: DayOfMonth::parse(dom)?,
            dow: DayOfWeek::parse(dow, numbering)?,
            dom_restricted: restricted(dom),
            dow_restricted: restricted(dow),
        })
    }

    /// Whether both fields are restricted, so that [`DayMatch`] decides.
    pub(super) fn both_restricted(&self) -> bool {
        self.dom_restricted && self.dow_restricted
    }

    /// Whether `date` is a day to fire on.
    pub(super) fn matches(&self, date: NaiveDate, rule: DayMatch) -> bool {
        let dom = || self.dom.matches(date);
        let dow = || self.dow.matches(date);
        if self.both_restricted() && rule == DayMatch::Either {
            dom() || dow()
        } else {
            // An unrestricted field matches every day, unless it is a step such as `*/2`,
            // which still filters (crontab's rule: only the first character decides).
            dom() && dow()
        }
    }
}

fn last_day_of_month(date: NaiveDate) -> u32 {
    let (y, m) = (date.year(), date.month());
    let first_of_next = if m == 12 {
        NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(y, m + 1, 1)
    };
    first_of_next
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day())
}

/// The weekday nearest to `day` in `date`'s month, never leaving the month (Quartz's `W`):
/// a Saturday moves to the Friday before, or to the Monday after when it is the 1st; a Sunday
/// to the Monday after, or to the Friday before when it is the last day. `None` when the month
/// has no such day (31W in April).
fn nearest_weekday(date: NaiveDate, day: u32) -> Option<u32> {
    let last = last_day_of_month(date);
    let target = date.with_day(day)?;
    Some(match target.weekday() {
        Weekday::Sat if day == 1 => 3,
        Weekday::Sat => day - 1,
        Weekday::Sun if day == last => day - 2,
        Weekday::Sun => day + 1,
        _ => day,
    })
}

impl DayOfMonth {
    fn parse(field: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for item in field.split(',') {
            if item.eq_ignore_ascii_case("L") {
                out.last = true;
            } else if item.eq_ignore_ascii_case("LW") {
                out.last_weekday = true;
            } else if let Some(day) = item.strip_suffix(['W', 'w']) {
                if !day.bytes().all(|b| b.is_ascii_digit()) || day.is_empty() {
                    return Err(format!(
                        "day-of-month `{item}`: W follows a single day, as in 15W (the \
                         nearest weekday to the 15th) or LW (the last weekday)"
                    ));
                }
                let day = DAY_OF_MONTH.value(day, None)?;
                out.nearest_weekday |= 1 << day;
            } else if item.contains(['L', 'l', '#']) {
                return Err(format!(
                    "day-of-month cannot be `{item}`; it takes L (the last day), LW or a day \
                     followed by W; `5L` and `MON#1` belong to day-of-week"
                ));
            } else if item.is_empty() {
                return Err("day-of-month has an empty list item".to_owned());
            } else {
                for day in DAY_OF_MONTH.item(item, None)? {
                    out.days |= 1 << day;
                }
            }
        }
        Ok(out)
    }

    fn matches(&self, date: NaiveDate) -> bool {
        let day = date.day();
        if self.days & (1 << day) != 0 {
            return true;
        }
        if self.last && day == last_day_of_month(date) {
            return true;
        }
        if self.last_weekday {
            let last = last_day_of_month(date);
            if nearest_weekday(date, last) == Some(day) {
                return true;
            }
        }
        self.nearest_weekday != 0
            && (1..=31)
                .filter(|d| self.nearest_weekday & (1 << d) != 0)
                .any(|d| nearest_weekday(date, d) == Some(day))
    }
}

impl DayOfWeek {
    fn parse(field: &str, numbering: Numbering) -> Result<Self, String> {
        let spec = match numbering {
            Numbering::Posix => &DAY_OF_WEEK_POSIX,
            Numbering::Quartz => &DAY_OF_WEEK_QUARTZ,
        };
        // Days from Sunday, 0 to 6, from a value in the field's numbering.
        let weekday = |v: u32| -> u8 {
            let from_sunday = match numbering {
                Numbering::Posix => v % 7,
                Numbering::Quartz => v - 1,
            };
            u8::try_from(from_sunday).unwrap_or(0)
        };
        let single = |text: &str, item: &str, what: &str| -> Result<u8, String> {
            if text.contains(['-', '/', '*', '?']) || text.is_empty() {
                return Err(format!(
                    "day-of-week `{item}`: {what} follows a single day, as in {}",
                    if what == "#" { "MON#1" } else { "5L or FRIL" }
                ));
            }
            spec.value(text, Some(numbering)).map(weekday)
        };
        let mut out = Self::default();
        for item in field.split(',') {
            if item.is_empty() {
                return Err("day-of-week has an empty list item".to_owned());
            }
            if let Some((day, nth)) = item.split_once('#') {
                let day = single(day, item, "#")?;
                let nth = nth
                    .parse::<u8>()
                    .ok()
                    .filter(|n| (1..=5).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "day-of-week `{item}`: the number after # must be 1 to 5 (the \
                             first to the fifth such day of the month)"
                        )
                    })?;
                out.nth.push((day, nth));
            } else if item.eq_ignore_ascii_case("L") {
                return Err(
                    "day-of-week cannot be `L` alone; write the day it follows, as in 5L or \
                     FRIL (the last Friday of the month), or L in day-of-month (its last day)"
                        .to_owned(),
                );
            } else if let Some(day) = item.strip_suffix(['L', 'l']) {
                out.last |= 1 << single(day, item, "L")?;
            } else if item.contains(['W', 'w']) && !spec.names_cover(item) {
                return Err(format!(
                    "day-of-week cannot be `{item}`; W belongs to day-of-month (15W, LW)"
                ));
            } else {
                for v in spec.item(item, Some(numbering))? {
                    out.days |= 1 << weekday(v);
                }
            }
        }
        Ok(out)
    }

    fn matches(&self, date: NaiveDate) -> bool {
        let weekday = u8::try_from(date.weekday().num_days_from_sunday()).unwrap_or(0);
        if self.days & (1 << weekday) != 0 {
            return true;
        }
        let day = date.day();
        if self.last & (1 << weekday) != 0 && day + 7 > last_day_of_month(date) {
            return true;
        }
        let nth = u8::try_from((day - 1) / 7 + 1).unwrap_or(0);
        self.nth.iter().any(|&(w, n)| w == weekday && n == nth)
    }
}
