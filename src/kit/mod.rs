//! The tools' kit: what `client`, `ping`, `bench` and `check` share, so
//! that they accept the same addresses and durations, send the same
//! payloads, check echoes the same way and fail with the same statuses.
//!
//! The kit imports the server's [`net`](echod_server::net) and [`ring`](echod_server::ring)
//! only; each tool imports the kit (and `net`), never another tool, never
//! `cli.rs`, never the server's loop.
//!
//! - [`target`]: `ADDR` (one grammar), resolving, connecting, the UDP
//!   socket, connection errors as sentences;
//! - [`duration`]: the duration grammar (`2`, `0.5`, `250ms`, `2m`);
//! - [`number`]: whole numbers within a range;
//! - [`deadline`]: the moment a step must be done by;
//! - [`payload`]: what the tools send, made again to check the echo;
//! - [`verify`]: checking an echo stream against what was sent;
//! - [`exchange`]: one message out, its echo back, on a small mio loop;
//! - [`tool`]: exit statuses, failures as sentences, Ctrl-C.

pub mod deadline;
pub mod duration;
pub mod exchange;
pub mod number;
pub mod payload;
pub mod target;
pub mod tool;
pub mod verify;
