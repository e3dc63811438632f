//! echod: the `echod` command and the tools that come with the server.
//!
//! The server itself, the part written to be read by people learning
//! nonblocking I/O, is its own crate, `echod_server` (in `server/`): start
//! reading at its crate docs, which are a guided tour. This crate is the
//! command line ([`cli`]) that turns flags into the server's configuration,
//! the generated man page and completions ([`generate`]), and the tools:
//! a client, ping, a load generator (bench) and a conformance check. They
//! use the server crate's networking vocabulary (`echod_server::net`,
//! `echod_server::ring`) and never its loop.

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod bench;
pub mod check;
pub mod cli;
pub mod client;
pub mod generate;
pub mod kit;
pub mod ping;
