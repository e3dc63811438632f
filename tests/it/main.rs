//! Integration tests: the real server over real loopback sockets, IPv4 and
//! IPv6, in-process and as the built binary, plus real `nc` and `socat`.
//! One test crate with a module per topic.

mod bench;
mod check;
mod cli;
mod client;
mod faults;
mod hardening;
mod interop;
mod leaks;
mod ops;
mod ping;
mod splice;
mod tcp;
mod tools;
mod udp;
mod udp_guard;

mod util;
