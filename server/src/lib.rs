//! echod: an RFC 862 echo service, TCP and UDP, on one single-threaded mio
//! event loop.
//!
//! RFC 862 is short: a TCP server sends back every byte it receives until
//! the client closes; a UDP server answers each datagram with the same
//! data. Doing that well for many clients at once, in one thread, with
//! bounded memory and without losing a byte, is a compact lesson in
//! nonblocking I/O. This crate is written to be read as one.
//!
//! # Reading order
//!
//! 1. [`ring`]: the byte ring buffer that holds what a socket would not take.
//! 2. [`server`]'s `connection` module: one TCP peer, its state machine, and
//!    the echo path (scratch buffer first, ring only for leftovers, a pipe
//!    and `splice` for bulk streams on Linux: the `pipe` module).
//! 3. [`server`]: the loop itself: poll, dispatch by token, the ready queue.
//! 4. [`server`]'s `udp` module: datagram echo with a bounded reply queue,
//!    its socket's control messages (the kernel's drops, the address to
//!    answer from: `udp/socket.rs`), and `udp_guard`, which datagrams it
//!    refuses to answer (CERT CA-1996-01 loops, reflection), the
//!    per-source rate limit and the total budget.
//! 5. [`net`]: binding sockets (dual-stack IPv6) and bind errors as sentences.
//! 6. [`cli`]: the command line, turned into a validated configuration.
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
//! ```text
//! src/main.rs                  parse, start logging, run, error -> sentence + exit code
//! src/cli.rs                   clap types -> ServerConfig
//! src/net.rs                   binding, socket options, bind errors with hints
//! src/ring.rs                  Ring: fixed-capacity byte ring, vectored I/O
//! src/server/mod.rs            Server: Poll, tokens, slab, the one loop
//! src/server/listener.rs       accept and what its errors mean
//! src/server/connection.rs     Connection + State: the echo state machine
//! src/server/pipe.rs           pipes for splice(2): bulk streams echoed without a copy
//! src/server/sources.rs        connections open per source, and their limit
//! src/server/udp.rs            datagram echo and its bounded reply queue
//! src/server/udp/socket.rs     recvmsg/sendmmsg with control messages (drops, pktinfo)
//! src/server/udp_guard.rs      which datagrams not to answer; rate limits
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod net;
pub mod ring;
pub mod server;
