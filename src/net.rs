//! Socket setup: binding listeners and UDP sockets (dual-stack where the
//! address is `::`), the options mio does not expose, and bind errors turned
//! into sentences a person can act on.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// How many connections may wait in the kernel's accept queue. The kernel
/// caps it at `net.core.somaxconn` (4096 on current Linux).
const LISTEN_BACKLOG: i32 = 1024;

/// Which transport a socket is for; used in log lines and error sentences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A TCP listener.
    Tcp,
    /// A UDP socket.
    Udp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// A socket that could not be set up, with what was asked for.
#[derive(Debug)]
pub struct BindError {
    /// TCP or UDP.
    pub transport: Transport,
    /// The address and port that was asked for.
    pub addr: SocketAddr,
    /// What the operating system said.
    pub source: io::Error,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            transport,
            addr,
            source,
        } = self;
        let port = addr.port();
        // "port 7 on [::]:" reads better than "port 7 on :::".
        let ip = match addr.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        match source.kind() {
            io::ErrorKind::PermissionDenied if port < 1024 => write!(
                f,
                "permission denied binding {transport} port {port} on {ip}: ports below 1024 \
                 need root or the CAP_NET_BIND_SERVICE capability. Use a higher port \
                 (--port 7007), or grant the capability once with \
                 `sudo setcap cap_net_bind_service=+ep $(command -v echod)`."
            ),
            io::ErrorKind::PermissionDenied => write!(
                f,
                "permission denied binding {transport} port {port} on {ip}: a security policy \
                 forbids it. Check the service's sandbox settings, or try another port."
            ),
            io::ErrorKind::AddrInUse => write!(
                f,
                "{transport} port {port} on {ip} is already in use by another program. Stop \
                 that program, or choose another port with --port (--port 0 picks a free one)."
            ),
            io::ErrorKind::AddrNotAvailable => write!(
                f,
                "address {ip} is not available on this machine, so {transport} port {port} \
                 cannot be bound there. Give --bind an address one of its interfaces has, \
                 or :: (all addresses) or 0.0.0.0 (all IPv4 addresses)."
            ),
            _ => write!(
                f,
                "could not listen on {transport} {addr}: {source}. Check the address and port \
                 given with --bind and --port."
            ),
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The address served when no `--bind` is given: `::`, which on a
/// dual-stack socket accepts IPv4 (as v4-mapped addresses) too.
pub const DUAL_STACK_ANY: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// The fallback when the machine has IPv6 turned off.
pub const IPV4_ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// True when an error from creating or binding an IPv6 socket means "this
/// machine has no IPv6", as opposed to a real problem with the address.
pub fn is_ipv6_unavailable(err: &io::Error) -> bool {
    // EAFNOSUPPORT: the kernel was started with ipv6.disable=1.
    // EADDRNOTAVAIL on `::`: IPv6 is present but disabled by sysctl.
    matches!(
        err.raw_os_error(),
        Some(code) if code == libc::EAFNOSUPPORT || code == libc::EADDRNOTAVAIL
    )
}

fn new_socket(
    addr: SocketAddr,
    ty: Type,
    protocol: Protocol,
    options: BindOptions,
) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    if addr.is_ipv6() {
        // Serve IPv4 on the same socket when bound to `::` (unless IPv4
        // addresses have sockets of their own); on a specific IPv6 address
        // this changes nothing. Linux defaults to dual-stack already
        // (net.ipv6.bindv6only=0), but other systems and sysctls differ.
        socket.set_only_v6(options.ipv6_only)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Choices about how sockets are bound, beyond the address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Set `SO_REUSEPORT`, so that several processes (one per core) can
    /// bind the same port; the kernel then spreads new connections and
    /// datagrams among them by a hash of the peer's address and port.
    /// Every socket sharing the port must set it, under the same user.
    pub reuse_port: bool,
    /// Keep IPv6 sockets to IPv6 (`IPV6_V6ONLY`). Needed when `::` and an
    /// IPv4 address are both served: a dual-stack `::` would claim the
    /// IPv4 port too, and the IPv4 socket could not bind.
    pub ipv6_only: bool,
}

fn apply(socket: &Socket, options: BindOptions) -> io::Result<()> {
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    Ok(())
}

/// Binds a nonblocking TCP listener on `addr`.
pub fn bind_tcp(
    addr: SocketAddr,
    options: BindOptions,
) -> Result<mio::net::TcpListener, BindError> {
    let setup = || -> io::Result<mio::net::TcpListener> {
        let socket = new_socket(addr, Type::STREAM, Protocol::TCP, options)?;
        // Restart on the same port at once, even while connections of the
        // previous run are in TIME_WAIT. (It does not allow two listeners;
        // SO_REUSEPORT does.)
        socket.set_reuse_address(true)?;
        apply(&socket, options)?;
        urgent_inline(&socket)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(mio::net::TcpListener::from_std(socket.into()))
    };
    setup().map_err(|source| BindError {
        transport: Transport::Tcp,
        addr,
        source,
    })
}

/// Sets `SO_OOBINLINE` on a TCP listener: TCP urgent data (a byte a peer
/// sends with `MSG_OOB`) stays in the stream as an ordinary byte, where it
/// was sent, instead of being taken out of it to be read apart with
/// `MSG_OOB`. RFC 862 asks that whatever is received be sent back, and RFC
/// 6093 (section 6) asks new applications to read urgent data inline.
///
/// Set once on the listener rather than on every connection: Linux copies a
/// listener's socket flags to the sockets it accepts (checked by a test
/// below), so no connection costs a system call for it.
pub fn urgent_inline(listener: impl std::os::fd::AsFd) -> io::Result<()> {
    socket2::SockRef::from(&listener).set_out_of_band_inline(true)
}

/// Binds a nonblocking UDP socket on `addr`.
pub fn bind_udp(addr: SocketAddr, options: BindOptions) -> Result<mio::net::UdpSocket, BindError> {
    let setup = || -> io::Result<mio::net::UdpSocket> {
        let socket = new_socket(addr, Type::DGRAM, Protocol::UDP, options)?;
        apply(&socket, options)?;
        socket.bind(&addr.into())?;
        Ok(mio::net::UdpSocket::from_std(socket.into()))
    };
    setup().map_err(|source| BindError {
        transport: Transport::Udp,
        addr,
        source,
    })
}

/// Shows an address the way people type it: `[::]:7`, `127.0.0.1:7`, and a
/// v4-mapped IPv6 peer (`[::ffff:1.2.3.4]:5`) as the IPv4 address it is.
pub fn display_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// True for a loopback source: 127.0.0.0/8, `::1`, or an IPv4 loopback
/// address seen through a dual-stack socket (`::ffff:127.0.0.0/104`). Local
/// clients, tests and benchmarks come from these, which is why the
/// per-source limits exempt them by default.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_includes_mapped_ipv4() {
        for text in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.2"] {
            assert!(is_loopback(text.parse().unwrap()), "{text}");
        }
        for text in ["10.0.0.1", "::", "::ffff:10.0.0.1", "::2", "fe80::1"] {
            assert!(!is_loopback(text.parse().unwrap()), "{text}");
        }
    }

    fn error(kind_errno: i32, addr: &str) -> String {
        BindError {
            transport: Transport::Tcp,
            addr: addr.parse().unwrap(),
            source: io::Error::from_raw_os_error(kind_errno),
        }
        .to_string()
    }

    #[test]
    fn low_port_permission_error_names_the_way_out() {
        let text = error(13, "[::]:7"); // EACCES
        assert!(
            text.starts_with("permission denied binding tcp port 7 on [::]:"),
            "{text}"
        );
        assert!(text.contains("--port 7007"), "{text}");
        assert!(text.contains("cap_net_bind_service"), "{text}");
    }

    #[test]
    fn address_in_use_is_a_sentence() {
        let text = error(98, "127.0.0.1:7007"); // EADDRINUSE
        assert!(
            text.starts_with("tcp port 7007 on 127.0.0.1 is already in use"),
            "{text}"
        );
    }

    #[test]
    fn address_not_available_points_at_bind() {
        let text = error(99, "10.255.255.1:7007"); // EADDRNOTAVAIL
        assert!(
            text.starts_with("address 10.255.255.1 is not available"),
            "{text}"
        );
    }

    #[test]
    fn mapped_addresses_display_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:9".parse().unwrap();
        assert_eq!(display_addr(mapped).to_string(), "127.0.0.1:9");
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(display_addr(v6).to_string(), "[::1]:9");
    }

    #[test]
    fn binding_a_taken_port_reports_address_in_use() {
        let first = bind_tcp("127.0.0.1:0".parse().unwrap(), BindOptions::default()).unwrap();
        let taken = first.local_addr().unwrap();
        let err = bind_tcp(taken, BindOptions::default()).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AddrInUse);
    }

    /// `SO_OOBINLINE` is set on the listener only, so it must reach the
    /// sockets accepted from it, or urgent bytes leave the echoed stream.
    #[test]
    fn accepted_sockets_inherit_urgent_inline_from_the_listener() {
        for ip in ["127.0.0.1", "::1"] {
            let Ok(listener) = bind_tcp(
                SocketAddr::new(ip.parse().unwrap(), 0),
                BindOptions::default(),
            ) else {
                continue; // no IPv6 here
            };
            let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let mut accepted = None;
            for _ in 0..500 {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted = Some(stream);
                        break;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(err) => panic!("accept failed: {err}"),
                }
            }
            let accepted = accepted.expect("the connection is accepted within 5 s");
            assert!(
                socket2::SockRef::from(&listener)
                    .out_of_band_inline()
                    .unwrap()
            );
            assert!(
                socket2::SockRef::from(&accepted)
                    .out_of_band_inline()
                    .unwrap(),
                "{ip}: the accepted socket did not inherit SO_OOBINLINE"
            );
        }
    }

    #[test]
    fn reuse_port_lets_two_sockets_share_a_port() {
        let shared = BindOptions {
            reuse_port: true,
            ..BindOptions::default()
        };
        let first = bind_tcp("127.0.0.1:0".parse().unwrap(), shared).unwrap();
        let port = first.local_addr().unwrap();
        bind_tcp(port, shared).expect("a second TCP listener on the port");
        let udp = bind_udp(port, shared).unwrap();
        bind_udp(udp.local_addr().unwrap(), shared).expect("a second UDP socket on the port");
    }
}
