//! Business-hours calendars: weekly opening ranges per weekday, holidays
//! (closed all day, or special hours that replace the weekly ones), in one
//! IANA time zone.
//!
//! Everything is evaluated on the wall clock of the calendar's zone, which is
//! what makes it DST-correct: "08:00-18:00" opens at 08:00 local whether
//! that is 12:00 or 13:00 UTC, and on the night of a change a range simply
//! lasts an hour less or more in real time.
//!
//! A range whose end is not after its start ("22:00-06:00") crosses
//! midnight: it belongs to the day it starts on and runs into the next
//! morning. So a holiday closes the ranges that *start* on it; the tail of
//! the previous evening's overnight range still applies. "24:00" is accepted
//! as an end ("00:00-24:00" is the whole day).

use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use std::collections::BTreeMap;

/// Minutes since local midnight, `start` in 0..1440, `end` in 1..=1440.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start: u16,
    pub end: u16,
}

impl TimeRange {
    /// `"HH:MM-HH:MM"`.
    pub fn parse(s: &str) -> Result<TimeRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("time range \"{s}\" is not HH:MM-HH:MM"))?;
        let start = parse_hhmm(a.trim(), false)?;
        let end = parse_hhmm(b.trim(), true)?;
        if start == end {
            return Err(format!("time range \"{s}\" is empty (start equals end)"));
        }
        if start == 1440 {
            return Err(format!("time range \"{s}\": 24:00 is only valid as an end"));
        }
        Ok(TimeRange { start, end })
    }

    /// Runs past midnight into the next day.
    pub fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }

    /// Open at `minute` of the day the range starts on.
    fn covers_start_day(&self, minute: u16) -> bool {
        if self.crosses_midnight() {
            minute >= self.start
        } else {
            self.start <= minute && minute < self.end
        }
    }

    /// Open at `minute` of the day after the range starts.
    fn covers_next_day(&self, minute: u16) -> bool {
        self.crosses_midnight() && minute < self.end
    }
}

fn parse_hhmm(s: &str, allow_24: bool) -> Result<u16, String> {
    let bad = || format!("\"{s}\" is not a time of day (HH:MM)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && (m != 0 || !allow_24)) {
        return Err(format!(
            "\"{s}\" is out of range (00:00 to 23:59, or 24:00 as an end)"
        ));
    }
    Ok(h * 60 + m)
}

/// `"08:00-12:00, 13:00-18:00"` or `"closed"`.
pub fn parse_ranges(s: &str) -> Result<Vec<TimeRange>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("closed") {
        return Ok(Vec::new());
    }
    s.split(',').map(|r| TimeRange::parse(r.trim())).collect()
}

/// `"mon-fri"`, `"sat"`, `"mon,wed,fri"`, `"fri-mon"` (wraps), `"daily"`.
pub fn parse_days(s: &str) -> Result<Vec<Weekday>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.eq_ignore_ascii_case("daily") {
            out.extend((0..7).map(weekday_from_index));
            continue;
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let a = parse_day(a.trim())?.to_monday_zero_offset();
                let b = parse_day(b.trim())?.to_monday_zero_offset();
                let mut i = a;
                loop {
                    out.push(weekday_from_index(i));
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => out.push(parse_day(part)?),
        }
    }
    Ok(out)
}

fn parse_day(s: &str) -> Result<Weekday, String> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let lower = s.to_ascii_lowercase();
    NAMES
        .iter()
        .position(|n| lower == *n || (lower.len() > 3 && full_name(n).starts_with(&lower)))
        .map(|i| weekday_from_index(i as i8))
        .ok_or_else(|| format!("\"{s}\" is not a weekday (mon, tue, wed, thu, fri, sat, sun)"))
}

fn full_name(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

fn weekday_from_index(i: i8) -> Weekday {
    Weekday::from_monday_zero_offset(i).unwrap_or(Weekday::Monday)
}

/// A date given as `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<Date, String> {
    s.trim()
        .parse::<Date>()
        .map_err(|_| format!("\"{s}\" is not a date (YYYY-MM-DD)"))
}

/// An IANA zone name from the bundled database.
pub fn parse_time_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| {
        format!("unknown time zone \"{name}\" (an IANA name such as America/New_York)")
    })
}

#[derive(Debug, Clone)]
pub struct Calendar {
    zone_name: String,
    zone: TimeZone,
    /// Indexed Monday = 0.
    weekly: [Vec<TimeRange>; 7],
    /// Empty: closed all day.
    holidays: BTreeMap<Date, Vec<TimeRange>>,
}

impl Calendar {
    pub fn new(time_zone: &str) -> Result<Calendar, String> {
        Ok(Calendar {
            zone: parse_time_zone(time_zone)?,
            zone_name: time_zone.to_string(),
            weekly: Default::default(),
            holidays: BTreeMap::new(),
        })
    }

    /// Adds opening ranges on `day` (in addition to those already there).
    pub fn open_on(&mut self, day: Weekday, ranges: &[TimeRange]) {
        self.weekly[day.to_monday_zero_offset() as usize].extend_from_slice(ranges);
    }

    /// A holiday: closed all day when `ranges` is empty, else these hours
    /// replace the weekly ones for that date.
    pub fn holiday(&mut self, date: Date, ranges: Vec<TimeRange>) {
        self.holidays.insert(date, ranges);
    }

    pub fn time_zone_name(&self) -> &str {
        &self.zone_name
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.zone
    }

    fn ranges_on(&self, date: Date) -> &[TimeRange] {
        match self.holidays.get(&date) {
            Some(special) => special,
            None => &self.weekly[date.weekday().to_monday_zero_offset() as usize],
        }
    }

    pub fn is_open(&self, at: Timestamp) -> bool {
        let local = at.to_zoned(self.zone.clone());
        let date = local.date();
        let minute = (local.time().hour() as u16) * 60 + local.time().minute() as u16;
        if self
            .ranges_on(date)
            .iter()
            .any(|r| r.covers_start_day(minute))
        {
            return true;
        }
        match date.yesterday() {
            Ok(y) => self.ranges_on(y).iter().any(|r| r.covers_next_day(minute)),
            Err(_) => false,
        }
    }

    /// Is `at` on a date listed as a holiday (special hours or not)?
    pub fn is_holiday(&self, at: Timestamp) -> bool {
        self.holidays
            .contains_key(&at.to_zoned(self.zone.clone()).date())
    }

    /// The weekday and minute of the day on this calendar's wall clock.
    pub fn local(&self, at: Timestamp) -> (Weekday, u16) {
        let local = at.to_zoned(self.zone.clone());
        let minute = (local.time().hour() as u16) * 60 + local.time().minute() as u16;
        (local.date().weekday(), minute)
    }
}

/// Is `minute` inside `range` (crossing midnight allowed) on one wall clock
/// day? Used by `time:` conditions, which have no notion of "yesterday".
pub fn range_contains(range: &TimeRange, minute: u16) -> bool {
    if range.crosses_midnight() {
        minute >= range.start || minute < range.end
    } else {
        range.start <= minute && minute < range.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ny() -> Calendar {
        let mut c = Calendar::new("America/New_York").unwrap();
        for d in parse_days("mon-fri").unwrap() {
            c.open_on(d, &parse_ranges("08:00-18:00").unwrap());
        }
        c.open_on(Weekday::Saturday, &parse_ranges("22:00-06:00").unwrap());
        c.open_on(Weekday::Sunday, &parse_ranges("01:00-02:00").unwrap());
        c.holiday(parse_date("2026-12-25").unwrap(), vec![]);
        c.holiday(
            parse_date("2026-12-24").unwrap(),
            parse_ranges("08:00-12:00").unwrap(),
        );
        c
    }

    #[test]
    fn opening_follows_the_wall_clock_across_spring_forward() {
        let c = ny();
        // Friday 2026-03-06 is EST (UTC-5): opens at 13:00 UTC.
        assert!(!c.is_open(ts("2026-03-06T12:59:00Z")));
        assert!(c.is_open(ts("2026-03-06T13:00:00Z")));
        assert!(c.is_open(ts("2026-03-06T22:59:00Z")));
        assert!(!c.is_open(ts("2026-03-06T23:00:00Z")));
        // Monday 2026-03-09 is EDT (UTC-4): opens at 12:00 UTC.
        assert!(!c.is_open(ts("2026-03-09T11:59:00Z")));
        assert!(c.is_open(ts("2026-03-09T12:00:00Z")));
        assert!(!c.is_open(ts("2026-03-09T22:00:00Z")));
    }

    #[test]
    fn an_overnight_range_spans_the_change_and_is_an_hour_shorter() {
        let c = ny();
        // Saturday 22:00 EST = Sunday 03:00 UTC; ends Sunday 06:00 EDT = 10:00 UTC.
        assert!(!c.is_open(ts("2026-03-08T02:59:00Z")));
        assert!(c.is_open(ts("2026-03-08T03:00:00Z")));
        assert!(c.is_open(ts("2026-03-08T09:59:00Z")));
        assert!(!c.is_open(ts("2026-03-08T10:00:00Z")));
    }

    #[test]
    fn the_repeated_hour_of_fall_back_is_open_twice() {
        let mut c = Calendar::new("America/New_York").unwrap();
        c.open_on(Weekday::Sunday, &parse_ranges("01:00-02:00").unwrap());
        // Sunday 2026-11-01: 01:00-02:00 local happens at 05:00 (EDT) and 06:00 (EST) UTC.
        assert!(c.is_open(ts("2026-11-01T05:30:00Z")));
        assert!(c.is_open(ts("2026-11-01T06:30:00Z")));
        assert!(!c.is_open(ts("2026-11-01T04:59:00Z")));
        assert!(!c.is_open(ts("2026-11-01T07:00:00Z")));
    }

    #[test]
    fn holidays_close_or_replace_the_day() {
        let c = ny();
        // Friday 2026-12-25, 10:00 EST.
        assert!(!c.is_open(ts("2026-12-25T15:00:00Z")));
        assert!(c.is_holiday(ts("2026-12-25T15:00:00Z")));
        // Thursday 2026-12-24: 08:00-12:00 only.
        assert!(c.is_open(ts("2026-12-24T16:59:00Z")));
        assert!(!c.is_open(ts("2026-12-24T17:00:00Z")));
    }

    #[test]
    fn parsing_refuses_bad_input() {
        assert!(TimeRange::parse("8-18").is_err());
        assert!(TimeRange::parse("08:00-08:00").is_err());
        assert!(TimeRange::parse("25:00-26:00").is_err());
        assert!(TimeRange::parse("24:00-06:00").is_err());
        assert!(TimeRange::parse("00:00-24:00").is_ok());
        assert!(parse_days("mon-funday").is_err());
        assert_eq!(parse_days("fri-mon").unwrap().len(), 4);
        assert!(parse_time_zone("Mars/Olympus_Mons").is_err());
        assert!(parse_date("2026-02-30").is_err());
    }
}
