//! Socket setup: binding listeners and UDP sockets (dual-stack where the
//! address is `::`), the options mio does not expose, and bind errors turned
//! into sentences a person can act on.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use std::os::fd::AsFd;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

mod udp_buffers;
pub use udp_buffers::{
    BufferSize, Direction, UDP_SOCKET_BUFFER, describe_buffer, enlarge_udp_buffers,
};

/// RFC 862: "A server listens for TCP connections on TCP port 7" (and for
/// UDP datagrams on UDP port 7).
pub const RFC862_PORT: u16 = 7;

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
    /// Options set on TCP listeners for the connections they accept (see
    /// [`set_connection_options`]); UDP sockets ignore them.
    pub connections: ConnectionOptions,
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

/// The default of `--socket-buffer`: the size asked for with `SO_RCVBUF`
/// and `SO_SNDBUF` on each accepted connection. Linux doubles it (the
/// extra is for its bookkeeping, socket(7)), so each queue may hold up to
/// 512 KiB, both 1 MiB: even a connection with both queues full stays
/// within 1 MiB of kernel memory. Measured on Linux 6.18 with a client
/// that sends without reading until its send blocks (Recv-Q + Send-Q of
/// the server's socket): 359 to 553 KB with [`NOTSENT_LOWAT`], 880 KB
/// without it, 4.5 to 5.3 MB with the kernel's autotuning (0).
pub const DEFAULT_SOCKET_BUFFER: usize = 256 * 1024;

/// The smallest `--socket-buffer` other than 0: a few segments. Linux
/// raises anything smaller to its own minimum anyway (`SOCK_MIN_RCVBUF`).
pub const MIN_SOCKET_BUFFER: usize = 4096;

/// The largest `--socket-buffer`: 64 MiB. Linux caps what it grants at
/// `net.core.rmem_max` and `net.core.wmem_max` (4 MiB on many systems,
/// 208 KiB on a stock kernel) unless raised; echod logs what it got.
pub const MAX_SOCKET_BUFFER: usize = 64 * 1024 * 1024;

/// `TCP_NOTSENT_LOWAT` on every accepted connection: the socket takes more
/// from echod only while fewer bytes than this wait unsent in its queue
/// (tcp(7)). For a client that does not read, what the kernel cannot send
/// then stays in echod's ring (bounded by `--buffer`) instead of filling
/// the send buffer too: measured with the default buffers, a slow
/// reader's Send-Q went from 508 KB to 32 KB. Bytes in flight are not
/// limited by it, so a client that reads is not slowed; 16 KiB is the
/// value Cloudflare published for its servers.
pub const NOTSENT_LOWAT: u32 = 16 * 1024;

/// What every connection a listener accepts should start with. Set once
/// on the listening socket: Linux copies the socket's options to each
/// socket `accept` returns (`sk_clone_lock` copies the socket,
/// `inet_csk_clone_lock` the TCP state), so an accepted connection needs
/// no `setsockopt` of its own. `tests::accepted_sockets_inherit_the_options`
/// checks each option on the running kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// Bytes asked for each of `SO_RCVBUF` and `SO_SNDBUF`
    /// (`--socket-buffer`); 0 keeps the kernel's autotuning.
    pub socket_buffer: usize,
}

/// Sets [`ConnectionOptions`] on a TCP listener, for the connections it
/// will accept:
///
/// - `TCP_NODELAY`: an echo is latency-bound, so each echo goes out at once
///   rather than waiting to be coalesced with more (Nagle's algorithm);
/// - `SO_OOBINLINE`: TCP urgent data (a byte a peer sends with `MSG_OOB`)
///   stays in the stream as an ordinary byte, where it was sent, instead of
///   being taken out to be read apart. RFC 862 asks that whatever is
///   received be sent back, and RFC 6093 (section 6) asks new applications
///   to read urgent data inline;
/// - `SO_RCVBUF` and `SO_SNDBUF` (unless 0): a bound on what one connection
///   holds in the kernel, which turns the receive autotuning off for it;
/// - `TCP_NOTSENT_LOWAT` (with the buffers): [`NOTSENT_LOWAT`].
///
/// The window scale a connection announces is chosen from the listener's
/// receive buffer when its handshake arrives, so on a listener that is
/// listening already (socket activation) the sizes apply to connections
/// whose handshake comes after this call; those already queued keep the
/// options they were accepted with.
pub fn set_connection_options<S: AsFd>(listener: &S, options: ConnectionOptions) -> io::Result<()> {
    let socket = SockRef::from(listener);
    socket.set_tcp_nodelay(true)?;
    socket.set_out_of_band_inline(true)?;
    if options.socket_buffer > 0 {
        socket.set_recv_buffer_size(options.socket_buffer)?;
        socket.set_send_buffer_size(options.socket_buffer)?;
        socket.set_tcp_notsent_lowat(NOTSENT_LOWAT)?;
    }
    Ok(())
}

/// The receive and send buffer sizes a socket was granted, as the kernel
/// reports them (twice what was asked for, unless capped by
/// `net.core.rmem_max` / `net.core.wmem_max`).
pub fn buffer_sizes<S: AsFd>(socket: &S) -> io::Result<(usize, usize)> {
    let socket = SockRef::from(socket);
    Ok((socket.recv_buffer_size()?, socket.send_buffer_size()?))
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
        // Before listen(): tcp(7) asks for the buffer sizes to be set
        // before listen(2) so the window scale offered in the handshake
        // fits them (see `set_connection_options`).
        set_connection_options(&socket, options.connections)?;
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

/// Binds a nonblocking UDP socket on `addr`, with socket buffers of
/// [`UDP_SOCKET_BUFFER`] (see [`enlarge_udp_buffers`]).
pub fn bind_udp(addr: SocketAddr, options: BindOptions) -> Result<mio::net::UdpSocket, BindError> {
    let setup = || -> io::Result<mio::net::UdpSocket> {
        let socket = new_socket(addr, Type::DGRAM, Protocol::UDP, options)?;
        apply(&socket, options)?;
        socket.bind(&addr.into())?;
        // Logged with the port the kernel picked, if it was asked to.
        let local = socket.local_addr()?.as_socket().unwrap_or(addr);
        enlarge_udp_buffers(SockRef::from(&socket), local);
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

/// What a client is known by in the per-source limits (`--udp-rate`,
/// `--max-connections-per-source`): its address without the port (a host
/// can use any number of ports), and for IPv6 its /64 prefix: a host
/// usually holds a whole /64 and may pick any address in it (privacy
/// addresses, RFC 8981), so a per-address key would hand one host 2^64
/// sources. An IPv4 client seen through a dual-stack socket
/// (`::ffff:a.b.c.d`) is keyed as the IPv4 address it is. An IPv6
/// link-local client (`fe80::/10`) is keyed by its whole address: every
/// host on a link has an address in the same `fe80::/64` (RFC 4291, 2.5.6),
/// so by prefix one host would take every other's share.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SourceKey {
    /// An IPv4 address.
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6Prefix(u64),
    /// A link-local IPv6 address, whole.
    V6LinkLocal(u128),
}

impl SourceKey {
    /// The key of a client at `ip`.
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => SourceKey::V6LinkLocal(u128::from(v6)),
            IpAddr::V6(v6) => SourceKey::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for SourceKey {
    /// `192.0.2.1`, or `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SourceKey::V4(v4) => Ipv4Addr::from(v4).fmt(f),
            SourceKey::V6Prefix(prefix) => {
                write!(f, "{}/64", Ipv6Addr::from(u128::from(prefix) << 64))
            }
            SourceKey::V6LinkLocal(address) => Ipv6Addr::from(address).fmt(f),
        }
    }
}

/// The largest UDP payload IPv4 carries: 65,535 bytes of IP datagram less
/// its 20-byte header and the 8-byte UDP header. The most one echo
/// datagram can hold for a client that may be on IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// A receive buffer large enough for any UDP payload: 65,535 minus the
/// 8-byte UDP header is 65,527 (IPv6 over loopback); IPv4 carries at most
/// [`MAX_UDP_PAYLOAD`].
pub const MAX_DATAGRAM: usize = 65_536;

/// Whether an I/O error is only "not now": the call would have blocked.
/// Flow control, not a failure: wait for the next readiness edge.
pub fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

/// Whether an I/O error is only a signal cutting the call short before it
/// did anything: flow control, not a failure; call again.
pub fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// What a socket is known to be ready for. mio is edge-triggered: an
/// event says readiness *changed*; it stays until a call returns
/// WouldBlock (or a short read or write shows the kernel is drained), and
/// no new event comes for readiness we did not use up. Remembering it is
/// what lets a connection that stopped early (ring full, turn over) go on
/// later without waiting for an edge that will never come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// A read may return bytes, EOF or an error.
    pub readable: bool,
    /// A write may take bytes or return an error.
    pub writable: bool,
    /// The peer's FIN (or an error) has arrived: a read will return 0 or
    /// the error after the bytes before it. Once seen it stays set, and a
    /// short read no longer means "drained" (see [`Readiness::after_read`]).
    pub read_closed: bool,
    /// TCP urgent data has arrived (`EPOLLPRI`: a peer sent a byte with
    /// `MSG_OOB`). Linux's `tcp_recvmsg` stops a read short at the urgent
    /// mark, with the bytes behind it already queued, so a short read does
    /// not mean "drained" until a read has said WouldBlock, which clears
    /// it. (`SO_OOBINLINE`, set on the listener, keeps the urgent byte in
    /// the stream, so the read after the mark returns it in its place.)
    pub priority: bool,
}

impl Readiness {
    /// Nothing new: used when serving a connection from the ready queue.
    pub const NONE: Readiness = Readiness {
        readable: false,
        writable: false,
        read_closed: false,
        priority: false,
    };

    /// What a mio event says. Errors and hang-ups count as both, because
    /// the next read or write is what reports them.
    pub fn of(event: &mio::event::Event) -> Readiness {
        Readiness {
            readable: event.is_readable() || event.is_read_closed() || event.is_error(),
            writable: event.is_writable() || event.is_write_closed() || event.is_error(),
            read_closed: event.is_read_closed() || event.is_error(),
            priority: event.is_priority(),
        }
    }

    /// Adds what a new event says to what is remembered: readiness stays
    /// until a call uses it up.
    pub fn add(&mut self, new: Readiness) {
        self.readable |= new.readable;
        self.writable |= new.writable;
        self.read_closed |= new.read_closed;
        self.priority |= new.priority;
    }

    /// After a read of `n` bytes (`n > 0`) into `room` bytes: readable
    /// stays set only while more may be waiting. A short read means the
    /// kernel had no more: the socket is drained, and bytes arriving later
    /// bring a new edge, so the read that would only say WouldBlock is
    /// skipped. Not so when the FIN arrived with the bytes (its edge is the
    /// one being served, so only another read reports the EOF), nor after
    /// urgent data (the read stopped at its mark, and the bytes behind it
    /// came with the same edge).
    pub fn after_read(&mut self, n: usize, room: usize) {
        self.readable = n == room || self.read_closed || self.priority;
    }

    /// A read said WouldBlock: nothing is waiting, past any urgent mark.
    pub fn read_would_block(&mut self) {
        self.readable = false;
        self.priority = false;
    }

    /// What a write that offered every byte pending (both halves of a
    /// ring, a whole pipe) tells: one rule for every buffer. `emptied`:
    /// nothing is pending after it; if something is, the send buffer is
    /// full and `writable` is cleared until the next edge. `Some(n)`: `n`
    /// bytes went out (0: a signal cut the call short, and the socket is
    /// still writable, so the step is worth trying again); `None`: the
    /// write would block.
    pub fn after_write_of_all(
        &mut self,
        result: io::Result<usize>,
        emptied: bool,
    ) -> io::Result<Option<usize>> {
        match result {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                if !emptied {
                    self.writable = false;
                }
                Ok(Some(n))
            }
            Err(err) if would_block(&err) => {
                self.writable = false;
                Ok(None)
            }
            Err(err) if interrupted(&err) => Ok(Some(0)),
            Err(err) => Err(err),
        }
    }
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

    #[test]
    fn sources_are_keyed_by_ipv4_address_or_ipv6_prefix() {
        let key = |text: &str| SourceKey::of(text.parse().unwrap());
        assert_eq!(key("192.0.2.1"), key("::ffff:192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    /// Every host on a link has an address in `fe80::/64`: keyed by
    /// prefix, one of them would lock the others out.
    #[test]
    fn link_local_sources_are_keyed_by_the_whole_address() {
        let key = |text: &str| SourceKey::of(text.parse().unwrap());
        assert_ne!(key("fe80::1"), key("fe80::2"));
        assert_ne!(key("fe80::a:b:c:d"), key("fe80::a:b:c:e"));
        assert_eq!(key("fe80::1"), key("fe80::1"));
        // All of fe80::/10, not only the /64 in use.
        assert_ne!(key("febf::1"), key("febf::2"));
        assert_eq!(key("fe80::1").to_string(), "fe80::1");
        // Outside it, still by /64.
        assert_eq!(key("fec0::1"), key("fec0::2"));
        assert_eq!(key("::ffff:192.0.2.1").to_string(), "192.0.2.1");
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
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

    /// What an accepted socket was given, read back from it.
    fn options_of<S: AsFd>(socket: &S) -> (bool, usize, usize, u32) {
        let socket = SockRef::from(socket);
        (
            socket.tcp_nodelay().unwrap(),
            socket.recv_buffer_size().unwrap(),
            socket.send_buffer_size().unwrap(),
            socket.tcp_notsent_lowat().unwrap(),
        )
    }

    /// Accepts one connection on `listener` and returns its options.
    fn accepted_options(listener: &std::net::TcpListener) -> (bool, usize, usize, u32) {
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        options_of(&accepted)
    }

    /// The premise of `set_connection_options`, checked on the running
    /// kernel: a socket returned by accept carries the listener's
    /// TCP_NODELAY, SO_RCVBUF, SO_SNDBUF and TCP_NOTSENT_LOWAT, whether
    /// they were set before listen() (bound here) or after (inherited
    /// from a service manager).
    #[test]
    fn accepted_sockets_inherit_the_options() {
        let asked = 96 * 1024; // not a kernel default, so inheritance shows
        let options = BindOptions {
            connections: ConnectionOptions {
                socket_buffer: asked,
            },
            ..BindOptions::default()
        };
        let bound: std::net::TcpListener = bind_tcp("127.0.0.1:0".parse().unwrap(), options)
            .unwrap()
            .into();
        // Linux grants twice what is asked (socket(7)).
        let expected = (true, 2 * asked, 2 * asked, NOTSENT_LOWAT);
        assert_eq!(accepted_options(&bound), expected, "set before listen()");

        let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_connection_options(&listening, options.connections).unwrap();
        assert_eq!(accepted_options(&listening), expected, "set after listen()");
    }

    /// Without the options an accepted socket differs in each of them, so
    /// the test above sees inheritance, not coincidence; and 0 leaves the
    /// buffers to the kernel while still turning Nagle off.
    #[test]
    fn without_the_options_accepted_sockets_have_the_kernel_defaults() {
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (nodelay, recv, send, lowat) = accepted_options(&plain);
        assert!(!nodelay);
        assert_ne!(
            (recv, send, lowat),
            (2 * 96 * 1024, 2 * 96 * 1024, NOTSENT_LOWAT)
        );
        let autotuned = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_connection_options(&autotuned, ConnectionOptions::default()).unwrap();
        let (nodelay, recv, send, lowat) = accepted_options(&autotuned);
        assert!(nodelay);
        assert_ne!(lowat, NOTSENT_LOWAT);
        assert_ne!((recv, send), (2 * 96 * 1024, 2 * 96 * 1024));
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
