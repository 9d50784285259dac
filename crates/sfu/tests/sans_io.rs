//! The SFU core driven entirely in memory: real str0m peers (not our code's
//! logic, but the same WebRTC stack) exchange datagrams with the `Worker`
//! through a simulated network and clock. Fast and deterministic; the basis
//! for SFU benchmarks.

use continuum_sfu::{JoinRequest, Mode, ParticipantId, SfuOutput, Worker, WorkerConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const SFU: &str = "10.0.0.1:7401";

struct Peer {
    addr: SocketAddr,
    rtc: Rtc,
    id: ParticipantId,
    connected: bool,
    frames_received: usize,
    video: Option<Mid>,
}

fn peer(worker: &mut Worker, now: Instant, addr: &str, publish: bool) -> Peer {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut rtc = Rtc::builder().build(now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut change = rtc.sdp_api();
    let video = publish.then(|| {
        change.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("cam".into()),
            None,
            None,
        )
    });
    change.add_channel("continuum".into());
    let (offer, pending) = change.apply().unwrap();
    let (id, answer) = worker
        .join(
            now,
            JoinRequest {
                room: "t/room".into(),
                identity: addr.to_string(),
                offer_sdp: offer.to_sdp_string(),
                mode: Mode::Full,
                max_participants: None,
            },
        )
        .expect("the SFU accepts a str0m offer");
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    Peer {
        addr,
        rtc,
        id,
        connected: false,
        frames_received: 0,
        video,
    }
}

#[test]
fn a_publisher_reaches_a_subscriber_through_the_worker() {
    let sfu: SocketAddr = SFU.parse().unwrap();
    let mut now = Instant::now();
    let mut worker = Worker::new(WorkerConfig::new(sfu));
    let mut peers = [
        peer(&mut worker, now, "10.0.0.2:5000", true),
        peer(&mut worker, now, "10.0.0.3:5000", false),
    ];
    let by_id: HashMap<ParticipantId, usize> =
        peers.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
    let mut next_frame = now;
    let mut frame_no = 0u64;

    for _ in 0..6_000 {
        now += Duration::from_millis(1);
        // Peers: time, then everything they want to send goes to the SFU.
        for p in peers.iter_mut() {
            p.rtc.handle_input(Input::Timeout(now)).unwrap();
            loop {
                match p.rtc.poll_output().unwrap() {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        worker.handle_datagram(now, p.addr, sfu, &t.contents);
                    }
                    Output::Event(Event::Connected) => p.connected = true,
                    Output::Event(Event::MediaData(_)) => p.frames_received += 1,
                    Output::Event(_) => {}
                }
            }
        }
        // The publisher sends 30 fps once connected (a VP8 keyframe-flagged payload).
        if peers[0].connected && now >= next_frame {
            next_frame = now + Duration::from_millis(33);
            frame_no += 1;
            let mid = peers[0].video;
            if let Some(writer) = mid.and_then(|m| peers[0].rtc.writer(m)) {
                let pt = writer.payload_params().next().map(|p| p.pt()).unwrap();
                writer
                    .write(
                        pt,
                        now,
                        MediaTime::from_90khz(frame_no * 3000),
                        vec![0x10u8; 900],
                    )
                    .unwrap();
            }
        }
        // The SFU: time, then route its output to the peers.
        worker.drive(now);
        while let Some(out) = worker.poll_output() {
            match out {
                SfuOutput::Transmit {
                    destination,
                    contents,
                } => {
                    if let Some(p) = peers.iter_mut().find(|p| p.addr == destination) {
                        let input = Input::Receive(
                            now,
                            Receive {
                                proto: Protocol::Udp,
                                source: sfu,
                                destination,
                                contents: contents.as_slice().try_into().unwrap(),
                            },
                        );
                        p.rtc.handle_input(input).unwrap();
                    }
                }
                SfuOutput::Offer { participant, sdp } => {
                    let p = &mut peers[by_id[&participant]];
                    let answer = p
                        .rtc
                        .sdp_api()
                        .accept_offer(SdpOffer::from_sdp_string(&sdp).unwrap())
                        .unwrap();
                    worker.answer(participant, &answer.to_sdp_string()).unwrap();
                }
                _ => {}
            }
        }
        if peers[1].frames_received >= 30 {
            break;
        }
    }
    assert!(
        peers[0].connected && peers[1].connected,
        "ICE and DTLS completed for both"
    );
    assert!(
        peers[1].frames_received >= 30,
        "the subscriber got {} frames",
        peers[1].frames_received
    );
    assert!(worker.stats.packets_forwarded >= 30);
}

/// Runs the worker and peers for `ms` simulated milliseconds from `now`;
/// `cut` peers' datagrams to the SFU are lost (a dead device or network).
/// Returns the room events seen.
fn run(
    worker: &mut Worker,
    peers: &mut [Peer],
    now: &mut Instant,
    ms: u64,
    cut: &[usize],
) -> Vec<continuum_sfu::RoomEvent> {
    let sfu: SocketAddr = SFU.parse().unwrap();
    let mut events = Vec::new();
    for _ in 0..ms {
        *now += Duration::from_millis(1);
        for (i, p) in peers.iter_mut().enumerate() {
            p.rtc.handle_input(Input::Timeout(*now)).unwrap();
            loop {
                match p.rtc.poll_output().unwrap() {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) if !cut.contains(&i) => {
                        worker.handle_datagram(*now, p.addr, sfu, &t.contents);
                    }
                    Output::Event(Event::Connected) => p.connected = true,
                    _ => {}
                }
            }
            if p.connected
                && let Some(writer) = p.video.and_then(|m| p.rtc.writer(m))
            {
                let pt = writer.payload_params().next().map(|pp| pp.pt()).unwrap();
                let _ = writer.write(pt, *now, MediaTime::from_90khz(0), vec![0x10u8; 300]);
            }
        }
        worker.drive(*now);
        while let Some(out) = worker.poll_output() {
            match out {
                SfuOutput::Transmit {
                    destination,
                    contents,
                } => {
                    if let Some(p) = peers.iter_mut().find(|p| p.addr == destination) {
                        let input = Input::Receive(
                            *now,
                            Receive {
                                proto: Protocol::Udp,
                                source: sfu,
                                destination,
                                contents: contents.as_slice().try_into().unwrap(),
                            },
                        );
                        p.rtc.handle_input(input).unwrap();
                    }
                }
                SfuOutput::Offer { participant, sdp } => {
                    if let Some(p) = peers.iter_mut().find(|p| p.id == participant) {
                        let answer = p
                            .rtc
                            .sdp_api()
                            .accept_offer(SdpOffer::from_sdp_string(&sdp).unwrap())
                            .unwrap();
                        worker.answer(participant, &answer.to_sdp_string()).unwrap();
                    }
                }
                SfuOutput::Event(e) => events.push(e),
                _ => {}
            }
        }
    }
    events
}

#[test]
fn a_participant_whose_device_goes_silent_is_reported_stalled_then_resumed() {
    use continuum_sfu::RoomEvent;
    let sfu: SocketAddr = SFU.parse().unwrap();
    let mut now = Instant::now();
    let mut worker = Worker::new(WorkerConfig::new(sfu));
    let mut peers = vec![
        peer(&mut worker, now, "10.0.0.2:5000", true),
        peer(&mut worker, now, "10.0.0.3:5000", false),
    ];
    let patient = peers[0].id;
    let events = run(&mut worker, &mut peers, &mut now, 3_000, &[]);
    assert!(peers.iter().all(|p| p.connected), "both connected");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RoomEvent::MediaStalled { .. })),
        "no stall while packets flow: {events:?}"
    );
    // The patient's device dies: nothing reaches the SFU any more.
    let events = run(&mut worker, &mut peers, &mut now, 6_000, &[0]);
    let stalled = events
        .iter()
        .find_map(|e| match e {
            RoomEvent::MediaStalled {
                participant,
                silent,
                ..
            } if *participant == patient => Some(*silent),
            _ => None,
        })
        .expect("the silent participant is reported stalled");
    assert!(
        stalled >= WorkerConfig::new(sfu).media_stall_after,
        "{stalled:?}"
    );
    assert!(
        !events.iter().any(
            |e| matches!(e, RoomEvent::MediaStalled { participant, .. } if *participant != patient)
        ),
        "only the silent one stalls"
    );
    // It comes back (a flaky network, not a dead phone).
    let events = run(&mut worker, &mut peers, &mut now, 3_000, &[]);
    assert!(
        events.iter().any(
            |e| matches!(e, RoomEvent::MediaResumed { participant, .. } if *participant == patient)
        ),
        "the resumed participant is reported: {events:?}"
    );
}

#[test]
fn a_participant_that_never_connects_is_reported_after_the_connect_timeout() {
    use continuum_sfu::RoomEvent;
    let sfu: SocketAddr = SFU.parse().unwrap();
    let mut now = Instant::now();
    let cfg = WorkerConfig::new(sfu);
    let timeout = cfg.connect_timeout;
    let mut worker = Worker::new(cfg);
    let mut peers = vec![
        peer(&mut worker, now, "10.0.0.2:5000", true),
        peer(&mut worker, now, "10.0.0.3:5000", false),
    ];
    let patient = peers[0].id;
    // The patient's packets never get through (a firewall, no TURN).
    let events = run(
        &mut worker,
        &mut peers,
        &mut now,
        timeout.as_millis() as u64 + 1_000,
        &[0],
    );
    assert!(!peers[0].connected && peers[1].connected);
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            RoomEvent::ConnectFailed {
                participant,
                waited,
                ..
            } => Some((*participant, *waited)),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "reported once, for the patient: {events:?}"
    );
    assert_eq!(failed[0].0, patient);
    assert!(failed[0].1 >= timeout, "{:?}", failed[0].1);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RoomEvent::MediaStalled { .. })),
        "a participant never heard is not 'stalled': {events:?}"
    );
}
