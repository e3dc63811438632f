//! The server a tool talks to: parsing `HOST:PORT` into a socket address,
//! connecting with a deadline, and connection errors as sentences.
//!
//! Shared by `echod client`, `echod ping`, `echod bench` (and anything else
//! that dials an echo server), so every tool accepts the same address forms
//! and explains a refused or unanswered connection the same way.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use echod_server::net::RFC862_PORT;

/// The help text of the tools' `ADDR` argument.
pub const ADDR_HELP: &str = "The echo server: HOST:PORT, [IPv6]:PORT, or HOST alone for port 7";

/// Turns `text` into the address of a server.
///
/// Accepted: `127.0.0.1:7007`, `[::1]:7007`, `localhost:7007`, and a host
/// or IP address alone (`localhost`, `::1`, `[::1]`), which means the
/// RFC 862 port 7. Names are resolved with the system resolver; when a
/// name has several addresses the first is used, as most clients do.
///
/// The error is a sentence for a person; it is meant to be shown as is
/// (clap shows it after "invalid value 'TEXT' for '\<ADDR>'").
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the address is empty; give HOST:PORT, such as 127.0.0.1:7007".into());
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, RFC862_PORT));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse::<u16>().map_err(|_| {
                format!(
                    "'{port}' is not a port number (0 to 65535); give HOST:PORT, \
                     such as localhost:7007"
                )
            })?;
            (host.trim_start_matches('[').trim_end_matches(']'), port)
        }
        None => (text, RFC862_PORT),
    };
    let mut addrs = (host, port).to_socket_addrs().map_err(|err| {
        format!(
            "could not resolve the host name '{host}' ({err}); check its spelling, or give \
             an IP address such as 127.0.0.1 or ::1"
        )
    })?;
    addrs.next().ok_or_else(|| {
        format!("the host name '{host}' has no addresses; give an IP address such as 127.0.0.1")
    })
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

/// Connects to `addr` within `timeout` and returns a nonblocking mio
/// stream with `TCP_NODELAY` set (an echo is latency-bound: each write
/// should leave at once, not wait to be merged with the next).
///
/// The connect itself blocks (bounded by `timeout`): a tool has nothing
/// else to do before it is connected. `echod bench` opens many
/// connections and uses [`connect_nonblocking`] instead.
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<mio::net::TcpStream, ConnectError> {
    let setup = || -> io::Result<mio::net::TcpStream> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
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

/// Binds a nonblocking UDP socket on the wildcard address of `server`'s
/// family and connects it to `server`, so the kernel drops datagrams from
/// anyone else and reports ICMP "port unreachable" as `ConnectionRefused`.
pub fn udp_socket(server: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let local: SocketAddr = if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = mio::net::UdpSocket::bind(local)?;
    socket.connect(server)?;
    Ok(socket)
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

/// A duration in the unit people read best: `250 ms`, `1.5 s`.
pub fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// Parses a duration for the command line: `2`, `0.5` or `1.5s` are
/// seconds, `250ms` milliseconds, `2m` minutes.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| {
        format!("'{text}' is not a duration; write seconds (2, 0.5, 1.5s), 250ms or 2m")
    })?;
    if !value.is_finite() || value < 0.0 || value * scale > 365.0 * 86_400.0 {
        return Err(format!(
            "'{text}' is not a usable duration; give a positive number of seconds"
        ));
    }
    // Finite, not negative and at most a year: from_secs_f64 cannot panic.
    Ok(Duration::from_secs_f64(value * scale))
}

/// The shortest timeout the tools accept: a zero timeout would mean
/// "never wait" (the socket calls refuse it), not "wait very little".
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// The longest timeout, interval or warm-up the tools accept: an hour. An
/// echo not back within an hour is lost by any measure, and a longer
/// number is far more likely a slip of the keyboard than a plan.
pub const MAX_TOOL_WAIT: Duration = Duration::from_secs(3600);

/// [`parse_duration`] within `min..=max`; the error gives the range.
pub fn parse_duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(d) if (min..=max).contains(&d) => Ok(d),
        _ => Err(format!(
            "'{text}' is not a duration from {} to {}; write seconds (2, 0.5, 1.5s), 250ms or 2m",
            seconds(min),
            seconds(max)
        )),
    }
}

/// A tool's `--timeout`: [`MIN_TIMEOUT`] to [`MAX_TOOL_WAIT`].
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, MIN_TIMEOUT, MAX_TOOL_WAIT)
}

/// A pause that may be zero (`ping --interval`, `bench --warmup`): up to
/// [`MAX_TOOL_WAIT`].
pub fn parse_pause(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, Duration::ZERO, MAX_TOOL_WAIT)
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
        assert!(err.contains("'http' is not a port number"), "{err}");
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

    #[test]
    fn durations_in_several_units() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
        assert_eq!(seconds(Duration::from_millis(250)), "250 ms");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn durations_that_would_panic_are_sentences() {
        // Duration::from_secs_f64 panics on these; parse_duration must
        // refuse them first.
        for text in [
            "NaN",
            "inf",
            "-inf",
            "1e300",
            "-0.5",
            "1e19",
            "18446744073709551616",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.starts_with(&format!("'{text}' is not")), "{err}");
        }
    }

    #[test]
    fn tool_timeouts_go_from_a_millisecond_to_an_hour() {
        assert_eq!(parse_timeout("1ms"), Ok(MIN_TIMEOUT));
        assert_eq!(parse_timeout("3600"), Ok(MAX_TOOL_WAIT));
        assert_eq!(parse_timeout("60m"), Ok(MAX_TOOL_WAIT));
        for beyond in ["0", "0.0009", "3600.001", "61m", "NaN"] {
            let err = parse_timeout(beyond).unwrap_err();
            assert!(
                err.contains("is not a duration from 1 ms to 3600 s"),
                "{beyond}: {err}"
            );
        }
        assert_eq!(parse_pause("0"), Ok(Duration::ZERO));
        assert_eq!(parse_pause("3600"), Ok(MAX_TOOL_WAIT));
        let err = parse_pause("3601").unwrap_err();
        assert!(
            err.contains("is not a duration from 0 ms to 3600 s"),
            "{err}"
        );
    }
}
