//! When reminders go out, and what they say: pure functions (no SQL, no
//! clock of their own), so the rules are unit- and property-tested alone.
//!
//! Times are Unix microseconds (UTC) like the rest of the store; wall-clock
//! reasoning (quiet hours, the date and time in the text) happens in the
//! patient's IANA zone through `jiff` (its bundled tz database), so daylight
//! saving transitions are handled by the zone rules, not by adding hours.
//!
//! The rules, in order, for each offset of an appointment at `start`:
//! 1. An appointment that has already begun gets no reminders (`skipped`).
//! 2. A reminder whose time (`start + offset`) has already passed when it is
//!    scheduled is sent at once only if no later reminder of the appointment
//!    is still to come (a same-day booking still gets one reminder); the
//!    others are `skipped`, so a patient never gets two reminders at once.
//! 3. Quiet hours (a wall-clock window in the patient's zone, default
//!    21:00–08:00, half open: 21:00 is quiet, 08:00 is not): a reminder due
//!    inside them moves to the end of the quiet period, if that is still
//!    before the appointment. Otherwise (a T-1h reminder for an 08:30
//!    appointment) it moves *earlier*, to the last minute before the quiet
//!    period began (20:59 the evening before): a day-of reminder the
//!    evening before is worth more than none, and nobody is texted at
//!    night. If that moment has already passed, it is `skipped`.
//! 4. Two reminders of one appointment that land on the same minute after
//!    moving (both pushed to 08:00) are one: the one farther from the
//!    appointment is `skipped`.
//!
//! A nonexistent local time (the spring-forward gap) resolves to the later
//! side, and an ambiguous one (the fall-back hour) to the earlier
//! (`jiff`'s "compatible" disambiguation, as RFC 5545 and most calendars do).

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

const MICROS: i64 = 1_000_000;
/// The longest offset accepted (30 days before the appointment).
pub const MAX_OFFSET_SECS: i64 = 30 * 24 * 3600;

/// Parses an offset before the appointment: `-24h`, `-1h`, `-30m`, `-2d`,
/// `-1h30m`, `-90s`. Returns seconds (negative).
pub fn parse_offset(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "offset `{}` is not a time before the appointment such as -24h, -1h, -30m or -1h30m",
            t.chars()
                .take(32)
                .filter(|c| !c.is_control())
                .collect::<String>()
        )
    };
    let rest = t.strip_prefix('-').ok_or_else(bad)?;
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut last_unit = 5; // d=4 h=3 m=2 s=1: units must shrink
    for ch in rest.chars() {
        if ch.is_ascii_digit() {
            if digits.len() >= 6 {
                return Err(bad());
            }
            digits.push(ch);
            continue;
        }
        let (unit, rank) = match ch {
            'd' => (86_400, 4),
            'h' => (3600, 3),
            'm' => (60, 2),
            's' => (1, 1),
            _ => return Err(bad()),
        };
        if digits.is_empty() || rank >= last_unit {
            return Err(bad());
        }
        last_unit = rank;
        total += digits.parse::<i64>().map_err(|_| bad())? * unit;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    if total > MAX_OFFSET_SECS {
        return Err(format!(
            "offset `{t}` is more than 30 days before the appointment"
        ));
    }
    Ok(-total)
}

/// An offset as text (`-24h`, `-1h30m`, `-90s`), the inverse of [`parse_offset`].
pub fn format_offset(secs: i64) -> String {
    let mut n = secs.unsigned_abs();
    let mut out = String::from(if secs <= 0 { "-" } else { "+" });
    // Whole days from two on (`-2d`); else hours (`-24h`, `-36h`), as
    // clinics say them.
    if n >= 2 * 86_400 && n.is_multiple_of(86_400) {
        return format!("{out}{}d", n / 86_400);
    }
    for (unit, suffix) in [(3600, 'h'), (60, 'm'), (1, 's')] {
        if n >= unit {
            out.push_str(&(n / unit).to_string());
            out.push(suffix);
            n %= unit;
        }
    }
    if out.len() == 1 {
        out.push_str("0s");
    }
    out
}

/// A daily wall-clock window (`21:00`–`08:00`), seconds after midnight;
/// the start is quiet, the end is not. It may wrap past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietWindow {
    pub start: u32,
    pub end: u32,
}

/// Parses `HH:MM` (24-hour clock).
pub fn parse_clock(s: &str) -> Result<u32, String> {
    let bad = || {
        format!(
            "`{}` is not a time of day as HH:MM (24-hour clock, e.g. 21:00)",
            s.chars()
                .take(16)
                .filter(|c| !c.is_control())
                .collect::<String>()
        )
    };
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
}

impl QuietWindow {
    /// From `HH:MM` texts; at least four hours of the day must stay open.
    pub fn parse(start: &str, end: &str) -> Result<QuietWindow, String> {
        let w = QuietWindow {
            start: parse_clock(start)?,
            end: parse_clock(end)?,
        };
        if w.start == w.end {
            return Err("quiet hours must not start and end at the same time (set quiet_hours to null for none)".into());
        }
        if w.length() > 20 * 3600 {
            return Err(
                "quiet hours must leave at least four hours of the day for reminders".into(),
            );
        }
        Ok(w)
    }

    /// Seconds of the day that are quiet.
    pub fn length(&self) -> u32 {
        (self.end + 86_400 - self.start) % 86_400
    }

    /// Whether a time of day (seconds after midnight) is quiet.
    pub fn contains(&self, sod: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&sod)
        } else {
            sod >= self.start || sod < self.end
        }
    }

    fn is_quiet(&self, z: &Zoned) -> bool {
        self.contains(seconds_of_day(z.time()))
    }

    /// The end of the quiet period `z` is in (the first non-quiet instant).
    fn end_after(&self, z: &Zoned) -> Timestamp {
        let dt = z.datetime();
        let mut end = clock_on(z.date(), self.end);
        if end <= dt {
            end = clock_on(z.date().tomorrow().unwrap_or(z.date()), self.end);
        }
        resolve(end, z.time_zone())
    }

    /// The start of the quiet period `z` is in.
    fn start_before(&self, z: &Zoned) -> Timestamp {
        let dt = z.datetime();
        let mut start = clock_on(z.date(), self.start);
        if start > dt {
            start = clock_on(z.date().yesterday().unwrap_or(z.date()), self.start);
        }
        // A start inside a gap began at the gap: take the reading before
        // it, so the minute before is not quiet.
        z.time_zone()
            .to_ambiguous_zoned(start)
            .earlier()
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MIN)
    }
}

fn seconds_of_day(t: Time) -> u32 {
    t.hour() as u32 * 3600 + t.minute() as u32 * 60 + t.second() as u32
}

fn clock_on(d: Date, sod: u32) -> DateTime {
    d.at(
        (sod / 3600) as i8,
        ((sod % 3600) / 60) as i8,
        (sod % 60) as i8,
        0,
    )
}

/// A wall-clock time in `tz` as an instant: a time in a gap is moved past
/// it, an ambiguous one takes the earlier instant.
fn resolve(dt: DateTime, tz: &TimeZone) -> Timestamp {
    tz.to_ambiguous_zoned(dt)
        .compatible()
        .map(|z| z.timestamp())
        .unwrap_or_else(|_| Timestamp::MAX)
}

pub fn to_ts(micros: i64) -> Timestamp {
    Timestamp::from_microsecond(micros).unwrap_or(if micros < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

pub fn micros(ts: Timestamp) -> i64 {
    ts.as_microsecond()
}

/// The zone named, or UTC for none or an unknown name (names are checked
/// when they are stored).
pub fn zone(name: Option<&str>) -> TimeZone {
    name.and_then(|n| TimeZone::get(n).ok())
        .unwrap_or(TimeZone::UTC)
}

/// Where a reminder landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// Send at this instant (micros); `moved` says why it is not the asked time.
    At {
        at: i64,
        moved: Option<String>,
    },
    Skip(String),
}

/// Quiet hours for one reminder asked for `asked` (micros), of an
/// appointment at `start`, not before `now`. See the module docs (rule 3).
pub fn place(
    asked: i64,
    start: i64,
    tz: &TimeZone,
    quiet: Option<QuietWindow>,
    now: i64,
) -> Placed {
    let Some(q) = quiet else {
        return Placed::At {
            at: asked,
            moved: None,
        };
    };
    let z = to_ts(asked).to_zoned(tz.clone());
    if !q.is_quiet(&z) {
        return Placed::At {
            at: asked,
            moved: None,
        };
    }
    let later = micros(q.end_after(&z));
    if later < start {
        return Placed::At {
            at: later,
            moved: Some("quiet hours: moved to their end".into()),
        };
    }
    let earlier = micros(q.start_before(&z)) - 60 * MICROS;
    if earlier >= now {
        return Placed::At {
            at: earlier,
            moved: Some(
                "quiet hours: their end is not before the appointment, so moved to the minute before they begin"
                    .into(),
            ),
        };
    }
    Placed::Skip("quiet hours until the appointment; the time before them had passed".into())
}

/// One planned reminder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub offset_secs: i64,
    /// When it goes out (micros), or when it would have (skipped ones).
    pub due_at: i64,
    /// `None`: pending; `Some(reason)`: skipped.
    pub skipped: Option<String>,
    /// Why it is not at `start + offset` (quiet hours, late booking).
    pub detail: Option<String>,
}

/// Plans the reminders of an appointment at `start` (micros) for `offsets`
/// (seconds, negative) in the patient's zone, at `now`. See the module docs.
pub fn plan(
    start: i64,
    offsets: &[i64],
    tz: &TimeZone,
    quiet: Option<QuietWindow>,
    now: i64,
) -> Vec<Planned> {
    let mut offs: Vec<i64> = offsets.to_vec();
    offs.sort_unstable();
    offs.dedup();
    let any_future = offs.iter().any(|o| start + o * MICROS > now);
    let latest = offs.last().copied();
    let mut out: Vec<Planned> = Vec::with_capacity(offs.len());
    for &off in &offs {
        let asked = start + off * MICROS;
        let skip = |reason: &str| Planned {
            offset_secs: off,
            due_at: asked,
            skipped: Some(reason.to_owned()),
            detail: None,
        };
        if start <= now {
            out.push(skip("the appointment time had passed"));
            continue;
        }
        let late = asked <= now;
        if late && (any_future || Some(off) != latest) {
            out.push(skip(
                "its time had passed when the appointment was booked (a later reminder is sent)",
            ));
            continue;
        }
        let at = if late { now } else { asked };
        match place(at, start, tz, quiet, now) {
            Placed::At { at, moved } => out.push(Planned {
                offset_secs: off,
                due_at: at,
                skipped: None,
                detail: match (late, moved) {
                    (true, Some(m)) => Some(format!("booked late: sent at once; {m}")),
                    (true, None) => Some("booked late: sent at once".into()),
                    (false, m) => m,
                },
            }),
            Placed::Skip(reason) => out.push(Planned {
                offset_secs: off,
                due_at: at,
                skipped: Some(reason),
                detail: None,
            }),
        }
    }
    // Rule 4: two pending reminders on the same minute are one (keep the
    // one nearer the appointment, which is later in `out`).
    for i in 0..out.len() {
        if out[i].skipped.is_some() {
            continue;
        }
        let minute = out[i].due_at / (60 * MICROS);
        let dup = out[i + 1..]
            .iter()
            .any(|p| p.skipped.is_none() && p.due_at / (60 * MICROS) == minute);
        if dup {
            out[i].skipped = Some(
                "quiet hours put it on the same minute as a reminder nearer the appointment".into(),
            );
        }
    }
    out
}

/// The variables a template may use.
pub const VARIABLES: &[&str] = &[
    "patient_first_name",
    "patient_name",
    "date",
    "time",
    "weekday",
    "clinic",
    "location",
    "clinician",
];

/// Checks a template body: every `{{name}}` is a known variable and braces
/// are balanced. Returns the names used.
pub fn check_body(body: &str) -> Result<Vec<String>, String> {
    let mut used = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let j = after
            .find("}}")
            .ok_or("body has `{{` without a closing `}}`")?;
        let name = after[..j].trim();
        if !VARIABLES.contains(&name) {
            return Err(format!(
                "body uses `{{{{{}}}}}`, which is not a variable; use {}",
                name.chars().take(40).collect::<String>(),
                VARIABLES
                    .iter()
                    .map(|v| format!("{{{{{v}}}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        used.push(name.to_owned());
        rest = &after[j + 2..];
    }
    if rest.contains("}}") {
        return Err("body has `}}` without an opening `{{`".into());
    }
    Ok(used)
}

/// The values of the variables for one appointment.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    pub patient_name: String,
    pub date: String,
    pub time: String,
    pub weekday: String,
    pub clinic: String,
    pub location: String,
    pub clinician: String,
}

impl Vars {
    /// The date and time of `start` as the patient reads them, in `tz`
    /// (`Tuesday, December 1`, `10:00 AM`).
    pub fn at(start: i64, tz: &TimeZone) -> Vars {
        let z = to_ts(start).to_zoned(tz.clone());
        Vars {
            date: z.strftime("%B %-d, %Y").to_string(),
            time: z.strftime("%-I:%M %p").to_string(),
            weekday: z.strftime("%A").to_string(),
            ..Default::default()
        }
    }

    pub fn get(&self, name: &str) -> String {
        match name {
            "patient_first_name" => self
                .patient_name
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
            "patient_name" => self.patient_name.clone(),
            "date" => self.date.clone(),
            "time" => self.time.clone(),
            "weekday" => self.weekday.clone(),
            "clinic" => self.clinic.clone(),
            "location" => self.location.clone(),
            "clinician" => self.clinician.clone(),
            _ => String::new(),
        }
    }
}

/// Fills `{{variables}}` in (a body that passed [`check_body`]).
pub fn render(body: &str, vars: &Vars) -> String {
    let mut out = String::with_capacity(body.len() + 64);
    let mut rest = body;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find("}}") {
            Some(j) => {
                out.push_str(&vars.get(after[..j].trim()));
                rest = &after[j + 2..];
            }
            None => {
                rest = &rest[i..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc(s: &str) -> i64 {
        micros(s.parse::<Timestamp>().unwrap())
    }
    fn local(z: &str, tz: &str) -> i64 {
        let dt: DateTime = z.parse().unwrap();
        micros(resolve(dt, &TimeZone::get(tz).unwrap()))
    }
    fn show(m: i64, tz: &str) -> String {
        to_ts(m)
            .to_zoned(TimeZone::get(tz).unwrap())
            .strftime("%Y-%m-%d %H:%M %Z")
            .to_string()
    }
    fn night() -> Option<QuietWindow> {
        Some(QuietWindow::parse("21:00", "08:00").unwrap())
    }

    #[test]
    fn offsets_parse_and_print() {
        assert_eq!(parse_offset("-24h"), Ok(-86_400));
        assert_eq!(parse_offset("-1h"), Ok(-3600));
        assert_eq!(parse_offset(" -1h30m "), Ok(-5400));
        assert_eq!(parse_offset("-2d"), Ok(-172_800));
        assert_eq!(parse_offset("-90s"), Ok(-90));
        for bad in [
            "24h", "-", "-h", "-1x", "-30m1h", "-0m", "-1h1h", "+1h", "-31d", "",
        ] {
            assert!(parse_offset(bad).is_err(), "{bad}");
        }
        for s in ["-24h", "-1h", "-1h30m", "-2d", "-1m30s", "-26h3m4s"] {
            assert_eq!(format_offset(parse_offset(s).unwrap()), s);
        }
        assert_eq!(
            format_offset(parse_offset("-1d2h3m4s").unwrap()),
            "-26h3m4s"
        );
    }

    #[test]
    fn quiet_windows() {
        let q = night().unwrap();
        assert!(q.contains(21 * 3600));
        assert!(q.contains(3 * 3600));
        assert!(!q.contains(8 * 3600));
        assert!(!q.contains(20 * 3600 + 59 * 60));
        let day = QuietWindow::parse("12:00", "13:00").unwrap();
        assert!(day.contains(12 * 3600) && !day.contains(13 * 3600) && !day.contains(0));
        assert!(QuietWindow::parse("21:00", "21:00").is_err());
        assert!(QuietWindow::parse("00:00", "23:00").is_err());
        assert!(QuietWindow::parse("25:00", "08:00").is_err());
        assert!(QuietWindow::parse("9:00", "08:00").is_err());
    }

    #[test]
    fn a_reminder_in_quiet_hours_moves_to_their_end_in_the_patients_zone() {
        let tz = TimeZone::get("America/Chicago").unwrap();
        // Appointment 10:00 Chicago; T-24h would be 10:00 the day before:
        // not quiet. One at 07:00 for T-1h is quiet: moved to 08:00.
        let start = local("2026-06-10T08:30", "America/Chicago");
        let now = utc("2026-06-01T00:00:00Z");
        let p = plan(start, &[-86_400, -3600], &tz, night(), now);
        assert_eq!(show(p[0].due_at, "America/Chicago"), "2026-06-09 08:30 CDT");
        assert_eq!(p[0].skipped, None);
        // 07:30 is quiet; 08:00 is before 08:30: moved to 08:00.
        assert_eq!(show(p[1].due_at, "America/Chicago"), "2026-06-10 08:00 CDT");
        assert!(
            p[1].detail
                .as_deref()
                .unwrap()
                .contains("moved to their end")
        );
    }

    #[test]
    fn a_t_minus_1h_reminder_whose_quiet_hours_end_at_the_appointment_goes_the_evening_before() {
        let tz = TimeZone::get("Europe/Paris").unwrap();
        let start = local("2026-06-10T08:00", "Europe/Paris");
        let now = utc("2026-06-01T00:00:00Z");
        let p = plan(start, &[-3600], &tz, night(), now);
        assert_eq!(show(p[0].due_at, "Europe/Paris"), "2026-06-09 20:59 CEST");
        assert!(
            p[0].detail
                .as_deref()
                .unwrap()
                .contains("before they begin")
        );
        // Booked at 22:00 the evening before: the evening has passed, skipped.
        let now = local("2026-06-09T22:00", "Europe/Paris");
        let p = plan(start, &[-3600], &tz, night(), now);
        assert!(p[0].skipped.as_deref().unwrap().contains("quiet hours"));
    }

    #[test]
    fn spring_forward_night() {
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        let tz = TimeZone::get("America/New_York").unwrap();
        let now = utc("2026-03-01T00:00:00Z");
        // Appointment 10:00 EDT; T-24h = 2026-03-07 09:00 EST?  24 real
        // hours before 10:00 EDT is 09:00 EST (the night lost an hour).
        let start = local("2026-03-08T10:00", "America/New_York");
        let p = plan(start, &[-86_400], &tz, night(), now);
        assert_eq!(
            show(p[0].due_at, "America/New_York"),
            "2026-03-07 09:00 EST"
        );
        // T-4h = 05:00 EDT: quiet; the end is 08:00 EDT = 12:00 UTC.
        let p = plan(start, &[-4 * 3600], &tz, night(), now);
        assert_eq!(p[0].due_at, utc("2026-03-08T12:00:00Z"));
        // Quiet hours ending inside the gap (02:30 does not exist that
        // night) end at 03:30 EDT, the compatible reading.
        let q = Some(QuietWindow::parse("21:00", "02:30").unwrap());
        let start = local("2026-03-08T05:00", "America/New_York");
        let p = plan(start, &[-4 * 3600], &tz, q, now); // 00:00 EST: quiet
        assert_eq!(
            show(p[0].due_at, "America/New_York"),
            "2026-03-08 03:30 EDT"
        );
    }

    #[test]
    fn fall_back_night() {
        // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST.
        let tz = TimeZone::get("America/New_York").unwrap();
        let now = utc("2026-10-01T00:00:00Z");
        let start = local("2026-11-01T09:00", "America/New_York");
        // T-6h = 04:00 EST (6 real hours: the night has an extra hour): quiet.
        let p = plan(start, &[-6 * 3600], &tz, night(), now);
        assert_eq!(
            show(p[0].due_at, "America/New_York"),
            "2026-11-01 08:00 EST"
        );
        assert_eq!(p[0].due_at, utc("2026-11-01T13:00:00Z"));
        // An ambiguous quiet end (01:30 happens twice) takes the first.
        let q = Some(QuietWindow::parse("22:00", "01:30").unwrap());
        let p = plan(start, &[-10 * 3600], &tz, q, now); // 00:00 EDT
        assert_eq!(p[0].due_at, utc("2026-11-01T05:30:00Z"));
    }

    #[test]
    fn late_bookings_get_one_reminder_and_past_appointments_none() {
        let tz = TimeZone::UTC;
        let now = utc("2026-06-10T12:00:00Z");
        // In 30 min: both times passed; only the nearer one, at once.
        let start = now + 1800 * MICROS;
        let p = plan(start, &[-86_400, -3600], &tz, None, now);
        assert!(p[0].skipped.is_some());
        assert_eq!((p[1].skipped.clone(), p[1].due_at), (None, now));
        // In 2 h: T-24h passed, T-1h to come: T-24h skipped.
        let start = now + 7200 * MICROS;
        let p = plan(start, &[-86_400, -3600], &tz, None, now);
        assert!(p[0].skipped.is_some());
        assert_eq!(p[1].due_at, start - 3600 * MICROS);
        // Already begun.
        let p = plan(now - 1, &[-3600], &tz, None, now);
        assert!(p[0].skipped.as_deref().unwrap().contains("passed"));
    }

    #[test]
    fn two_reminders_pushed_to_the_same_minute_are_one() {
        let tz = TimeZone::UTC;
        let now = utc("2026-06-01T00:00:00Z");
        let start = utc("2026-06-10T11:00:00Z");
        // T-4h (07:00) and T-5h (06:00) both move to 08:00.
        let p = plan(start, &[-5 * 3600, -4 * 3600], &tz, night(), now);
        assert!(p[0].skipped.is_some());
        assert_eq!(p[1].due_at, utc("2026-06-10T08:00:00Z"));
    }

    #[test]
    fn templates_check_and_render() {
        let body = "Hi {{patient_first_name}}, see you {{ weekday }} {{date}} at {{time}} at {{clinic}}. Reply C to confirm, R to reschedule.";
        assert!(check_body(body).is_ok());
        assert!(
            check_body("{{dob}}")
                .unwrap_err()
                .contains("not a variable")
        );
        assert!(check_body("{{date").is_err());
        assert!(check_body("date}}").is_err());
        let tz = TimeZone::get("America/Chicago").unwrap();
        let mut v = Vars::at(utc("2026-12-01T16:00:00Z"), &tz);
        v.patient_name = "Ada Lovelace".into();
        v.clinic = "Northside".into();
        assert_eq!(
            render(body, &v),
            "Hi Ada, see you Tuesday December 1, 2026 at 10:00 AM at Northside. Reply C to confirm, R to reschedule."
        );
    }

    const ZONES: &[&str] = &[
        "UTC",
        "America/New_York",
        "America/Chicago",
        "America/Los_Angeles",
        "Europe/London",
        "Europe/Paris",
        "Australia/Sydney",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
        "Pacific/Chatham",
        "America/St_Johns",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Wherever a reminder lands, it is not in quiet hours in the
        /// patient's zone, it is before the appointment and not before
        /// `now`; moved later only to the end of quiet hours, earlier only
        /// when that end is too late; pending reminders never share a minute.
        #[test]
        fn reminders_never_land_in_quiet_hours(
            zone_i in 0..ZONES.len(),
            // 2024..2028, covering every DST transition of those years.
            start_s in 1_704_067_200i64..1_830_297_600,
            ahead in 0i64..(40 * 86_400),
            offs in proptest::collection::vec(1i64..(3 * 86_400), 1..4),
            qs in 0u32..24, qe in 0u32..24, qm in 0u32..4,
        ) {
            let tz = TimeZone::get(ZONES[zone_i]).unwrap();
            let Ok(q) = QuietWindow::parse(&format!("{qs:02}:{:02}", qm * 15), &format!("{qe:02}:00")) else {
                return Ok(());
            };
            let start = start_s * MICROS;
            let now = start - ahead * MICROS;
            let offsets: Vec<i64> = offs.iter().map(|o| -o).collect();
            let planned = plan(start, &offsets, &tz, Some(q), now);
            let mut minutes = std::collections::HashSet::new();
            for p in &planned {
                if p.skipped.is_some() {
                    continue;
                }
                let z = to_ts(p.due_at).to_zoned(tz.clone());
                prop_assert!(!q.is_quiet(&z), "{} is quiet", z);
                prop_assert!(p.due_at < start, "after the appointment");
                prop_assert!(p.due_at >= now, "in the past");
                prop_assert!(minutes.insert(p.due_at / (60 * MICROS)), "two on one minute");
                let asked = (start + p.offset_secs * MICROS).max(now);
                if p.due_at != asked {
                    // Moved only out of quiet hours.
                    prop_assert!(q.is_quiet(&to_ts(asked).to_zoned(tz.clone())));
                }
            }
        }

        #[test]
        fn offsets_round_trip(secs in 1i64..MAX_OFFSET_SECS) {
            prop_assert_eq!(parse_offset(&format_offset(-secs)), Ok(-secs));
        }
    }
}
