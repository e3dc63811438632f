//! echod: an RFC 862 echo service for TCP and UDP on one single-threaded
//! mio event loop. (The guided tour is written alongside the server.)

#![deny(missing_docs)]

pub mod check;
pub mod cli;
pub mod net;
pub mod ring;
pub mod server;
