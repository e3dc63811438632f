//! The UDP sockets' buffers: enlarged to [`UDP_SOCKET_BUFFER`] so a burst
//! is kept, never shrunk, and the sizes granted told in one log line each.

use std::io;
use std::net::SocketAddr;

use socket2::{SockRef, Socket};

/// What each UDP socket asks for, as its receive buffer and as its send
/// buffer: 4 MiB (Linux keeps and reports twice that, for its bookkeeping,
/// socket(7)). Measured on loopback with a burst of 2,000 datagrams of
/// 1,400 bytes sent by one socket as fast as it can: the kernel charges
/// 2,304 bytes for each (`ss -m`: 4,608,000 bytes for the burst). Sent to
/// a server that read nothing meanwhile (stopped), 1 MiB dropped 1,090 of
/// them, 2 MiB 180, 4 MiB none. Against a running server (release build,
/// `--udp-rate 0`, 10 rounds each) the kernel's default (212,992 bytes)
/// answered 1,035 to 2,000 with client and server on separate cores and
/// 663 to 945 on one core; 1, 2 and 4 MiB answered all 2,000 in every
/// round. 4 MiB keeps the whole burst even when echod cannot read during
/// it. Memory: queued datagrams are charged against these sizes and cost
/// nothing while none wait; at most 2 × 8 MiB per UDP socket.
pub const UDP_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// How much more than the size set Linux reports back (it doubles the
/// value to leave room for its own bookkeeping, socket(7)).
#[cfg(target_os = "linux")]
const KERNEL_DOUBLES: usize = 2;
#[cfg(not(target_os = "linux"))]
const KERNEL_DOUBLES: usize = 1;

/// One of a socket's two buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `SO_RCVBUF`, capped by `net.core.rmem_max`.
    Receive,
    /// `SO_SNDBUF`, capped by `net.core.wmem_max`.
    Send,
}

impl Direction {
    /// The sysctl that caps the size an unprivileged process may set.
    pub fn sysctl(self) -> &'static str {
        match self {
            Direction::Receive => "net.core.rmem_max",
            Direction::Send => "net.core.wmem_max",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Direction::Receive => "receive",
            Direction::Send => "send",
        }
    }
}

/// A socket buffer's size: asked for, and granted (as the kernel reports
/// it, doubled on Linux).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSize {
    /// Which buffer.
    pub direction: Direction,
    /// The size set (`setsockopt`).
    pub asked: usize,
    /// The size the kernel reports (`getsockopt`).
    pub granted: usize,
}

impl BufferSize {
    /// True when the kernel granted less than asked for (less than twice
    /// on Linux).
    pub fn capped(&self) -> bool {
        self.granted < self.asked.saturating_mul(KERNEL_DOUBLES)
    }
}

/// Makes a UDP socket's buffers [`UDP_SOCKET_BUFFER`] each, unless they are
/// larger already (a service manager may have set them: `ReceiveBuffer=`),
/// and logs the sizes asked for and granted: a warning that names the
/// sysctl when the kernel granted less. Used for bound and inherited
/// sockets alike; a failure is logged and the socket is served as it is.
pub fn enlarge_udp_buffers(socket: SockRef<'_>, local: SocketAddr) {
    let mut sizes = Vec::with_capacity(2);
    for direction in [Direction::Receive, Direction::Send] {
        match enlarge(&socket, direction, UDP_SOCKET_BUFFER) {
            Ok(size) => sizes.push(size),
            Err(err) => log::warn!(
                "udp {local}: could not set the {} buffer ({err}); it stays the kernel's \
                 default, so bursts may be dropped by the kernel (the counters show how many)",
                direction.noun()
            ),
        }
    }
    for size in &sizes {
        let (level, line) = describe_buffer(local, size);
        log::log!(level, "{line}");
    }
}

/// Sets one buffer to `asked`, privileged first: `SO_RCVBUFFORCE` and
/// `SO_SNDBUFFORCE` (CAP_NET_ADMIN) pass the sysctl caps; without the
/// privilege they fail with EPERM and the ordinary option, capped, is used,
/// unless the capped size would be smaller than what the socket has (see
/// [`plain_set_would_shrink`]): then the buffer is left as it is.
fn enlarge(socket: &Socket, direction: Direction, asked: usize) -> io::Result<BufferSize> {
    let current = || match direction {
        Direction::Receive => socket.recv_buffer_size(),
        Direction::Send => socket.send_buffer_size(),
    };
    let before = current()?;
    if before >= asked.saturating_mul(KERNEL_DOUBLES) {
        return Ok(BufferSize {
            direction,
            asked,
            granted: before,
        });
    }
    #[cfg(target_os = "linux")]
    let forced = {
        use nix::sys::socket::{setsockopt, sockopt};
        match direction {
            Direction::Receive => setsockopt(socket, sockopt::RcvBufForce, &asked),
            Direction::Send => setsockopt(socket, sockopt::SndBufForce, &asked),
        }
        .is_ok()
    };
    #[cfg(not(target_os = "linux"))]
    let forced = false;
    #[cfg(target_os = "linux")]
    if !forced && plain_set_would_shrink(before, asked, unprivileged_cap(direction)) {
        return Ok(BufferSize {
            direction,
            asked,
            granted: before,
        });
    }
    if !forced {
        match direction {
            Direction::Receive => socket.set_recv_buffer_size(asked)?,
            Direction::Send => socket.set_send_buffer_size(asked)?,
        }
    }
    Ok(BufferSize {
        direction,
        asked,
        granted: current()?,
    })
}

/// Whether setting a buffer to `asked` without privilege would leave it
/// smaller than the `before` the kernel reports now, given the sysctl's
/// `cap` (`None`: it could not be read, so any size might shrink it).
///
/// Linux grants `min(asked, cap)` for `SO_RCVBUF` and `SO_SNDBUF` and
/// reports twice that (socket(7)), whatever the buffer was. A socket
/// inherited from a service manager may hold more than that already: the
/// manager is privileged and forces its `ReceiveBuffer=` past the cap
/// (systemd.socket(5)). Setting it would then shrink it.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn plain_set_would_shrink(before: usize, asked: usize, cap: Option<usize>) -> bool {
    match cap {
        Some(cap) => asked.min(cap).saturating_mul(KERNEL_DOUBLES) < before,
        None => true,
    }
}

/// The cap on the size an unprivileged process may set, from the sysctl
/// ([`Direction::sysctl`], read in /proc/sys, proc(5)); `None` if it
/// cannot be read.
#[cfg(target_os = "linux")]
fn unprivileged_cap(direction: Direction) -> Option<usize> {
    let path = format!("/proc/sys/{}", direction.sysctl().replace('.', "/"));
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The log line for one buffer: info when granted, a warning naming the
/// sysctl when the kernel capped it.
pub fn describe_buffer(local: SocketAddr, size: &BufferSize) -> (log::Level, String) {
    let BufferSize {
        direction,
        asked,
        granted,
    } = *size;
    let noun = direction.noun();
    if !size.capped() {
        return (
            log::Level::Info,
            format!(
                "udp {local}: {noun} buffer {granted} bytes (asked for {asked}; the kernel \
                 reports twice the size set)"
            ),
        );
    }
    let sysctl = direction.sysctl();
    let consequence = match direction {
        Direction::Receive => {
            "a burst larger than the buffer is dropped by the kernel (the counters show how \
             many)"
        }
        Direction::Send => "replies beyond it wait in echod's small queue or are dropped",
    };
    (
        log::Level::Warn,
        format!(
            "udp {local}: the kernel granted a {noun} buffer of {} bytes of the {asked} asked \
             for (it reports {granted}, twice the size set): without CAP_NET_ADMIN it caps the \
             size at {sysctl}, and {consequence}. Raise the cap with `sysctl -w \
             {sysctl}={asked}`, or give echod CAP_NET_ADMIN.",
            granted / KERNEL_DOUBLES
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{BindOptions, bind_udp};

    #[test]
    fn a_capped_buffer_is_a_warning_that_names_the_sysctl() {
        let local: SocketAddr = "[::]:7".parse().unwrap();
        let capped = BufferSize {
            direction: Direction::Receive,
            asked: 4_194_304,
            granted: 425_984,
        };
        let (level, line) = describe_buffer(local, &capped);
        assert_eq!(level, log::Level::Warn);
        assert!(
            line.contains("receive buffer of 212992 bytes of the 4194304 asked for"),
            "{line}"
        );
        assert!(
            line.contains("sysctl -w net.core.rmem_max=4194304"),
            "{line}"
        );
        let send = BufferSize {
            direction: Direction::Send,
            ..capped
        };
        assert!(
            describe_buffer(local, &send)
                .1
                .contains("net.core.wmem_max")
        );
    }

    #[test]
    fn a_granted_buffer_is_one_info_line_with_both_sizes() {
        let granted = BufferSize {
            direction: Direction::Receive,
            asked: 4_194_304,
            granted: 4_194_304 * KERNEL_DOUBLES,
        };
        assert!(!granted.capped());
        let (level, line) = describe_buffer("127.0.0.1:7".parse().unwrap(), &granted);
        assert_eq!(level, log::Level::Info);
        assert!(line.contains("asked for 4194304"), "{line}");
        assert!(!line.contains("rmem_max"), "{line}");
    }

    /// Unprivileged, a buffer a service manager forced past the cap (here
    /// systemd's ReceiveBuffer=256K, which Linux reports as 512 KiB) is
    /// left alone: set, it would fall to the cap. One below what the cap
    /// grants is still set.
    #[test]
    fn an_unprivileged_set_never_shrinks_a_buffer() {
        const RMEM_MAX: usize = 212_992;
        let asked = UDP_SOCKET_BUFFER;
        let forced = 2 * 256 * 1024;
        assert!(plain_set_would_shrink(forced, asked, Some(RMEM_MAX)));
        let default = RMEM_MAX * KERNEL_DOUBLES;
        assert!(!plain_set_would_shrink(default, asked, Some(RMEM_MAX)));
        assert!(!plain_set_would_shrink(4_608, asked, Some(RMEM_MAX)));
        // A cap above what is asked for: the size asked for is granted.
        let roomy = 16 * 1024 * 1024;
        assert!(!plain_set_would_shrink(forced, asked, Some(roomy)));
        assert!(plain_set_would_shrink(
            asked * KERNEL_DOUBLES + 1,
            asked,
            Some(roomy)
        ));
        // A cap that cannot be read: nothing is set.
        assert!(plain_set_would_shrink(4_608, asked, None));
    }

    /// Privileged, the size asked for is granted whatever rmem_max says;
    /// without the privilege, as much as the cap allows.
    #[test]
    fn udp_sockets_get_large_buffers() {
        let udp = bind_udp("127.0.0.1:0".parse().unwrap(), BindOptions::default()).unwrap();
        let socket = SockRef::from(&udp);
        let cap = |name: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(0)
        };
        let at_least = |cap: usize| KERNEL_DOUBLES * UDP_SOCKET_BUFFER.min(cap);
        let received = socket.recv_buffer_size().unwrap();
        assert!(received >= at_least(cap("rmem_max")), "{received}");
        assert!(received > 212_992, "{received}");
        let sent = socket.send_buffer_size().unwrap();
        assert!(sent >= at_least(cap("wmem_max")), "{sent}");
    }
}
