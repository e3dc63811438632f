//! The reply queue, over a scripted fake socket: what happens when
//! `send_to` says WouldBlock (on loopback it practically never does, so a
//! real socket cannot show it); and the plumbing of what the kernel says
//! with a datagram (its drop count, the address to answer from).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use super::*;
use crate::net::MAX_DATAGRAM;
use crate::server::connection::test_readiness::{BOTH, WRITABLE};
use crate::server::extras::udp_guard::GuardConfig;

/// A datagram the fake socket will receive, with what the kernel says of it.
struct Incoming {
    payload: Vec<u8>,
    from: SocketAddr,
    reply_from: Option<ReplyFrom>,
    kernel_drops: Option<u32>,
}

/// A socket whose receives and sends are scripted. With the receive script
/// empty a receive says WouldBlock; with the send script empty a send
/// succeeds.
#[derive(Default)]
struct Fake {
    incoming: RefCell<VecDeque<Incoming>>,
    send_results: RefCell<VecDeque<io::ErrorKind>>,
    sent: RefCell<Vec<(Vec<u8>, SocketAddr)>>,
    /// The source each sent reply named, in order.
    sent_from: RefCell<Vec<Option<ReplyFrom>>>,
}

impl Fake {
    /// The next send fails with `kind` (WouldBlock: the send buffer is full).
    fn fail_next_send(&self, kind: io::ErrorKind) {
        self.send_results.borrow_mut().push_back(kind);
    }
}

impl Datagrams for Fake {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        let next = self
            .incoming
            .borrow_mut()
            .pop_front()
            .ok_or(io::ErrorKind::WouldBlock)?;
        buf[..next.payload.len()].copy_from_slice(&next.payload);
        Ok(Received {
            len: next.payload.len(),
            peer: next.from,
            reply_from: next.reply_from,
            kernel_drops: next.kernel_drops,
        })
    }

    fn send(
        &mut self,
        payload: &[u8],
        to: SocketAddr,
        from: Option<ReplyFrom>,
    ) -> io::Result<usize> {
        if let Some(kind) = self.send_results.borrow_mut().pop_front() {
            return Err(kind.into());
        }
        self.sent.borrow_mut().push((payload.to_vec(), to));
        self.sent_from.borrow_mut().push(from);
        Ok(payload.len())
    }
}

/// An ordinary client port (the guard refuses ports below 1024).
fn peer(n: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000 + n))
}

/// A UDP echo over the fake with `datagrams` waiting.
fn echo(datagrams: Vec<Vec<u8>>) -> UdpEcho<Fake> {
    let fake = Fake::default();
    for (i, payload) in datagrams.into_iter().enumerate() {
        fake.incoming.borrow_mut().push_back(Incoming {
            payload,
            from: peer(i as u16),
            reply_from: None,
            kernel_drops: None,
        });
    }
    UdpEcho::new(fake, peer(9999))
}

/// Serves an event, then turns from the ready queue (which bring no new
/// readiness) until the socket has nothing more to read (bounded), with
/// the rate limits off.
fn serve(echo: &mut UdpEcho<Fake>, event: Readiness) {
    let config = GuardConfig {
        rate: 0,
        rate_total: 0,
        ..GuardConfig::default()
    };
    let mut guard = UdpGuard::new(&config, Instant::now());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut readiness = event;
    for _ in 0..100 {
        if echo.on_ready(readiness, &mut buf, &mut guard) == Turn::Wait {
            return;
        }
        readiness = Readiness::NONE;
    }
    panic!("the socket never stopped yielding");
}

#[test]
fn a_reply_that_would_block_is_queued_and_sent_in_order_later() {
    let mut udp = echo(vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    udp.socket.fail_next_send(io::ErrorKind::WouldBlock);
    serve(&mut udp, BOTH);
    assert!(
        udp.socket.sent.borrow().is_empty(),
        "nothing goes out while blocked"
    );
    assert_eq!(udp.counters.received, 3);
    // The socket becomes writable: the queue drains, oldest first, each
    // reply to its own sender.
    serve(&mut udp, WRITABLE);
    let sent = udp.socket.sent.borrow().clone();
    assert_eq!(
        sent,
        vec![
            (b"one".to_vec(), peer(0)),
            (b"two".to_vec(), peer(1)),
            (b"three".to_vec(), peer(2)),
        ]
    );
    assert_eq!(udp.counters.sent, 3);
    assert_eq!(udp.counters.dropped(), 0);
}

#[test]
fn the_queue_is_bounded_in_datagrams_and_counts_what_it_drops() {
    let extra = 10;
    let datagrams = (0..QUEUE_DATAGRAMS + extra)
        .map(|i| vec![i as u8; 8])
        .collect();
    let mut udp = echo(datagrams);
    udp.socket.fail_next_send(io::ErrorKind::WouldBlock);
    serve(&mut udp, BOTH);
    assert_eq!(udp.counters.dropped_queue_full, extra as u64);
    serve(&mut udp, WRITABLE);
    assert_eq!(udp.counters.sent, QUEUE_DATAGRAMS as u64);
    assert_eq!(
        udp.counters.received,
        udp.counters.sent + udp.counters.dropped()
    );
}

#[test]
fn the_queue_is_bounded_in_bytes() {
    let size = 60_000;
    let datagrams = (0..30).map(|i| vec![i as u8; size]).collect();
    let mut udp = echo(datagrams);
    udp.socket.fail_next_send(io::ErrorKind::WouldBlock);
    serve(&mut udp, BOTH);
    let fits = (QUEUE_BYTES / size) as u64;
    assert_eq!(udp.counters.dropped_queue_full, 30 - fits);
    serve(&mut udp, WRITABLE);
    assert_eq!(udp.counters.sent, fits);
}

#[test]
fn replies_still_queued_at_shutdown_are_counted() {
    let mut udp = echo(vec![b"late".to_vec(), b"later".to_vec()]);
    udp.socket.fail_next_send(io::ErrorKind::WouldBlock);
    serve(&mut udp, BOTH);
    udp.close();
    assert_eq!(udp.counters.dropped_shutdown, 2);
    assert_eq!(
        udp.counters.received,
        udp.counters.sent + udp.counters.dropped()
    );
}

#[test]
fn a_failed_send_drops_only_that_reply() {
    let mut udp = echo(vec![b"a".to_vec(), b"b".to_vec()]);
    udp.socket.fail_next_send(io::ErrorKind::ConnectionRefused);
    serve(&mut udp, BOTH);
    assert_eq!(udp.counters.dropped_send_error, 1);
    assert_eq!(*udp.socket.sent.borrow(), vec![(b"b".to_vec(), peer(1))]);
}

/// The kernel's count comes with datagrams, from the socket's creation:
/// the counter adds what it grew by, across the wrap at u32::MAX, and a
/// datagram without it (Linux leaves it out while it is 0) changes nothing
/// but, the first, sets the baseline at 0.
#[test]
fn the_kernel_drop_count_is_added_up_across_datagrams_and_its_wrap() {
    let mut udp = echo(Vec::new());
    for drops in [
        None,
        Some(5),
        Some(5),
        None,
        Some(7),
        Some(u32::MAX),
        Some(2),
    ] {
        udp.socket.incoming.borrow_mut().push_back(Incoming {
            payload: b"x".to_vec(),
            from: peer(1),
            reply_from: None,
            kernel_drops: drops,
        });
    }
    serve(&mut udp, BOTH);
    // 5, then 2 more (7), then u32::MAX - 7, then 3 across the wrap.
    assert_eq!(udp.counters.dropped_by_kernel, u64::from(u32::MAX) + 3);
    assert_eq!(udp.counters.received, 7);
    assert_eq!(udp.counters.dropped(), 0, "not among the received");
}

/// A socket a service manager kept open across restarts carries the drops
/// of earlier runs in its count: the first datagram's count is the
/// baseline, and only what the count grows by after it is this run's.
#[test]
fn the_first_kernel_drop_count_is_the_baseline() {
    let mut udp = echo(Vec::new());
    for drops in [Some(1_000), None, Some(1_000), Some(1_003)] {
        udp.socket.incoming.borrow_mut().push_back(Incoming {
            payload: b"x".to_vec(),
            from: peer(1),
            reply_from: None,
            kernel_drops: drops,
        });
    }
    serve(&mut udp, BOTH);
    assert_eq!(udp.counters.dropped_by_kernel, 3);
    assert_eq!(udp.counters.received, 4);
}

/// Each reply names the source its datagram said, queued or not.
#[test]
fn a_reply_goes_out_from_the_address_its_datagram_was_sent_to() {
    let a = ReplyFrom::V4("127.0.0.2".parse().unwrap());
    let b = ReplyFrom::V6 {
        addr: "::ffff:127.0.0.3".parse().unwrap(),
        ifindex: 0,
    };
    let mut udp = echo(Vec::new());
    for reply_from in [Some(a), Some(b), None, Some(a)] {
        udp.socket.incoming.borrow_mut().push_back(Incoming {
            payload: b"x".to_vec(),
            from: peer(1),
            reply_from,
            kernel_drops: None,
        });
    }
    udp.socket.fail_next_send(io::ErrorKind::WouldBlock);
    serve(&mut udp, BOTH);
    serve(&mut udp, WRITABLE);
    assert_eq!(
        *udp.socket.sent_from.borrow(),
        vec![Some(a), Some(b), None, Some(a)]
    );
}
