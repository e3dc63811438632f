//! Faults: what a misbehaving peer or a careless operator does, tried from
//! outside against the real server. Each module holds the reproductions of
//! one way the promise could break: every byte comes back or the client can
//! tell it did not, nothing wedges the loop, memory stays bounded.

mod listener;
mod memory;
mod options;
mod per_source;
mod signals;
mod truncation;
mod udp;
mod urgent;
