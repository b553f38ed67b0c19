//! Property tests of [`CronSpec`]'s day rules: for any mix of day items, the next fire time is
//! the first day an independent, day-by-day reading of the same items accepts — so the search
//! that skips refused days never skips a day it should fire on — and every refusal quotes the
//! expression as typed.
//!
//! A failing case is saved under `common/proptest-regressions/` (commit it).

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone as _, Utc, Weekday};
use chrono_tz::Tz;
use proptest::prelude::*;

use super::{CronSpec, DayMatch};

/// Day-of-month items that restrict the field.
const DOM_ITEMS: &[&str] = &[
    "1", "15", "31", "10-20", "L", "LW", "1W", "15W", "31W", "29",
];
/// Day-of-week items that restrict the field (crontab numbering).
const DOW_ITEMS: &[&str] = &[
    "MON", "5", "0", "7", "1-5", "MON#1", "FRI#5", "SUN#2", "5L", "0L", "sat",
];
/// Items that leave a field unrestricted (they begin with `*` or are `?`).
const OPEN_ITEMS: &[&str] = &["*", "?", "*/2"];

fn last_day(date: NaiveDate) -> NaiveDate {
    let mut d = date;
    while let Some(next) = d.succ_opt().filter(|n| n.month() == date.month()) {
        d = next;
    }
    d
}

fn is_weekend(d: NaiveDate) -> bool {
    matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
}

/// One day-of-month item, read the slow way.
fn dom_item(item: &str, date: NaiveDate) -> bool {
    let day = date.day();
    match item {
        "*" | "?" => true,
        "*/2" => day % 2 == 1,
        "L" => date == last_day(date),
        "LW" => {
            let mut d = last_day(date);
            while is_weekend(d) {
                d = d.pred_opt().expect("a date");
            }
            d == date
        }
        "10-20" => (10..=20).contains(&day),
        w if w.ends_with('W') => {
            let n: u32 = w.trim_end_matches('W').parse().expect("a day");
            if n > last_day(date).day() {
                return false;
            }
            // The weekday of the month closest to day n.
            let nearest = (1..=last_day(date).day())
                .filter_map(|d| date.with_day(d))
                .filter(|d| !is_weekend(*d))
                .min_by_key(|d| d.day().abs_diff(n))
                .expect("a weekday");
            nearest == date
        }
        n => n.parse::<u32>().expect("a day") == day,
    }
}

/// One day-of-week item (crontab numbering), read the slow way.
fn dow_item(item: &str, date: NaiveDate) -> bool {
    let weekday = date.weekday().num_days_from_sunday();
    let named = |name: &str| match name.to_ascii_lowercase().as_str() {
        "sun" | "0" | "7" => 0,
        "mon" | "1" => 1,
        "fri" | "5" => 5,
        "sat" => 6,
        other => panic!("no day {other}"),
    };
    match item {
        "*" | "?" => true,
        "*/2" => weekday.is_multiple_of(2),
        "1-5" => (1..=5).contains(&weekday),
        i if i.contains('#') => {
            let (day, n) = i.split_once('#').expect("#");
            let n: usize = n.parse().expect("n");
            let same: Vec<NaiveDate> = (1..=date.day())
                .filter_map(|d| date.with_day(d))
                .filter(|d| d.weekday() == date.weekday())
                .collect();
            weekday == named(day) && same.len() == n
        }
        i if i.ends_with('L') => {
            weekday == named(i.trim_end_matches('L'))
                && (date + Duration::days(7)).month() != date.month()
        }
        i => weekday == named(i),
    }
}

fn field(open: bool, open_item: usize, items: &[usize], pool: &[&str]) -> String {
    if open {
        OPEN_ITEMS[open_item].to_owned()
    } else {
        items.iter().map(|i| pool[*i]).collect::<Vec<_>>().join(",")
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_next_fire_is_the_first_day_the_items_accept(
        dom_open in any::<bool>(),
        dow_open in any::<bool>(),
        dom_open_item in 0..OPEN_ITEMS.len(),
        dow_open_item in 0..OPEN_ITEMS.len(),
        dom_items in prop::collection::vec(0..DOM_ITEMS.len(), 1..3),
        dow_items in prop::collection::vec(0..DOW_ITEMS.len(), 1..3),
        both in any::<bool>(),
        start_minutes in 0i64..(5 * 366 * 24 * 60),
    ) {
        let dom = field(dom_open, dom_open_item, &dom_items, DOM_ITEMS);
        let dow = field(dow_open, dow_open_item, &dow_items, DOW_ITEMS);
        let rule = if both { DayMatch::Both } else { DayMatch::Either };
        let expr = format!("0 9 {dom} * {dow}");
        let after = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("a time")
            + Duration::minutes(start_minutes);
        let restricted = |f: &str| !(f.starts_with('*') || f.starts_with('?'));
        let accepts = |date: NaiveDate| {
            let d = dom.split(',').any(|i| dom_item(i, date));
            let w = dow.split(',').any(|i| dow_item(i, date));
            if restricted(&dom) && restricted(&dow) && rule == DayMatch::Either {
                d || w
            } else {
                d && w
            }
        };
        let expected: Option<DateTime<Utc>> = (0..3000)
            .map(|n| after.date_naive() + Duration::days(n))
            .filter(|date| accepts(*date))
            .filter_map(|date| date.and_hms_opt(9, 0, 0))
            .map(|t| Utc.from_utc_datetime(&t))
            .find(|t| *t > after);
        match CronSpec::parse(&expr).and_then(|s| s.with_day_match(rule)) {
            Ok(spec) => prop_assert_eq!(
                spec.next_after(after, Tz::UTC),
                expected,
                "{} ({}) after {}",
                expr,
                rule,
                after
            ),
            // Only `both` may find no day at all (`0 9 L * MON#1`).
            Err(e) => prop_assert!(
                rule == DayMatch::Both && expected.is_none(),
                "{} ({}) refused: {}",
                expr,
                rule,
                e
            ),
        }
    }

    #[test]
    fn refusals_quote_the_expression_as_typed(
        fields in prop::collection::vec(
            prop::sample::select(vec![
                "*", "?", "0", "7", "8", "60", "L", "LW", "W", "15W", "5L", "L5", "MON#1", "MON#9",
                "#", "*/0", "1-", "-1", "5-1", "JAN", "mon", "x", "", ",", "1,,2", "@daily",
            ]),
            1..8,
        ),
    ) {
        let typed = fields.join("  ");
        let source = typed.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Err(e) = CronSpec::parse(&typed)
            && !source.is_empty()
        {
            prop_assert!(e.0.starts_with(&format!("`{source}`")), "{}: {}", typed, e);
        }
    }
}
