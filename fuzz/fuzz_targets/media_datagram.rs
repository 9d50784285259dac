//! Anything can arrive on the media port: the SFU worker's demultiplexing
//! (STUN ufrag lookup, str0m's datagram classification) must drop it cleanly.
#![no_main]
use continuum_sfu::{Worker, WorkerConfig};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let local: SocketAddr = "127.0.0.1:7401".parse().unwrap();
    let mut worker = Worker::new(WorkerConfig::new(local));
    let source: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    assert!(!worker.handle_datagram(Instant::now(), source, local, data), "no participant can accept it");
    assert_eq!(worker.stats.unknown_datagrams, 1);
    let _ = worker.drive(Instant::now());
});
