//! echod's server: an RFC 862 echo service, TCP and UDP, on one
//! single-threaded mio event loop.
//!
//! RFC 862 is short: a TCP server sends back every byte it receives until
//! the client closes; a UDP server answers each datagram with the same
//! data. Doing that well for many clients at once, in one thread, with
//! bounded memory and without losing a byte, is a compact lesson in
//! nonblocking I/O. This crate is written to be read as one: it is the
//! whole server and nothing else (the `echod` command, its command line
//! and its tools live in the `echod` package beside it, and this crate
//! never imports them).
//!
//! ```no_run
//! use echod_server::server::{Server, ServerConfig};
//!
//! let server = Server::bind(&ServerConfig::default())?;
//! println!("echoing on {:?}", server.tcp_addrs());
//! let outcome = server.run()?; // until stopped; says how it ended
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Reading order
//!
//! The loop and the connection first: they are the lesson. Then what they
//! stand on, then setup and shutdown, and the extras last: each of those
//! is reached from one place in the core, and the server echoes correctly
//! without them.
//!
//! 1. [`server`] (`server/mod.rs`): the loop itself: poll, dispatch by
//!    token, accept, close; the ready queue (`ready.rs`) that serves what
//!    stopped early, and the timers (`timers.rs`) that set the poll's
//!    timeout.
//! 2. `server/connection.rs`: one TCP peer: its `State`, where its pending
//!    bytes are (`Pending`: nothing, a ring or a pipe), and what the loop
//!    may ask of it; `connection/turn.rs`: one turn of it, the state
//!    machine's steps and the copy path (scratch buffer, then ring).
//! 3. [`ring`]: the byte ring buffer that holds what a socket would not
//!    take, and `server/buffers.rs`, the scratch buffer and spare rings the
//!    loop shares among connections.
//! 4. `server/listener.rs`: accepting, and what each accept error means;
//!    `server/sources.rs`: connections per source and their limit.
//! 5. `server/udp.rs`: datagram echo with a bounded reply queue, and
//!    `udp/socket.rs`, its socket's control messages (the kernel's drops,
//!    the address to answer from).
//! 6. [`net`]: binding sockets (dual-stack IPv6), socket options, bind
//!    errors as sentences, and `Readiness`, what a socket is known to be
//!    ready for.
//! 7. Setup and teardown: `server/config.rs` (what the server is asked to
//!    do, how a run ends), `server/bind.rs` (the sockets, the descriptor
//!    budget), `server/shutdown.rs` (grace, cut, receipt),
//!    `server/signals.rs`, `server/stats.rs`, `server/clock.rs`.
//! 8. The extras, `server/extras/`: `splice.rs` (bulk streams echoed
//!    through a pipe without a copy, Linux), `udp_guard.rs` (which
//!    datagrams not to answer: CERT CA-1996-01 loops, reflection, rate
//!    limits), `activation.rs` (sockets passed by systemd).
//!
//! # A primer on the loop
//!
//! **Readiness, not completion.** `mio` (epoll on Linux, kqueue on BSD and
//! macOS) tells the program that a socket *may* now be read or written; the
//! program then makes the call itself, and the call may still say
//! `WouldBlock`. Completion-based APIs (io_uring, Windows IOCP) work the
//! other way round: you hand over a buffer and are told when it is done.
//!
//! **Edge-triggered: drain until WouldBlock.** mio reports a *change* of
//! readiness once. If a connection reads only part of what is waiting and
//! then waits for another event, it may wait forever: no new edge comes
//! for bytes that were already there. So each handler reads (and writes)
//! until the kernel says `WouldBlock`, or remembers that it stopped early
//! and is served again from a ready queue before the loop blocks.
//! Connections here remember their readiness per direction
//! (`Readiness`), which is also what lets a connection whose buffer was
//! full start reading again as soon as a write frees space.
//!
//! **A short read is as good as WouldBlock.** When a TCP read returns
//! fewer bytes than asked for, the kernel had no more: bytes arriving later
//! bring a new edge, so echod skips the read that would only say
//! WouldBlock (one system call per message saved). The exceptions: a FIN
//! that arrived with the bytes (its edge is the one being served, so only
//! another read can report the EOF), and TCP urgent data (Linux stops a
//! read short at the urgent mark with more queued behind it; the event says
//! `priority`, and until a read says WouldBlock a short one proves
//! nothing). Likewise a short write means the send
//! buffer is full, and a writable edge will follow when it drains.
//!
//! **Spurious events are normal.** An event may arrive when nothing can be
//! done (readiness that a read in the same turn already used up, a turn
//! from the ready queue for a slab key that a new connection now holds).
//! Every handler must treat "WouldBlock right away" as harmless.
//!
//! **Read-closed is a hint.** A peer's FIN shows up as a readable event;
//! the bytes before it must still be read, and only a read returning 0
//! says the stream has ended. Half-close is part of the echo contract: a
//! client that shuts down its sending side still receives every byte it
//! sent, and then the server's FIN.
//!
//! **A FIN means "you have every byte".** When the server closes on its
//! own (idle, shutdown) while it holds echo bytes it will not send, it
//! closes with an RST (`SO_LINGER` 0) instead, so that the client sees an
//! error rather than a short echo ending cleanly.
//!
//! # Layout
//!
//! Paths are relative to this crate, `server/` in the repository.
//!
//! ```text
//! src/lib.rs                        this tour
//! src/ring.rs                       Ring: fixed-capacity byte ring, vectored I/O (std only)
//! src/net.rs                        binding, socket options, bind errors with hints,
//!                                   Readiness, RFC 862 port, UDP sizes, would_block()
//! src/net/udp_buffers.rs           UDP socket buffers: enlarged, never shrunk, reported
//! src/server/mod.rs                 Server: Poll, tokens, the one loop, accept, close
//! src/server/ready.rs               the ready queue: sources that stopped early, once each
//! src/server/timers.rs              the poll timeout; accept retry, idle and drain sweep
//! src/server/connection.rs          Connection, State, Pending: what the loop asks of a peer
//! src/server/connection/turn.rs     one turn: the state machine's steps, the copy path
//! src/server/connection/tests.rs    the state machine over a scripted fake stream
//! src/server/connection/fuzz.rs     property test: random peers, every byte accounted for
//! src/server/connection/splice_tests.rs  the pipe path over real sockets (Linux)
//! src/server/buffers.rs             the scratch buffer, spare rings and pipes the loop shares
//! src/server/listener.rs            accept, what its errors mean, whether accepting
//! src/server/sources.rs             connections open per source, and their limit
//! src/server/udp.rs                 datagram echo and its bounded reply queue
//! src/server/udp/socket.rs          recvmsg/sendmmsg with control messages (drops, pktinfo)
//! src/server/udp/tests.rs           UDP echo over real sockets
//! src/server/udp/queue_tests.rs     the reply queue over a scripted socket
//! src/server/config.rs              ServerConfig, defaults, StartError, Outcome, exit statuses
//! src/server/bind.rs                the sockets to serve; the descriptor budget
//! src/server/shutdown.rs            StopHandle, grace, cut, the receipt
//! src/server/signals.rs             SIGINT, SIGTERM, SIGHUP, SIGUSR1 on the poll
//! src/server/stats.rs               counters and their one-line summary
//! src/server/clock.rs               the loop's millisecond clock
//! src/server/extras/mod.rs          what a first reading can skip
//! src/server/extras/splice.rs       pipes and splice(2): bulk streams without a copy
//! src/server/extras/udp_guard.rs    which datagrams not to answer; rate limits
//! src/server/extras/udp_guard/tests.rs  the guard's rules, one by one
//! src/server/extras/activation.rs   sockets passed by a service manager (LISTEN_FDS)
//! proptest-regressions/             seeds of past property-test failures, replayed first
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod net;
pub mod ring;
pub mod server;
