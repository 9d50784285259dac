//! Tenant calendars on their own: the same fields and diagnostics as a
//! flow's inline `hours`.

use jiff::Timestamp;

#[test]
fn a_tenant_calendar_loads_and_answers_open_or_closed() {
    let cal = continuum_ivr::load_calendar(
        "time_zone: America/New_York\nweekly:\n  mon-fri: \"08:00-18:00\"\nholidays:\n  - \"2026-12-25\"\n",
    )
    .unwrap();
    // Tuesday 1 December 2026, 10:00 in New York (15:00 UTC): open.
    assert!(cal.is_open("2026-12-01T15:00:00Z".parse::<Timestamp>().unwrap()));
    // 20:00 in New York: closed.
    assert!(!cal.is_open("2026-12-02T01:00:00Z".parse::<Timestamp>().unwrap()));
    // Christmas, a Friday, 10:00: closed.
    assert!(!cal.is_open("2026-12-25T15:00:00Z".parse::<Timestamp>().unwrap()));
}

#[test]
fn a_broken_calendar_is_refused_with_line_and_reason() {
    let errors = continuum_ivr::load_calendar(
        "time_zone: Mars/Olympus\nweekly:\n  mon-fri: \"08:00-18:00\"\n",
    )
    .unwrap_err();
    assert_eq!(errors[0].line, 1, "{errors:?}");
    assert!(errors[0].message.contains("Mars/Olympus"), "{errors:?}");
    let errors = continuum_ivr::load_calendar("calendar: other\n").unwrap_err();
    assert!(
        errors[0].message.contains("cannot name another calendar"),
        "{errors:?}"
    );
}
