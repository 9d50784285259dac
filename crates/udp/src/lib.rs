//! Batched UDP IO for the media paths (TURN relay workers, SFU workers):
//! `recvmmsg` fills up to [`BATCH`] slots in one system call, and the
//! datagrams a batch produces leave with one `sendmmsg` per socket; runs of
//! equal-size datagrams from one socket to one destination leave as a single
//! UDP GSO send (`UDP_SEGMENT`).
//!
//! Why our own ~200 lines of `libc` instead of a crate: quinn-udp batches
//! receives but sends to one destination per call (QUIC's shape), and nix's
//! `MultiHeaders` ties the buffers' lifetime to each call's results, which
//! does not fit one preallocated batch per thread reused across calls.
//!
//! Every slot keeps [`HEADROOM`] bytes in front of the datagram so a peer's
//! datagram becomes ChannelData for its client by writing a 4-byte header in
//! place: relayed payloads are never copied in user space.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Datagrams per `sendmmsg` at most (its headers live on the stack).
const SEND_CHUNK: usize = 64;
/// A receive with fewer free slots than this flushes queued sends first.
const MIN_FREE_SLOTS: usize = BATCH / 4;
/// Room in front of each received datagram (a ChannelData header).
pub const HEADROOM: usize = 4;
/// The largest UDP payload, plus headroom. Untouched slot pages are never
/// faulted in (no huge pages here), so only what datagrams use costs memory.
const SLOT: usize = HEADROOM + 65_536;
/// Largest GSO send the kernel takes (segments per call).
const GSO_MAX_SEGMENTS: usize = 64;
/// GSO segments must fit the path MTU (the kernel refuses, rather than
/// fragments, a larger one); media datagrams are ≤ 1200 bytes anyway.
const GSO_MAX_SEGMENT_SIZE: usize = 1200;

/// What one datagram to send carries.
#[derive(Debug)]
enum Payload {
    /// `bytes` of slot `slot` (a received datagram, possibly with its header).
    Slot {
        slot: usize,
        bytes: std::ops::Range<usize>,
    },
    Owned(Vec<u8>),
}

#[derive(Debug)]
struct Pending {
    fd: RawFd,
    to: SocketAddr,
    payload: Payload,
}

/// One thread's receive slots and the sends they produced.
///
/// Sends may be queued across several receives (from several sockets) and
/// flushed once: a receive then only fills the slots no queued send points
/// at, and flushes first when too few are left.
pub struct Batch {
    bufs: Vec<u8>,
    from: Vec<SocketAddr>,
    lens: Vec<usize>,
    pending: Vec<Pending>,
    gso: bool,
    /// Slots `0..reserved` hold datagrams queued sends point at.
    reserved: usize,
    /// The first slot of the last receive, and how many it asked for.
    base: usize,
    requested: usize,
    /// Datagrams dropped by flushes a receive made, not yet reported.
    dropped: usize,
    /// Scratch for [`Batch::send_chunk`], kept so sending allocates nothing.
    groups: Vec<(usize, usize)>,
    /// The C headers of both directions, built once: a receive or send then
    /// fills only the entries it uses instead of zeroing ~7 KiB of arrays
    /// per call (1 % of a relay's CPU at bulk load, in `memset`).
    recv: Box<RecvHeaders>,
    send: Box<SendHeaders>,
}

/// `recvmmsg` headers: entry `i` points at slot `i` and at name `i`.
struct RecvHeaders {
    hdrs: [libc::mmsghdr; BATCH],
    iov: [libc::iovec; BATCH],
    names: [libc::sockaddr_storage; BATCH],
}

/// `sendmmsg` headers; pointers are set per chunk.
struct SendHeaders {
    hdrs: [libc::mmsghdr; SEND_CHUNK],
    iov: [libc::iovec; SEND_CHUNK],
    names: [libc::sockaddr_storage; SEND_CHUNK],
    /// CMSG_SPACE(sizeof(u16)) is 24 bytes on 64-bit; u64s keep cmsghdr aligned.
    control: [[u64; 4]; SEND_CHUNK],
}

// SAFETY: the raw pointers in the headers point only into the batch's own
// heap allocations (`bufs` and the boxed header arrays), which move with it;
// nothing is shared with another thread.
unsafe impl Send for Batch {}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        let mut bufs = vec![0u8; BATCH * SLOT];
        no_huge_pages(&bufs);
        // SAFETY: plain-old-data C structs, all-zero is a valid value.
        let mut recv: Box<RecvHeaders> = Box::new(unsafe { std::mem::zeroed() });
        let RecvHeaders { hdrs, iov, names } = &mut *recv;
        for (i, ((h, v), name)) in hdrs.iter_mut().zip(iov.iter_mut()).zip(names).enumerate() {
            v.iov_base = bufs[i * SLOT + HEADROOM..].as_mut_ptr().cast();
            v.iov_len = SLOT - HEADROOM;
            h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        Batch {
            bufs,
            from: Vec::with_capacity(BATCH),
            lens: Vec::with_capacity(BATCH),
            pending: Vec::with_capacity(BATCH * 2),
            gso: true,
            reserved: 0,
            base: 0,
            requested: 0,
            dropped: 0,
            groups: Vec::with_capacity(SEND_CHUNK),
            recv,
            // SAFETY: as above.
            send: Box::new(unsafe { std::mem::zeroed() }),
        }
    }

    /// Never coalesces sends into GSO segments (e.g. when every datagram
    /// goes to one sink only because the destinations are simulated).
    pub fn without_gso(mut self) -> Self {
        self.gso = false;
        self
    }

    /// Receives up to [`BATCH`] datagrams without blocking (fewer when queued
    /// sends hold slots); `Ok(0)` never happens (an empty socket is
    /// `WouldBlock`). [`Batch::drained`] tells whether the socket was emptied.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.from.clear();
        self.lens.clear();
        if BATCH - self.reserved < MIN_FREE_SLOTS {
            self.dropped += self.send_pending();
        }
        self.base = self.reserved;
        self.requested = BATCH - self.base;
        let hdrs = &mut self.recv.hdrs[self.base..];
        for h in hdrs.iter_mut() {
            // The kernel overwrites it with the length it wrote.
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: every header points at its live iovec, name and slot of
        // the sizes given (set up in `new`); the kernel writes at most that.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                self.requested as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let RecvHeaders { hdrs, names, .. } = &*self.recv;
        let used = self.base..self.base + n;
        for (h, name) in hdrs[used.clone()].iter().zip(&names[used]) {
            let Some(from) = socket_addr(name) else {
                continue; // not IP: cannot happen on our sockets
            };
            self.from.push(from);
            self.lens.push(h.msg_len as usize);
        }
        Ok(self.from.len())
    }

    /// Whether the last receive emptied its socket (it got fewer datagrams
    /// than it had room for).
    pub fn drained(&self) -> bool {
        self.from.len() < self.requested
    }

    /// Whether sends are queued.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Datagram `i` of the last receive: its sender, and its slot, whose
    /// bytes `HEADROOM..HEADROOM + len` hold it.
    pub fn slot(&mut self, i: usize) -> (SocketAddr, &mut [u8], usize) {
        let s = self.base + i;
        let slot = &mut self.bufs[s * SLOT..(s + 1) * SLOT];
        (self.from[i], slot, self.lens[i])
    }

    /// Queues bytes `bytes` of datagram `i`'s slot (of the last receive)
    /// for `to` through `fd`; the slot is kept until the next flush.
    pub fn send_slot(
        &mut self,
        fd: RawFd,
        to: SocketAddr,
        i: usize,
        bytes: std::ops::Range<usize>,
    ) {
        let slot = self.base + i;
        self.reserved = self.reserved.max(slot + 1);
        self.pending.push(Pending {
            fd,
            to,
            payload: Payload::Slot { slot, bytes },
        });
    }

    /// Queues a datagram of our own (a STUN response, a Data indication).
    pub fn send_owned(&mut self, fd: RawFd, to: SocketAddr, data: Vec<u8>) {
        self.pending.push(Pending {
            fd,
            to,
            payload: Payload::Owned(data),
        });
    }

    /// Sends everything queued: one `sendmmsg` per socket, equal-size runs to
    /// one destination as one GSO send. UDP is best effort: what a full
    /// socket buffer refuses is dropped, like the network would; returns how
    /// many datagrams were dropped (including by flushes a receive made).
    pub fn flush(&mut self) -> usize {
        self.send_pending() + std::mem::take(&mut self.dropped)
    }

    fn send_pending(&mut self) -> usize {
        self.reserved = 0;
        if self.pending.is_empty() {
            return 0;
        }
        // Stable: datagrams through one socket keep their order.
        self.pending.sort_by_key(|p| p.fd);
        let mut dropped = 0;
        let mut start = 0;
        while start < self.pending.len() {
            let fd = self.pending[start].fd;
            let end = start
                + self.pending[start..]
                    .iter()
                    .take_while(|p| p.fd == fd)
                    .count();
            dropped += self.send_run(start, end);
            start = end;
        }
        self.pending.clear();
        dropped
    }

    /// Sends `pending[start..end]` (one socket), [`SEND_CHUNK`] at a time.
    fn send_run(&mut self, start: usize, end: usize) -> usize {
        let mut dropped = 0;
        let mut s = start;
        while s < end {
            let e = (s + SEND_CHUNK).min(end);
            dropped += self.send_chunk(s, e);
            s = e;
        }
        dropped
    }

    /// Sends `pending[start..end]` (one socket, at most [`SEND_CHUNK`]) in
    /// one `sendmmsg`, with no allocation: headers and names live in the
    /// batch's boxed arrays, groups in a scratch vector it keeps.
    fn send_chunk(&mut self, start: usize, end: usize) -> usize {
        let Batch {
            bufs,
            pending,
            groups,
            gso,
            send,
            ..
        } = self;
        let fd = pending[start].fd;
        let run = &pending[start..end];
        let SendHeaders {
            hdrs,
            iov,
            names,
            control,
        } = &mut **send;
        for (v, p) in iov.iter_mut().zip(run) {
            let b: &[u8] = match &p.payload {
                Payload::Slot { slot, bytes } => {
                    &bufs[slot * SLOT + bytes.start..slot * SLOT + bytes.end]
                }
                Payload::Owned(v) => v,
            };
            v.iov_base = b.as_ptr() as *mut libc::c_void;
            v.iov_len = b.len();
        }
        // Group: consecutive datagrams to one destination, all of one size
        // but the last (which may be shorter), become one GSO message.
        let len = |k: usize| iov[k].iov_len;
        groups.clear();
        let mut i = 0;
        while i < run.len() {
            let size = len(i);
            let mut j = i + 1;
            if *gso && size > 0 && size <= GSO_MAX_SEGMENT_SIZE {
                while j < run.len()
                    && j - i < GSO_MAX_SEGMENTS
                    && run[j].to == run[i].to
                    && len(j - 1) == size
                    && len(j) <= size
                    && len(j) > 0
                    && (j - i + 1) * size <= 65_000
                {
                    j += 1;
                }
            }
            groups.push((i, j));
            i = j;
        }
        for (k, &(i, j)) in groups.iter().enumerate() {
            let h = &mut hdrs[k].msg_hdr;
            h.msg_namelen = write_sockaddr(run[i].to, &mut names[k]);
            h.msg_name = (&mut names[k] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = iov[i..].as_mut_ptr();
            h.msg_iovlen = j - i;
            h.msg_flags = 0;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            if j - i > 1 {
                let segment = iov[i].iov_len as u16;
                // SAFETY: `control[k]` is large enough for one u16 cmsg and
                // aligned by construction of the header we write into it.
                unsafe { write_gso_cmsg(h, &mut control[k], segment) };
            }
        }
        let hdrs = &mut hdrs[..groups.len()];
        for h in hdrs.iter_mut() {
            h.msg_len = 0;
        }
        let mut sent = 0;
        while sent < hdrs.len() {
            // SAFETY: every header points at live names, iovecs and control
            // buffers built above for exactly these lengths.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[sent..].as_mut_ptr(),
                    (hdrs.len() - sent) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let e = io::Error::last_os_error();
                if n < 0 && e.raw_os_error() == Some(libc::EIO) && *gso {
                    // No GSO on this path (old kernel, odd device): go without.
                    *gso = false;
                }
                // Skip the message the kernel refused and go on with the rest.
                sent += 1;
                continue;
            }
            sent += n as usize;
        }
        hdrs.iter().filter(|h| h.msg_len == 0).count()
    }
}

/// Writes `addr` as a C socket address into `s`, returning its length
/// (socket2's conversion would zero all 128 bytes of the storage first).
fn write_sockaddr(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let p = (s as *mut libc::sockaddr_storage).cast::<u8>();
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in.
            unsafe { p.cast::<libc::sockaddr_in>().write(sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { p.cast::<libc::sockaddr_in6>().write(sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Asks the kernel not to back `buf` with transparent huge pages: the slots
/// are mostly untouched (a 200-byte datagram uses one 4 KiB page of its 64 KiB
/// slot), and with THP the first datagram would fault in and zero a whole
/// 2 MiB page instead (seen in profiles, and in RSS per worker).
fn no_huge_pages(buf: &[u8]) {
    const PAGE: usize = 4096;
    let start = (buf.as_ptr() as usize).next_multiple_of(PAGE);
    let end = (buf.as_ptr() as usize + buf.len()) / PAGE * PAGE;
    if end > start {
        // SAFETY: advice on whole pages inside our own live allocation; it
        // changes how they are backed, not their contents.
        unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end - start,
                libc::MADV_NOHUGEPAGE,
            );
        }
    }
}

/// Waits up to `timeout` for `fd` to be readable (`poll`): for loops that
/// own a thread and have timers of their own, where a readiness reactor
/// would add nothing. False on timeout.
pub fn wait_readable(fd: RawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut p, 1, ms) } {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// The IP address the kernel wrote into `s`.
fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes one `UDP_SEGMENT` control message (GSO segment size) into `buf`
/// and points `h` at it.
///
/// # Safety
/// `buf` must outlive every use of `h`.
unsafe fn write_gso_cmsg(h: &mut libc::msghdr, buf: &mut [u64; 4], segment: u16) {
    h.msg_control = buf.as_mut_ptr().cast();
    // SAFETY: the caller guarantees the buffer size.
    unsafe {
        h.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (a, b)
    }

    #[test]
    fn receives_a_batch_with_headroom_and_senders() {
        let (a, b) = pair();
        for i in 0..5u8 {
            a.send_to(&[i; 100], b.local_addr().unwrap()).unwrap();
        }
        let mut batch = Batch::new();
        let mut got = Vec::new();
        // Loopback delivery is synchronous: all five are queued already.
        while got.len() < 5 {
            let n = batch.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                let (from, slot, len) = batch.slot(i);
                assert_eq!(from, a.local_addr().unwrap());
                got.push((slot[HEADROOM], len));
            }
        }
        assert_eq!(got, (0..5).map(|i| (i, 100)).collect::<Vec<_>>());
        let e = batch.recv(b.as_raw_fd()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn sends_runs_in_order_with_gso_and_mixed_destinations() {
        let (a, b) = pair();
        let (_, c) = pair();
        let mut batch = Batch::new();
        // 5 equal datagrams and a short tail to b (one GSO send), one to c
        // in between through the same socket, and an owned one.
        for i in 0..5u8 {
            batch.send_owned(a.as_raw_fd(), b.local_addr().unwrap(), vec![i; 300]);
        }
        batch.send_owned(a.as_raw_fd(), b.local_addr().unwrap(), vec![9; 10]);
        batch.send_owned(a.as_raw_fd(), c.local_addr().unwrap(), vec![7; 50]);
        assert_eq!(batch.flush(), 0);
        let mut buf = [0u8; 2000];
        for i in 0..5u8 {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(
                (n, buf[0]),
                (300, i),
                "GSO segments arrive as datagrams, in order"
            );
        }
        assert_eq!(b.recv(&mut buf).unwrap(), 10);
        assert_eq!(c.recv(&mut buf).unwrap(), 50);
    }

    #[test]
    fn sends_and_receives_over_ipv6_with_the_sender_named() {
        let Ok(a) = std::net::UdpSocket::bind("[::1]:0") else {
            return; // no IPv6 loopback on this host
        };
        let b = std::net::UdpSocket::bind("[::1]:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut batch = Batch::new();
        for i in 0..3u8 {
            batch.send_owned(a.as_raw_fd(), b.local_addr().unwrap(), vec![i; 64]);
        }
        assert_eq!(batch.flush(), 0);
        let mut got = Vec::new();
        while got.len() < 3 {
            assert!(wait_readable(b.as_raw_fd(), Duration::from_secs(5)).unwrap());
            let n = batch.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                let (from, slot, len) = batch.slot(i);
                assert_eq!(from, a.local_addr().unwrap());
                got.push((slot[HEADROOM], len));
            }
        }
        assert_eq!(got, vec![(0, 64), (1, 64), (2, 64)]);
    }

    #[test]
    fn a_refused_datagram_is_counted_and_the_rest_still_go() {
        let (a, b) = pair();
        let mut batch = Batch::new();
        let to = b.local_addr().unwrap();
        batch.send_owned(a.as_raw_fd(), to, vec![1; 10]);
        // An IPv6 destination on an IPv4 socket: the kernel refuses it.
        batch.send_owned(a.as_raw_fd(), "[::1]:9".parse().unwrap(), vec![2; 20]);
        batch.send_owned(a.as_raw_fd(), to, vec![3; 30]);
        assert_eq!(batch.flush(), 1);
        let mut buf = [0u8; 64];
        assert_eq!(b.recv(&mut buf).unwrap(), 10);
        assert_eq!(b.recv(&mut buf).unwrap(), 30);
    }

    #[test]
    fn slot_payloads_are_sent_from_the_receive_buffer() {
        let (a, b) = pair();
        let (x, y) = pair();
        a.send_to(b"hello world", b.local_addr().unwrap()).unwrap();
        let mut batch = Batch::new();
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), 1);
        let (_, slot, len) = batch.slot(0);
        slot[..HEADROOM].copy_from_slice(&[0x40, 0, 0, len as u8]);
        batch.send_slot(x.as_raw_fd(), y.local_addr().unwrap(), 0, 0..HEADROOM + len);
        assert_eq!(batch.flush(), 0);
        let mut buf = [0u8; 64];
        let n = y.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x40\x00\x00\x0bhello world");
    }

    #[test]
    fn queued_slot_sends_survive_later_receives_until_the_flush() {
        let (a, b) = pair();
        let (out, sink) = pair();
        let mut batch = Batch::new();
        // 100 one-datagram receives (as from 100 relay sockets), each
        // queuing a send of its slot: more than the batch has slots, so some
        // receives must flush first; every datagram still leaves intact and
        // in order, none overwritten by a later receive.
        for i in 0..100u8 {
            a.send_to(&[i; 40], b.local_addr().unwrap()).unwrap();
            assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), 1);
            assert!(
                batch.drained(),
                "one datagram is less than the room asked for"
            );
            batch.send_slot(
                out.as_raw_fd(),
                sink.local_addr().unwrap(),
                0,
                HEADROOM..HEADROOM + 40,
            );
            assert!(batch.has_pending());
        }
        assert_eq!(batch.flush(), 0);
        assert!(!batch.has_pending());
        let mut buf = [0u8; 64];
        for i in 0..100u8 {
            let n = sink.recv(&mut buf).unwrap();
            assert_eq!((n, buf[0], buf[39]), (40, i, i));
        }
    }

    #[test]
    fn a_full_receive_is_not_drained() {
        let (a, b) = pair();
        let mut batch = Batch::new();
        for i in 0..BATCH as u8 + 1 {
            a.send_to(&[i; 8], b.local_addr().unwrap()).unwrap();
        }
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), BATCH);
        assert!(!batch.drained());
        assert_eq!(batch.recv(b.as_raw_fd()).unwrap(), 1);
        assert!(batch.drained());
    }
}
