//! What a reader can skip on a first reading: each is reached from one
//! place in the core, and the server echoes correctly without it.
//!
//! - [`splice`]: bulk streams echoed through a pipe with `splice(2)`
//!   (Linux), reached from the connection's echo path;
//! - [`udp_guard`]: which datagrams UDP does not answer (CERT CA-1996-01
//!   loops, reflection) and the rate limits, reached from the UDP echo;
//! - [`activation`]: serving the sockets systemd passed (`LISTEN_FDS`),
//!   reached from binding at start-up.

pub mod activation;
pub mod splice;
pub mod udp_guard;
