//! The shipped example flow loads, and scripted calls through it end where
//! the issue says.

mod common;

use common::*;
use continuum_ivr::{Action, AudioSource, IvrEvent, check};
use std::time::Duration;

#[test]
fn the_example_loads_without_errors_or_warnings() {
    let r = check(HEALTHCARE);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(r.prompts.iter().any(|p| p.contains("dial 911")));
    assert!(
        r.prompts[0].contains("911"),
        "the emergency notice comes first"
    );
}

#[test]
fn one_goes_to_the_nurse_queue_with_priority_and_triage() {
    let mut call = Call::healthcare_open();
    call.finish_playback(); // emergency notice
    let menu = call.expect_say();
    assert!(menu.contains("urgent symptoms"));
    call.digit('1');
    assert!(
        call.actions.contains(&Action::StopPlayback),
        "barge-in stops the menu prompt"
    );
    call.finish_playback(); // "Please hold…"
    assert!(call.session.is_done());
    assert!(call.actions.contains(&Action::Enqueue {
        queue: "nurse".into(),
        priority: 10,
        skills: vec!["triage".into()],
        triage: Some("urgent_symptoms".into()),
        wait_url: None,
    }));
    assert!(call.events().contains(&IvrEvent::Triage {
        label: "urgent_symptoms".into()
    }));
    assert!(call.events().contains(&IvrEvent::MenuChoice {
        node: "main_menu".into(),
        choice: '1',
        next: "urgent".into()
    }));
}

#[test]
fn two_texts_a_link_then_hangs_up() {
    let mut call = Call::healthcare_open();
    call.finish_playback();
    call.expect_say();
    call.digit('2');
    call.finish_all_playback();
    assert!(call.session.is_done());
    let sms = call
        .actions
        .iter()
        .position(|a| matches!(a, Action::SendSms { template: Some(t), .. } if t == "visit_link"));
    let hangup = call.actions.iter().position(|a| *a == Action::Hangup);
    assert!(
        sms.is_some() && hangup.is_some() && sms < hangup,
        "{:#?}",
        call.actions
    );
}

#[test]
fn three_records_a_voicemail() {
    let mut call = Call::healthcare_open();
    call.finish_playback();
    call.expect_say();
    call.digit('3');
    call.finish_playback(); // the voicemail instructions
    let start = call
        .actions
        .iter()
        .find(|a| matches!(a, Action::StartRecording { .. }))
        .cloned();
    let Some(Action::StartRecording {
        max,
        triage,
        finish_on_key,
        ..
    }) = start
    else {
        panic!("no recording: {:#?}", call.actions)
    };
    assert_eq!(max, Duration::from_secs(120));
    assert_eq!(triage.as_deref(), Some("prescription_refill"));
    assert_eq!(finish_on_key, "#");
    call.digit('#');
    assert!(call.actions.contains(&Action::StopRecording));
    call.input(continuum_ivr::Input::RecordingDone {
        duration: Duration::from_secs(14),
        reference: "att_123".into(),
    });
    call.finish_all_playback();
    assert!(call.session.is_done());
    assert!(call.events().contains(&IvrEvent::Recorded {
        reference: "att_123".into(),
        duration: Duration::from_secs(14)
    }));
    assert_eq!(call.actions.last(), Some(&Action::Hangup));
}

#[test]
fn three_timeouts_go_to_the_front_desk() {
    let mut call = Call::healthcare_open();
    call.finish_playback();
    for attempt in 0..3 {
        call.expect_say();
        call.finish_playback();
        // The gather timeout only runs once the prompt has played.
        let deadline = call.session.poll_timeout().expect("listening");
        assert_eq!(
            deadline,
            call.now + Duration::from_secs(5),
            "attempt {attempt}"
        );
        call.advance(Duration::from_secs(5));
    }
    let timeouts = call
        .events()
        .iter()
        .filter(|e| matches!(e, IvrEvent::Timeout { .. }))
        .count();
    assert_eq!(timeouts, 3);
    assert!(call.events().contains(&IvrEvent::Exhausted {
        node: "main_menu".into()
    }));
    call.finish_all_playback();
    assert!(call.session.is_done());
    assert!(
        matches!(call.actions.last(), Some(Action::Enqueue { queue, .. }) if queue == "front-desk")
    );
}

#[test]
fn an_invalid_key_says_so_and_nine_repeats_with_fresh_retries() {
    let mut call = Call::healthcare_open();
    call.finish_playback();
    call.expect_say();
    call.digit('7');
    assert!(call.events().contains(&IvrEvent::Invalid {
        node: "main_menu".into(),
        input: "7".into()
    }));
    assert_eq!(call.expect_say(), "Sorry, that is not an option.");
    call.finish_playback();
    call.expect_say(); // the menu again
    call.finish_playback();
    call.advance(Duration::from_secs(5)); // attempt 2 timed out
    call.expect_say();
    call.digit('9'); // repeat: the menu is entered anew, retries reset
    for _ in 0..2 {
        call.expect_say();
        call.finish_playback();
        call.advance(Duration::from_secs(5));
    }
    assert!(!call.events().contains(&IvrEvent::Exhausted {
        node: "main_menu".into()
    }));
    call.expect_say();
    call.digit('1');
    call.finish_all_playback();
    assert!(matches!(call.actions.last(), Some(Action::Enqueue { queue, .. }) if queue == "nurse"));
}

#[test]
fn digits_during_the_emergency_notice_are_dropped() {
    let mut call = Call::healthcare_open();
    call.digit('1');
    call.finish_playback();
    call.expect_say();
    assert!(
        !call
            .events()
            .iter()
            .any(|e| matches!(e, IvrEvent::MenuChoice { .. }))
    );
}

#[test]
fn after_hours_offers_the_on_call_nurse() {
    // Sunday 2026-03-08 15:00 UTC: closed.
    let mut call = Call::healthcare_at("2026-03-08T15:00:00Z", &[]);
    call.finish_playback();
    assert!(call.expect_say().contains("office is closed"));
    call.digit('1');
    call.finish_all_playback();
    assert!(
        matches!(call.actions.last(), Some(Action::Transfer { to, .. }) if to.starts_with("sip:oncall"))
    );
    assert!(call.events().contains(&IvrEvent::Triage {
        label: "urgent_after_hours".into()
    }));
}

#[test]
fn an_unanswered_message_offers_the_link() {
    let mut call = Call::healthcare_at(OPEN_AT, &["unanswered_message"]);
    call.finish_playback();
    assert!(call.expect_say().contains("message waiting"));
    call.digit('1');
    call.finish_all_playback();
    assert!(call.actions.iter().any(
        |a| matches!(a, Action::SendSms { template: Some(t), .. } if t == "conversation_link")
    ));
    assert_eq!(call.actions.last(), Some(&Action::Hangup));
}

#[test]
fn the_emergency_notice_is_a_say_not_a_file() {
    let call = Call::healthcare_open();
    assert!(!call.actions.iter().any(|a| matches!(
        a,
        Action::Play {
            source: AudioSource::File(_),
            ..
        }
    )));
}
