//! Simulcast, loss repair and quality events, end to end through the SFU
//! worker with str0m-based synthetic peers ([`continuum_sfu::sim`]) on a
//! simulated network and clock.

use continuum_sfu::sim::{MediaSpec, SimNet};
use continuum_sfu::{RoomEvent, Worker, WorkerConfig};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SFU: &str = "10.255.0.1:7401";

fn net(cfg: impl FnOnce(&mut WorkerConfig)) -> (SimNet, Instant) {
    let sfu: SocketAddr = SFU.parse().unwrap();
    let mut c = WorkerConfig::new(sfu);
    cfg(&mut c);
    (SimNet::new(Worker::new(c), sfu), Instant::now())
}

fn run(net: &mut SimNet, now: &mut Instant, for_: Duration) {
    let end = *now + for_;
    while *now < end {
        *now += Duration::from_millis(2);
        net.step(*now);
    }
}

/// Received bytes per second of peer `i` over `window`.
fn rate(net: &mut SimNet, now: &mut Instant, i: usize, window: Duration) -> u64 {
    let before = net.peers[i].bytes_received;
    run(net, now, window);
    (net.peers[i].bytes_received - before) * 8 / window.as_secs().max(1)
}

#[test]
fn a_visit_gets_one_layer_each_and_the_requested_size_is_honoured() {
    let (mut net, mut now) = net(|_| {});
    let a = net
        .join("t/visit", MediaSpec::camera_and_microphone(), now)
        .unwrap();
    let b = net
        .join("t/visit", MediaSpec::camera_and_microphone(), now)
        .unwrap();
    run(&mut net, &mut now, Duration::from_secs(6));
    for p in [a, b] {
        assert!(net.peers[p].connected, "peer {p} connected");
        let (got, expected) = net.peers[p].received_and_expected();
        assert!(got > 500, "peer {p} received {got} packets");
        assert!(
            got * 1000 >= expected * 995,
            "no loss on a clean network: {got}/{expected}"
        );
    }
    // No cap: with the initial 800 kbit/s estimate, not the 1.5 Mbit/s layer.
    let full = rate(&mut net, &mut now, b, Duration::from_secs(3));
    assert!(full > 300_000, "B receives A's video: {full} bit/s");
    // B shows A as a thumbnail: the lowest layer only.
    let id_b = net.participant(b).unwrap();
    net.worker.set_max_layer(id_b, None, 0).unwrap();
    run(&mut net, &mut now, Duration::from_secs(2));
    let thumb = rate(&mut net, &mut now, b, Duration::from_secs(3));
    assert!(
        thumb < full / 2 && thumb > 100_000,
        "thumbnail rate {thumb} bit/s vs {full} before"
    );
    assert!(net.worker.stats.layer_switches >= 1);
    assert!(
        net.worker.stats.keyframe_requests >= 2,
        "PLI on subscribe and on the switch"
    );
    let (got, expected) = net.peers[b].received_and_expected();
    assert!(
        got * 1000 >= expected * 995,
        "switches leave no holes: {got}/{expected}"
    );
}

#[test]
fn loss_is_repaired_by_rtx_and_reported_as_degraded_quality() {
    let (mut net, mut now) = net(|c| {
        // Each one-second loss sample counts ~150 packets, so 10 % loss reads
        // 10 ± 2.5 %: the threshold sits 3 standard deviations below, else one
        // low sample in the hold window resets it (a CI run saw 4.1 %).
        c.quality.max_loss = 0.02;
        c.quality.hold = Duration::from_secs(3);
    });
    let a = net
        .join("t/visit", MediaSpec::camera_and_microphone(), now)
        .unwrap();
    let b = net
        .join("t/visit", MediaSpec::camera_and_microphone(), now)
        .unwrap();
    run(&mut net, &mut now, Duration::from_secs(3));
    assert!(net.peers[a].connected && net.peers[b].connected);
    // 10% loss towards B.
    let (got_before, expected_before) = net.peers[b].video_received_and_expected();
    net.downlink_loss[b] = 0.10;
    run(&mut net, &mut now, Duration::from_secs(8));
    let s = net.worker.stats;
    assert!(s.nacks_received > 0, "B's NACKs reach the SFU");
    assert!(s.rtx_sent > 0, "the SFU retransmits from its RTX cache");
    // Video over the lossy window only (audio is not retransmitted).
    let (got, expected) = net.peers[b].video_received_and_expected();
    let (got, expected) = (got - got_before, expected - expected_before);
    assert!(
        got as f64 >= expected as f64 * 0.99,
        "RTX repairs the 10% loss (0.90 without it): {got}/{expected}"
    );
    let degraded = net.events.iter().find_map(|e| match e {
        RoomEvent::QualityDegraded {
            identity,
            reasons,
            sample,
            ..
        } => Some((identity.clone(), reasons.clone(), *sample)),
        _ => None,
    });
    let (who, reasons, sample) = degraded.expect("quality.degraded after the hold time");
    assert_eq!(who, "peer-1");
    assert!(reasons.contains(&"loss"), "{reasons:?}");
    assert!(sample.loss.unwrap() > 0.02, "{sample:?}");
    // The network heals: recovered after the hold time.
    net.downlink_loss[b] = 0.0;
    run(&mut net, &mut now, Duration::from_secs(8));
    assert!(
        net.events.iter().any(
            |e| matches!(e, RoomEvent::QualityRecovered { identity, .. } if identity == "peer-1")
        ),
        "quality.recovered once the loss stops"
    );
}

#[test]
fn layers_nobody_takes_are_paused_at_the_publisher_and_resume_when_wanted() {
    // Bandwidth for every layer: only B's requested size limits what it takes.
    let (mut net, mut now) = net(|c| c.initial_bwe_bps = 20_000_000);
    let a = net
        .join("t/visit", MediaSpec::camera_and_microphone(), now)
        .unwrap();
    let b = net
        .join("t/visit", MediaSpec::camera_and_microphone(), now)
        .unwrap();
    run(&mut net, &mut now, Duration::from_secs(5));
    let sent = |net: &mut SimNet, now: &mut Instant| {
        let before = net.peers[a].packets_sent;
        run(net, now, Duration::from_secs(2));
        net.peers[a].packets_sent - before
    };
    let all_layers = sent(&mut net, &mut now);
    assert_eq!(net.peers[a].layer_active("f"), Some(true));

    // B shows A as a thumbnail: nobody takes A's upper layers, so after the
    // hold A is asked to stop sending them; B keeps getting the lowest.
    let id_b = net.participant(b).unwrap();
    net.worker.set_max_layer(id_b, None, 0).unwrap();
    run(&mut net, &mut now, Duration::from_secs(5));
    assert_eq!(net.peers[a].layer_active("q"), Some(true));
    assert_eq!(net.peers[a].layer_active("h"), Some(false));
    assert_eq!(net.peers[a].layer_active("f"), Some(false));
    assert!(net.worker.stats.layers_paused >= 2);
    let lowest_only = sent(&mut net, &mut now);
    assert!(
        lowest_only * 2 < all_layers,
        "A sends {lowest_only} packets in 2 s with two layers paused, {all_layers} with all"
    );
    let thumb = rate(&mut net, &mut now, b, Duration::from_secs(2));
    assert!(
        thumb > 100_000,
        "B still gets A's lowest layer: {thumb} bit/s"
    );

    // B wants A big again: what its bandwidth estimate (which settled on
    // the thumbnail meanwhile) allows resumes at once; the top layer follows
    // when the estimate has probed up to it.
    net.worker.set_max_layer(id_b, None, 2).unwrap();
    run(&mut net, &mut now, Duration::from_secs(2));
    assert_eq!(net.peers[a].layer_active("h"), Some(true));
    assert!(net.worker.stats.layers_resumed >= 1);
    let big = rate(&mut net, &mut now, b, Duration::from_secs(3));
    assert!(
        big > thumb * 2,
        "B gets A's upper layers again: {big} vs {thumb} bit/s"
    );
    let (got, expected) = net.peers[b].video_received_and_expected();
    assert!(
        got * 1000 >= expected * 995,
        "pauses and resumes leave no holes: {got}/{expected}"
    );
}

#[test]
fn clients_hear_of_tracks_and_quality_and_choose_what_to_receive() {
    use continuum_sfu::Notice;
    use str0m::media::MediaKind;
    let (mut net, mut now) = net(|_| {});
    let a = net
        .join("t/visit", MediaSpec::camera_and_microphone(), now)
        .unwrap();
    run(&mut net, &mut now, Duration::from_secs(2));
    let b = net
        .join("t/visit", MediaSpec::camera_and_microphone(), now)
        .unwrap();
    run(&mut net, &mut now, Duration::from_secs(4));
    let (id_a, id_b) = (net.participant(a).unwrap(), net.participant(b).unwrap());
    let published = |to, origin| {
        let mut kinds: Vec<MediaKind> = net
            .notices
            .iter()
            .filter_map(|(t, n)| match n {
                Notice::TrackPublished {
                    origin: o, kind, ..
                } if *t == to && *o == origin => Some(*kind),
                _ => None,
            })
            .collect();
        kinds.sort_by_key(|k| format!("{k:?}"));
        kinds
    };
    // B joined after A published: told on joining; A is told when B's open.
    assert_eq!(
        published(id_b, id_a),
        vec![MediaKind::Audio, MediaKind::Video]
    );
    assert_eq!(
        published(id_a, id_b),
        vec![MediaKind::Audio, MediaKind::Video]
    );
    let own_quality = net
        .notices
        .iter()
        .filter(|(t, n)| {
            *t == id_b && matches!(n, Notice::Quality { origin, .. } if *origin == id_b)
        })
        .count();
    assert!(own_quality >= 2, "B hears its own quality every second");
    assert!(
        net.notices
            .iter()
            .any(|(t, n)| *t == id_a
                && matches!(n, Notice::Quality { origin, .. } if *origin == id_b)),
        "A hears B's rating"
    );

    // B stops receiving A's video; A's audio still flows.
    assert_eq!(
        net.worker
            .set_subscribed(id_b, id_a, Some(MediaKind::Video), false)
            .unwrap(),
        1
    );
    run(&mut net, &mut now, Duration::from_millis(500));
    let (video_before, _) = net.peers[b].video_received_and_expected();
    let all_before = net.peers[b].packets_received;
    run(&mut net, &mut now, Duration::from_secs(2));
    let (video_after, _) = net.peers[b].video_received_and_expected();
    assert_eq!(video_after, video_before, "no video while unsubscribed");
    assert!(
        net.peers[b].packets_received > all_before + 80,
        "audio goes on"
    );

    // Subscribed again: video resumes at a keyframe, its numbering
    // continuing where it stopped (no gap for B to NACK).
    net.worker
        .set_subscribed(id_b, id_a, Some(MediaKind::Video), true)
        .unwrap();
    run(&mut net, &mut now, Duration::from_secs(2));
    let (video_resumed, expected) = net.peers[b].video_received_and_expected();
    assert!(video_resumed > video_after + 50, "video resumes");
    assert!(
        video_resumed * 1000 >= expected * 995,
        "no hole in the numbering: {video_resumed}/{expected}"
    );

    // A leaves: B hears its tracks go.
    net.worker.leave(id_a);
    run(&mut net, &mut now, Duration::from_millis(100));
    let gone = net
        .notices
        .iter()
        .filter(|(t, n)| {
            *t == id_b && matches!(n, Notice::TrackUnpublished { origin, .. } if *origin == id_a)
        })
        .count();
    assert_eq!(gone, 2);
}
