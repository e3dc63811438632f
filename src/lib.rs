//! echod: an RFC 862 echo service for TCP and UDP on one single-threaded
//! mio event loop. (The guided tour is written alongside the server.)

#![deny(missing_docs)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod exchange;
pub mod interactive;
pub mod net;
pub mod payload;
pub mod ping;
pub mod ring;
pub mod server;
pub mod target;
pub mod tool;
pub mod verify;
