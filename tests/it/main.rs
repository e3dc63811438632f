//! Integration tests: the real server over real loopback sockets, IPv4 and
//! IPv6, in-process and as the built binary, plus real `nc` and `socat`.
//! One test crate with a module per topic.

mod check;
mod util;
