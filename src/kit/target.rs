//! The server a tool talks to: `ADDR` as a person types it, resolved to
//! socket addresses; connecting with a deadline; connection errors as
//! sentences.
//!
//! One grammar for every tool (`client`, `ping`, `bench`, `check`), so they
//! accept the same forms and refuse the same mistakes with the same
//! sentence.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use super::deadline::{Deadline, out_of_time};
use super::duration::seconds;

/// The port of an address given without one: RFC 862's.
pub use echod_server::net::RFC862_PORT;

/// The help text of the tools' `ADDR` argument.
pub const ADDR_HELP: &str = "The echo server: HOST:PORT, [IPv6]:PORT, or HOST alone for port 7";

/// `ADDR` split into host and port, before any name is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// A name or an IP address (without brackets).
    pub host: String,
    /// The port; 7 when none was given.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The sentence for `ADDR` given as a bare number, or `None` if `text` is
/// not one.
///
/// A number alone is almost always a port typed where the address goes
/// (`echod bench 7007`, or `echod bench -p 7007 HOST` read the old way).
/// The resolver would take it for an IPv4 address in the old BSD
/// `inet_aton` style (`7007` is 0.0.27.95) and connect to nowhere, so it
/// is refused before any lookup, whatever the tool.
fn bare_number(text: &str) -> Option<String> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match text.parse::<u16>() {
        Ok(port) if port > 0 => {
            format!("'{text}' is a port, not an address; write 127.0.0.1:{port} or HOST:{port}")
        }
        _ => {
            format!("'{text}' is a number, not an address; give HOST:PORT, such as localhost:7007")
        }
    })
}

impl Target {
    /// Parses `host:port`, `[ipv6]:port`, a bare IPv6 address, or a bare
    /// host (port 7, the echo port of RFC 862).
    ///
    /// The error is a sentence for a person; it is meant to be shown as is
    /// (clap shows it after "invalid value 'TEXT' for '\<ADDR>'").
    pub fn parse(text: &str) -> Result<Target, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the address is empty; give HOST:PORT, such as localhost:7007".into());
        }
        if let Some(err) = bare_number(text) {
            return Err(err);
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| {
                format!("'{text}' has no closing ']'; write IPv6 addresses as [::1]:7007")
            })?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => {
                        return Err(format!(
                            "'{text}' has '{after}' after the ']'; write IPv6 addresses as \
                             [::1]:7007"
                        ));
                    }
                },
            }
        } else if text.parse::<Ipv6Addr>().is_ok() {
            (text, None)
        } else {
            match text.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(format!(
                        "'{text}' is not an address: put brackets around an IPv6 address \
                         that has a port, as in [::1]:7007"
                    ));
                }
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        if host.is_empty() {
            return Err(format!(
                "'{text}' has no host; give one such as localhost:7007"
            ));
        }
        let port = match port {
            None => RFC862_PORT,
            Some(port) => port.parse().map_err(|_| {
                format!(
                    "'{port}' in '{text}' is not a port number (1 to 65535); give HOST:PORT, \
                     such as localhost:7007"
                )
            })?,
        };
        if port == 0 {
            return Err(format!(
                "port 0 in '{text}' cannot be connected to; give the port the server listens on"
            ));
        }
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }

    /// Every address of the host, in the resolver's order. A host that is
    /// an IP address needs no lookup.
    pub fn lookup(&self) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let found: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|err| {
                format!(
                    "could not resolve the host name '{}' ({err}); check its spelling and this \
                     machine's DNS settings, or give an IP address such as 127.0.0.1 or ::1",
                    self.host
                )
            })?
            .collect();
        if found.is_empty() {
            return Err(format!(
                "the host name '{}' has no addresses; check its spelling, or give an IP \
                 address such as 127.0.0.1",
                self.host
            ));
        }
        Ok(found)
    }
}

/// Turns `text` into the address of a server: [`Target::parse`], then the
/// first address the resolver gives, as most clients use.
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    let found = Target::parse(text)?.lookup()?;
    // lookup() never returns an empty list.
    found
        .first()
        .copied()
        .ok_or_else(|| format!("'{text}' has no addresses"))
}

/// An address family, as ping(8)'s `-4` and `-6` choose one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only (`-4`).
    V4,
    /// IPv6 only (`-6`).
    V6,
}

impl Family {
    fn holds(self, addr: &SocketAddr) -> bool {
        match self {
            Family::V4 => addr.is_ipv4(),
            Family::V6 => addr.is_ipv6(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// The first address of `target` in `family` (any, if `None`), in the
/// resolver's order; the error is a sentence that names the family asked
/// for and the addresses there were.
pub fn resolve_in(target: &Target, family: Option<Family>) -> Result<SocketAddr, String> {
    pick_family(target, &target.lookup()?, family)
}

/// [`resolve_in`] once the lookup is done (`found` is never empty).
fn pick_family(
    target: &Target,
    found: &[SocketAddr],
    family: Option<Family>,
) -> Result<SocketAddr, String> {
    let Some(family) = family else {
        return found
            .first()
            .copied()
            .ok_or_else(|| format!("'{target}' has no addresses"));
    };
    if let Some(&addr) = found.iter().find(|addr| family.holds(addr)) {
        return Ok(addr);
    }
    let (flag, name) = (family.flag(), family.name());
    if target.host.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{flag} asks for {name}, but {} is not an {name} address; leave out {flag}, or \
             give an {name} address",
            target.host
        ));
    }
    let mut ips: Vec<String> = Vec::new();
    for addr in found {
        let ip = addr.ip().to_string();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Err(format!(
        "{flag} asks for {name}, but the host name '{}' has no {name} address (it resolves \
         to {}); leave out {flag}, or give a name or address that has one",
        target.host,
        ips.join(", ")
    ))
}

/// The first address of each family, in the resolver's order (which puts
/// the family clients will try first first).
pub fn one_per_family(found: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut picked: Vec<SocketAddr> = Vec::new();
    for &addr in found {
        if !picked.iter().any(|p| p.is_ipv4() == addr.is_ipv4()) {
            picked.push(addr);
        }
    }
    picked
}

/// A TCP connection that could not be made, with where it was going.
#[derive(Debug)]
pub struct ConnectError {
    /// The server's address.
    pub addr: SocketAddr,
    /// How long the connect was allowed to take.
    pub timeout: Duration,
    /// What the operating system said.
    pub source: io::Error,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.addr;
        if matches!(
            self.source.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE)
        ) {
            return write!(
                f,
                "could not open a connection to {addr}: this process may open no more files \
                 ({}). Use fewer connections, or raise the limit (ulimit -n).",
                self.source
            );
        }
        match self.source.kind() {
            io::ErrorKind::ConnectionRefused => write!(
                f,
                "connection to {addr} refused: nothing is listening on TCP port {}. Check the \
                 address and port, or start a server there (echod -p {} -b {}).",
                addr.port(),
                addr.port(),
                addr.ip()
            ),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => write!(
                f,
                "no answer from {addr} within {}: the host may be down or a firewall may \
                 drop the packets. Check the address, or allow longer with --timeout.",
                seconds(self.timeout)
            ),
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => write!(
                f,
                "cannot reach {addr}: {}. Check the address and this machine's network.",
                self.source
            ),
            _ => write!(
                f,
                "could not connect to {addr}: {}. Check the address and port.",
                self.source
            ),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Connects to `addr` within `timeout` (blocking) and sets `TCP_NODELAY`:
/// an echo is latency-bound, so each write should leave at once, not wait
/// to be merged with the next.
pub fn connect_blocking(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// [`connect_blocking`], giving up at `deadline`: for a client made of
/// steps that share one deadline (`echod check`).
pub fn connect_by(addr: SocketAddr, deadline: Deadline) -> io::Result<TcpStream> {
    let wait = deadline.socket_timeout().ok_or_else(out_of_time)?;
    connect_blocking(addr, wait)
}

/// Connects to `addr` within `timeout` and returns a nonblocking mio
/// stream with `TCP_NODELAY` set.
///
/// The connect itself blocks (bounded by `timeout`): a tool has nothing
/// else to do before it is connected. `echod bench` opens many
/// connections and uses [`connect_nonblocking`] instead.
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<mio::net::TcpStream, ConnectError> {
    let setup = || -> io::Result<mio::net::TcpStream> {
        let stream = connect_blocking(addr, timeout)?;
        stream.set_nonblocking(true)?;
        Ok(mio::net::TcpStream::from_std(stream))
    };
    setup().map_err(|source| ConnectError {
        addr,
        timeout,
        source,
    })
}

/// Starts a nonblocking connect to `addr`. The stream becomes writable when
/// the connection is made or has failed; [`connect_result`] tells which.
pub fn connect_nonblocking(addr: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let stream = mio::net::TcpStream::connect(addr)?;
    // mio sets nothing else; an echo wants each message sent at once.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// After a writable event on a stream from [`connect_nonblocking`]: `Ok(true)`
/// once connected, `Ok(false)` if still in progress, or the connect's error.
///
/// This is mio's documented recipe: `take_error` for a failure, then
/// `peer_addr`, which fails with `NotConnected` while the handshake runs.
pub fn connect_result(stream: &mio::net::TcpStream) -> io::Result<bool> {
    if let Some(err) = stream.take_error()? {
        return Err(err);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(err) => Err(err),
    }
}

/// A blocking UDP socket on an ephemeral port of `server`'s family;
/// connected to `server` when `connected`, so that the kernel drops
/// datagrams from anyone else and reports ICMP "port unreachable" as
/// `ConnectionRefused`.
pub fn udp_socket_blocking(server: SocketAddr, connected: bool) -> io::Result<UdpSocket> {
    let local: SocketAddr = if server.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)?;
    if connected {
        socket.connect(server)?;
    }
    Ok(socket)
}

/// [`udp_socket_blocking`], connected and nonblocking, for a mio loop.
pub fn udp_socket(server: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let socket = udp_socket_blocking(server, true)?;
    socket.set_nonblocking(true)?;
    Ok(mio::net::UdpSocket::from_std(socket))
}

/// The sentence for a UDP server that answered with ICMP port unreachable.
pub fn udp_refused(addr: SocketAddr) -> String {
    format!(
        "{addr} answered that nothing is listening on UDP port {} (ICMP port unreachable). \
         Check the address and port, or start a server there (echod -p {} -b {}).",
        addr.port(),
        addr.port(),
        addr.ip()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_ports() {
        assert_eq!(
            resolve("127.0.0.1:7007"),
            Ok("127.0.0.1:7007".parse().unwrap())
        );
        assert_eq!(resolve("[::1]:9"), Ok("[::1]:9".parse().unwrap()));
        assert_eq!(resolve("::1"), Ok("[::1]:7".parse().unwrap()));
        assert_eq!(resolve("[::1]"), Ok("[::1]:7".parse().unwrap()));
        assert_eq!(resolve("127.0.0.1"), Ok("127.0.0.1:7".parse().unwrap()));
        let local = resolve("localhost:7007").unwrap();
        assert!(local.ip().is_loopback());
        assert_eq!(local.port(), 7007);
    }

    #[test]
    fn bad_addresses_are_sentences() {
        let err = resolve("localhost:http").unwrap_err();
        assert!(
            err.contains("'http' in 'localhost:http' is not a port number"),
            "{err}"
        );
        let err = resolve("").unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = resolve("no-such-host.invalid:7").unwrap_err();
        assert!(err.contains("could not resolve"), "{err}");
    }

    #[test]
    fn refused_connect_says_nothing_listens() {
        let err = ConnectError {
            addr: "127.0.0.1:9".parse().unwrap(),
            timeout: Duration::from_secs(1),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("connection to 127.0.0.1:9 refused"),
            "{text}"
        );
    }

    #[test]
    fn out_of_descriptors_points_at_the_limit() {
        let err = ConnectError {
            addr: "127.0.0.1:9".parse().unwrap(),
            timeout: Duration::from_secs(1),
            source: io::Error::from_raw_os_error(libc::EMFILE),
        };
        assert!(err.to_string().contains("ulimit -n"), "{err}");
    }

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_the_forms_people_type() {
        assert_eq!(
            Target::parse("localhost:7007"),
            Ok(target("localhost", 7007))
        );
        assert_eq!(Target::parse("127.0.0.1:9"), Ok(target("127.0.0.1", 9)));
        assert_eq!(Target::parse("[::1]:7007"), Ok(target("::1", 7007)));
        assert_eq!(Target::parse("[::1]"), Ok(target("::1", 7)));
        assert_eq!(Target::parse("::1"), Ok(target("::1", 7)));
        assert_eq!(Target::parse("echo.example"), Ok(target("echo.example", 7)));
    }

    #[test]
    fn rejects_with_a_sentence() {
        for (text, needle) in [
            ("", "empty"),
            ("localhost:http", "not a port number"),
            ("localhost:70000", "not a port number"),
            ("[::1", "closing ']'"),
            ("[::1]7", "after the ']'"),
            ("::1:7007:x", "brackets"),
            (":7007", "no host"),
            ("localhost:0", "port 0"),
            (
                "17507",
                "'17507' is a port, not an address; write 127.0.0.1:17507",
            ),
            ("0", "'0' is a number, not an address"),
            ("99999", "'99999' is a number, not an address"),
        ] {
            let err = Target::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn displays_ipv6_in_brackets() {
        assert_eq!(target("::1", 7).to_string(), "[::1]:7");
        assert_eq!(target("localhost", 7).to_string(), "localhost:7");
    }

    #[test]
    fn keeps_one_address_per_family_in_order() {
        let found: Vec<SocketAddr> = ["[::1]:7", "127.0.0.1:7", "[fe80::1]:7", "10.0.0.1:7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(one_per_family(&found), vec![found[0], found[1]]);
        assert_eq!(one_per_family(&found[1..2]), vec![found[1]]);
        assert!(one_per_family(&[]).is_empty());
    }

    #[test]
    fn a_family_picks_its_first_address_or_says_there_is_none() {
        let found: Vec<SocketAddr> = ["127.0.0.1:7", "10.0.0.1:7", "[::1]:7", "127.0.0.1:7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let name = target("echo.example", 7);
        assert_eq!(pick_family(&name, &found, None), Ok(found[0]));
        assert_eq!(pick_family(&name, &found, Some(Family::V4)), Ok(found[0]));
        assert_eq!(pick_family(&name, &found, Some(Family::V6)), Ok(found[2]));
        let err = pick_family(&name, &found[..2], Some(Family::V6)).unwrap_err();
        assert_eq!(
            err,
            "-6 asks for IPv6, but the host name 'echo.example' has no IPv6 address (it \
             resolves to 127.0.0.1, 10.0.0.1); leave out -6, or give a name or address that \
             has one"
        );
        let literal = target("::1", 7);
        let err = pick_family(&literal, &found[2..3], Some(Family::V4)).unwrap_err();
        assert!(
            err.starts_with("-4 asks for IPv4, but ::1 is not an IPv4 address"),
            "{err}"
        );
    }

    #[test]
    fn an_ip_address_needs_no_lookup() {
        let addrs = target("::1", 7007).lookup().unwrap();
        assert_eq!(addrs, vec!["[::1]:7007".parse().unwrap()]);
    }
}
