//! Socket activation: serving the sockets a service manager opened for us
//! instead of binding our own.
//!
//! systemd (or `systemd-socket-activate`, or any manager speaking the same
//! protocol) can open port 7 itself, as root, and start echod unprivileged
//! with the sockets already listening. The protocol, from sd_listen_fds(3):
//!
//! - the sockets are file descriptors 3, 4, … (`SD_LISTEN_FDS_START`);
//! - `LISTEN_FDS` says how many there are;
//! - `LISTEN_PID` is the process they are meant for: a child that inherits
//!   the environment but has another pid must not take them;
//! - `LISTEN_FDNAMES`, optional, names them (`:`-separated, from the
//!   socket unit's `FileDescriptorName=`, or the unit's name).
//!
//! A `.socket` unit with `ListenStream=7` and `ListenDatagram=7` passes one
//! stream and one datagram socket: both are served on the one loop, as TCP
//! listener and UDP socket. (systemd's own recipe for echo, `Accept=yes`
//! with `cat`, starts a process per connection and cannot do UDP.)
//!
//! Turning a descriptor number into a socket is the one step the type
//! system cannot check (the number might be anything), so it is left to the
//! `listenfd` crate, which first asks the kernel that the descriptor is a
//! socket of the right type (`SO_TYPE`) and family, and marks it
//! close-on-exec. Here we add what an echo service needs on top: the
//! protocol is TCP or UDP (`SO_PROTOCOL`), a stream socket is listening
//! (`SO_ACCEPTCONN`, so `Accept=yes` is caught with a clear message), and
//! the socket is nonblocking, as the event loop requires.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

use socket2::{Protocol, SockRef};

use crate::net::Transport;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`); the others
/// follow without gaps.
pub const LISTEN_FDS_START: i32 = 3;

/// The name systemd gives a descriptor that has none.
const UNNAMED: &str = "unknown";

/// What the `LISTEN_*` variables say, before any descriptor is touched.
#[derive(Debug, PartialEq, Eq)]
pub struct Passed {
    /// How many descriptors, starting at [`LISTEN_FDS_START`].
    pub count: usize,
    /// Their names, in order; empty when `LISTEN_FDNAMES` is unset.
    pub names: Vec<String>,
}

impl Passed {
    /// The name of the `i`-th descriptor, or systemd's "unknown" when
    /// there is none (or the names do not match the count).
    pub fn name(&self, i: usize) -> &str {
        if self.names.len() == self.count {
            &self.names[i]
        } else {
            UNNAMED
        }
    }
}

/// Reads the variables as sd_listen_fds(3) does.
///
/// `Ok(None)` means "not socket-activated": a variable is missing,
/// `LISTEN_PID` names another process (we inherited a parent's
/// environment), or `LISTEN_FDS` is 0 (no sockets passed; sd_listen_fds
/// returns 0 then, and the service binds its own). Malformed numbers are
/// errors, as they are for systemd. The numbers are read as the `listenfd`
/// crate will read them again (no spaces), so the two cannot disagree.
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    own_pid: u32,
) -> Result<Option<Passed>, ActivationError> {
    let Some(pid) = listen_pid else {
        return Ok(None);
    };
    let pid: u32 = pid.parse().map_err(|_| ActivationError::Variable {
        name: "LISTEN_PID",
        value: pid.to_string(),
        wanted: "a process id",
    })?;
    if pid != own_pid {
        return Ok(None);
    }
    let Some(fds) = listen_fds else {
        return Ok(None);
    };
    let count = match fds.parse::<usize>() {
        Ok(0) => return Ok(None),
        Ok(n) if n <= MAX_LISTEN_FDS => n,
        _ => {
            return Err(ActivationError::Variable {
                name: "LISTEN_FDS",
                value: fds.to_string(),
                wanted: "a number of sockets (0 for none)",
            });
        }
    };
    let names = match listen_fdnames {
        Some(names) if !names.is_empty() => names.split(':').map(str::to_string).collect(),
        _ => Vec::new(),
    };
    Ok(Some(Passed { count, names }))
}

/// The most descriptors `LISTEN_FDS` can name: descriptor numbers are
/// `int`s, and the last one is `LISTEN_FDS_START + count - 1`.
const MAX_LISTEN_FDS: usize = (i32::MAX - LISTEN_FDS_START + 1) as usize;

/// Checks that `passed.count` descriptors can really be there, before
/// anything is allocated for them: the `listenfd` crate allocates a slot
/// per descriptor it is told of, so `LISTEN_FDS=100000000` once took more
/// than a gigabyte before failing, and `LISTEN_FDS=2147483644` aborted the
/// process on allocation (issue 12).
///
/// A process cannot have been passed more descriptors than its open-files
/// limit allows (`soft_limit`, as found at start, before echod raises it),
/// and the descriptors come without gaps from 3, so the last one, `3 + N −
/// 1`, must be open: `is_open` answers that (`None`: cannot tell here).
pub fn check_count(
    passed: &Passed,
    soft_limit: u64,
    is_open: impl Fn(i32) -> Option<bool>,
) -> Result<(), ActivationError> {
    let count = passed.count;
    if u64::try_from(count).map_or(true, |n| n > soft_limit) {
        return Err(ActivationError::OverLimit {
            count,
            limit: soft_limit,
        });
    }
    // In range: `parse` bounds the count by MAX_LISTEN_FDS.
    let last = i32::try_from(count)
        .ok()
        .and_then(|n| (LISTEN_FDS_START - 1).checked_add(n))
        .unwrap_or(i32::MAX);
    match is_open(last) {
        Some(false) => Err(ActivationError::NotOpen { count, last }),
        Some(true) => Ok(()),
        None => {
            log::debug!(
                "socket activation: cannot tell whether descriptor {last} is open (no \
                 /proc/self/fd); trusting LISTEN_FDS={count}, within the open-files limit"
            );
            Ok(())
        }
    }
}

/// Whether descriptor `fd` is open in this process; `None` when that cannot
/// be told (no /proc mounted).
///
/// Asked through `/proc/self/fd/N` (one `lstat`, which claims nothing)
/// rather than `fcntl(F_GETFD)`: nix's `fcntl` takes a borrowed descriptor,
/// and making one from a bare number is `unsafe` (it asserts the number is
/// an open descriptor, the very thing in question), which this crate does
/// not use.
pub fn descriptor_open(fd: i32) -> Option<bool> {
    match std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")) {
        Ok(_) => Some(true),
        Err(_) if std::path::Path::new("/proc/self/fd").is_dir() => Some(false),
        Err(_) => None,
    }
}

/// The soft open-files limit now; `u64::MAX` when unlimited or unknown
/// (the check on the last descriptor still applies then).
fn soft_open_files_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(u64::MAX, |(soft, _)| soft)
}

/// An inherited socket, nonblocking and checked.
pub enum Inherited {
    /// A listening TCP socket (`ListenStream=`).
    Tcp(TcpListener),
    /// A UDP socket (`ListenDatagram=`).
    Udp(UdpSocket),
}

/// One socket the service manager passed.
pub struct Socket {
    /// Its descriptor number, as the manager passed it.
    pub fd: i32,
    /// Its name from `LISTEN_FDNAMES` ("unknown" when unnamed).
    pub name: String,
    /// The address it is bound to.
    pub local: SocketAddr,
    /// The socket itself.
    pub socket: Inherited,
}

impl Socket {
    /// TCP or UDP.
    pub fn transport(&self) -> Transport {
        match self.socket {
            Inherited::Tcp(_) => Transport::Tcp,
            Inherited::Udp(_) => Transport::Udp,
        }
    }
}

/// Takes the sockets passed by a service manager, if this process was
/// socket-activated; `Ok(None)` if it was not.
///
/// `LISTEN_PID` and `LISTEN_FDS` are removed from the environment as the
/// sockets are taken, so nothing started later could take them again.
/// (`LISTEN_FDNAMES` stays: without the other two it means nothing, and
/// removing a variable is an `unsafe` operation in Rust 2024 that this
/// crate does not use.)
pub fn take() -> Result<Option<Vec<Socket>>, ActivationError> {
    let var = |name| std::env::var(name).ok();
    let passed = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?;
    let Some(passed) = passed else {
        return Ok(None);
    };
    // The `listenfd` crate also honours LISTEN_FDS_FIRST_FD, which is not
    // part of systemd's protocol: the sockets start at 3. Refuse any other
    // start rather than take descriptors nobody meant to pass.
    if let Some(first) = var("LISTEN_FDS_FIRST_FD")
        && first != LISTEN_FDS_START.to_string()
    {
        return Err(ActivationError::Variable {
            name: "LISTEN_FDS_FIRST_FD",
            value: first,
            wanted: "3, where sd_listen_fds(3) says the sockets start",
        });
    }
    check_count(&passed, soft_open_files_limit(), descriptor_open)?;
    if !passed.names.is_empty() && passed.names.len() != passed.count {
        log::warn!(
            "LISTEN_FDNAMES has {} names for {} sockets; ignoring the names",
            passed.names.len(),
            passed.count
        );
    }
    // Reads the same two variables (now known to be ours) and unsets them.
    let mut fds = listenfd::ListenFd::from_env();
    // Grown as sockets are really taken, not sized by what LISTEN_FDS
    // claims: the first descriptor that is not a socket ends the loop.
    let mut sockets = Vec::new();
    for (i, fd) in (0..passed.count).zip(LISTEN_FDS_START..) {
        let name = passed.name(i).to_string();
        let socket = adopt(&mut fds, i).map_err(|problem| ActivationError::Socket {
            fd,
            name: name.clone(),
            problem,
        })?;
        let local = match &socket {
            Inherited::Tcp(listener) => listener.local_addr(),
            Inherited::Udp(udp) => udp.local_addr(),
        }
        .map_err(|err| ActivationError::Socket {
            fd,
            name: name.clone(),
            problem: Problem::Setup(err),
        })?;
        sockets.push(Socket {
            fd,
            name,
            local,
            socket,
        });
    }
    Ok(Some(sockets))
}

/// The inherited sockets to serve, by transport, ready for the loop.
#[derive(Debug, Default)]
pub struct Served {
    /// TCP listeners and their addresses.
    pub tcp: Vec<(mio::net::TcpListener, SocketAddr)>,
    /// UDP sockets and their addresses.
    pub udp: Vec<(mio::net::UdpSocket, SocketAddr)>,
}

/// Sorts the sockets into TCP and UDP for the loop, logging each one, and
/// leaving out (with a warning) those of a transport turned off with
/// `--no-tcp` or `--no-udp`. At most `max_each` of each kind.
pub fn sort(
    sockets: Vec<Socket>,
    tcp: bool,
    udp: bool,
    max_each: usize,
) -> Result<Served, ActivationError> {
    let passed = sockets.len();
    let mut served = Served::default();
    for socket in sockets {
        let transport = socket.transport();
        let Socket {
            fd,
            name,
            local,
            socket,
        } = socket;
        let wanted = match transport {
            Transport::Tcp => tcp,
            Transport::Udp => udp,
        };
        if !wanted {
            log::warn!(
                "socket activation: not serving {transport} {local} (descriptor {fd}, named \
                 {name:?}) because of --no-{transport}; remove it from the .socket unit"
            );
            continue;
        }
        log::info!(
            "socket activation: {transport} {local} passed by the service manager as \
             descriptor {fd}, named {name:?}"
        );
        match socket {
            Inherited::Tcp(listener) => served
                .tcp
                .push((mio::net::TcpListener::from_std(listener), local)),
            Inherited::Udp(socket) => served
                .udp
                .push((mio::net::UdpSocket::from_std(socket), local)),
        }
    }
    if served.tcp.len() > max_each || served.udp.len() > max_each {
        return Err(ActivationError::TooMany {
            passed,
            max: max_each,
        });
    }
    if served.tcp.is_empty() && served.udp.is_empty() {
        return Err(ActivationError::AllTurnedOff { passed });
    }
    Ok(served)
}

/// Takes descriptor `i` as a TCP listener or a UDP socket.
fn adopt(fds: &mut listenfd::ListenFd, i: usize) -> Result<Inherited, Problem> {
    // Each `take_*` checks the socket's type and family and leaves the
    // descriptor in place when they do not match, so the second can try.
    if let Ok(Some(listener)) = fds.take_tcp_listener(i) {
        let sock = SockRef::from(&listener);
        if sock.protocol().map_err(Problem::Setup)? != Some(Protocol::TCP) {
            return Err(Problem::NotTcpOrUdp);
        }
        if !sock.is_listener().map_err(Problem::Setup)? {
            return Err(Problem::NotListening);
        }
        listener.set_nonblocking(true).map_err(Problem::Setup)?;
        return Ok(Inherited::Tcp(listener));
    }
    match fds.take_udp_socket(i) {
        Ok(Some(udp)) => {
            let sock = SockRef::from(&udp);
            if sock.protocol().map_err(Problem::Setup)? != Some(Protocol::UDP) {
                return Err(Problem::NotTcpOrUdp);
            }
            udp.set_nonblocking(true).map_err(Problem::Setup)?;
            Ok(Inherited::Udp(udp))
        }
        // Taken already: LISTEN_FDS changed under us, which only a bug
        // elsewhere in this process could do.
        Ok(None) => Err(Problem::Setup(io::Error::other(
            "the descriptor was taken already",
        ))),
        Err(_) => Err(Problem::NotTcpOrUdp),
    }
}

/// What is wrong with one inherited descriptor.
#[derive(Debug)]
pub enum Problem {
    /// Not a socket, or a socket of another kind (Unix, SCTP, netlink…).
    NotTcpOrUdp,
    /// A TCP socket that is not listening: a connection (`Accept=yes`).
    NotListening,
    /// A socket call on it failed.
    Setup(io::Error),
}

/// Why the inherited sockets cannot be served.
#[derive(Debug)]
pub enum ActivationError {
    /// A `LISTEN_*` variable does not hold what the protocol says.
    Variable {
        /// The variable.
        name: &'static str,
        /// What it holds.
        value: String,
        /// What it should hold.
        wanted: &'static str,
    },
    /// `LISTEN_FDS` names more descriptors than this process may open.
    OverLimit {
        /// What `LISTEN_FDS` says.
        count: usize,
        /// The soft open-files limit at start.
        limit: u64,
    },
    /// `LISTEN_FDS` names a descriptor that is not open: nothing was
    /// passed there.
    NotOpen {
        /// What `LISTEN_FDS` says.
        count: usize,
        /// The last descriptor it names, which is not open.
        last: i32,
    },
    /// One of the descriptors cannot be served.
    Socket {
        /// Its number.
        fd: i32,
        /// Its name from `LISTEN_FDNAMES`.
        name: String,
        /// What is wrong with it.
        problem: Problem,
    },
    /// More sockets of one kind than the server has tokens for.
    TooMany {
        /// How many were passed.
        passed: usize,
        /// The most of each kind (TCP, UDP) served.
        max: usize,
    },
    /// `--no-tcp` or `--no-udp` turned off every socket passed.
    AllTurnedOff {
        /// How many were passed.
        passed: usize,
    },
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::Variable {
                name,
                value,
                wanted,
            } => write!(
                f,
                "socket activation: {name} is set to {value:?}, which is not {wanted}. \
                 Whatever started echod set it wrongly; unset LISTEN_PID, LISTEN_FDS and \
                 LISTEN_FDNAMES to let echod bind its own sockets."
            ),
            ActivationError::OverLimit { count, limit } => write!(
                f,
                "socket activation: LISTEN_FDS says {count} sockets were passed, more than \
                 this process may have open (its open-files limit is {limit}). Whatever started \
                 echod set it wrongly; unset LISTEN_PID and LISTEN_FDS to let \
                 echod bind its own sockets."
            ),
            ActivationError::NotOpen { count, last } => write!(
                f,
                "socket activation: LISTEN_FDS says {count} socket(s) were passed, {}, but \
                 descriptor {last} is not open. Whatever started echod set LISTEN_FDS wrongly or closed the sockets; unset \
                 LISTEN_PID and LISTEN_FDS to let echod bind its own sockets.",
                if *count == 1 {
                    format!("as descriptor {LISTEN_FDS_START}")
                } else {
                    format!("as descriptors {LISTEN_FDS_START} to {last}")
                }
            ),
            ActivationError::Socket { fd, name, problem } => {
                write!(f, "socket activation: descriptor {fd} (named {name:?}) ")?;
                match problem {
                    Problem::NotTcpOrUdp => f.write_str(
                        "is not a TCP or UDP socket over IPv4 or IPv6. echod serves \
                         ListenStream= (TCP) and ListenDatagram= (UDP) sockets; remove other \
                         Listen…= lines and SocketProtocol= from the .socket unit.",
                    ),
                    Problem::NotListening => f.write_str(
                        "is a TCP connection, not a listening socket. echod accepts \
                         connections itself: set Accept=no (the default) in the .socket unit.",
                    ),
                    Problem::Setup(err) => write!(
                        f,
                        "cannot be set up for the event loop: {err}. Check the .socket unit."
                    ),
                }
            }
            ActivationError::TooMany { passed, max } => write!(
                f,
                "socket activation: the service manager passed {passed} sockets, more than \
                 the {max} TCP and {max} UDP sockets echod serves; list fewer in the .socket unit."
            ),
            ActivationError::AllTurnedOff { passed } => write!(
                f,
                "socket activation: --no-tcp or --no-udp turns off the transport of every \
                 socket the service manager passed ({passed}), so there is nothing to serve; \
                 remove that flag from ExecStart= or change the .socket unit."
            ),
        }
    }
}

impl std::error::Error for ActivationError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_activated_without_the_variables() {
        assert!(matches!(parse(None, None, None, 42), Ok(None)));
        assert!(matches!(parse(None, Some("2"), None, 42), Ok(None)));
        assert!(matches!(parse(Some("42"), None, None, 42), Ok(None)));
    }

    #[test]
    fn sockets_meant_for_another_process_are_left_alone() {
        // A parent's LISTEN_* variables inherited through the environment.
        assert!(matches!(parse(Some("41"), Some("2"), None, 42), Ok(None)));
    }

    #[test]
    fn count_and_names_are_read() {
        let passed = parse(Some("42"), Some("2"), Some("echo:echo-udp"), 42)
            .unwrap()
            .unwrap();
        assert_eq!(passed.count, 2);
        assert_eq!(passed.name(0), "echo");
        assert_eq!(passed.name(1), "echo-udp");
    }

    #[test]
    fn missing_or_mismatched_names_are_unknown() {
        let unnamed = parse(Some("42"), Some("2"), None, 42).unwrap().unwrap();
        assert_eq!(unnamed.name(1), "unknown");
        let short = parse(Some("42"), Some("2"), Some("one"), 42)
            .unwrap()
            .unwrap();
        assert_eq!(short.name(0), "unknown");
        assert_eq!(short.name(1), "unknown");
    }

    fn inherited(tcp: usize, udp: usize) -> Vec<Socket> {
        let tcp = (0..tcp).map(|_| Inherited::Tcp(TcpListener::bind("127.0.0.1:0").unwrap()));
        let udp = (0..udp).map(|_| Inherited::Udp(UdpSocket::bind("127.0.0.1:0").unwrap()));
        tcp.chain(udp)
            .enumerate()
            .map(|(i, socket)| Socket {
                fd: LISTEN_FDS_START + i as i32,
                name: format!("s{i}"),
                local: match &socket {
                    Inherited::Tcp(l) => l.local_addr().unwrap(),
                    Inherited::Udp(u) => u.local_addr().unwrap(),
                },
                socket,
            })
            .collect()
    }

    #[test]
    fn sockets_are_sorted_by_transport() {
        let served = sort(inherited(2, 1), true, true, 8).unwrap();
        assert_eq!((served.tcp.len(), served.udp.len()), (2, 1));
    }

    #[test]
    fn a_transport_turned_off_is_left_out() {
        let served = sort(inherited(1, 2), true, false, 8).unwrap();
        assert_eq!((served.tcp.len(), served.udp.len()), (1, 0));
        let err = sort(inherited(0, 2), true, false, 8).unwrap_err();
        assert!(
            matches!(err, ActivationError::AllTurnedOff { passed: 2 }),
            "{err}"
        );
    }

    #[test]
    fn more_sockets_than_tokens_are_refused() {
        let err = sort(inherited(3, 0), true, true, 2).unwrap_err();
        assert!(
            matches!(err, ActivationError::TooMany { passed: 3, max: 2 }),
            "{err}"
        );
    }

    #[test]
    fn malformed_variables_are_errors_with_a_sentence() {
        let err = parse(Some("me"), Some("1"), None, 42).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("socket activation: LISTEN_PID is set to \"me\""),
            "{err}"
        );
        for bad in [
            "-1",
            "two",
            "",
            " 2",
            "2147483646",
            "99999999999999999999999",
        ] {
            let err = parse(Some("42"), Some(bad), None, 42).unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "LISTEN_FDS is set to {bad:?}, which is not a number of sockets (0 for none)"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn zero_sockets_passed_is_not_activation() {
        // sd_listen_fds(3) returns 0 then: the service binds its own.
        assert!(matches!(parse(Some("42"), Some("0"), None, 42), Ok(None)));
    }

    #[test]
    fn the_largest_count_a_descriptor_number_allows_is_read() {
        // 3 + N - 1 = i32::MAX: the last descriptor number that exists.
        let passed = parse(Some("42"), Some("2147483645"), None, 42)
            .unwrap()
            .unwrap();
        assert_eq!(passed.count, 2_147_483_645);
    }

    fn passed(count: usize) -> Passed {
        Passed {
            count,
            names: Vec::new(),
        }
    }

    #[test]
    fn a_count_above_the_open_files_limit_is_refused_before_any_descriptor_is_asked() {
        let asked = std::cell::Cell::new(false);
        let err = check_count(&passed(1025), 1024, |_| {
            asked.set(true);
            Some(true)
        })
        .unwrap_err();
        assert!(!asked.get());
        let text = err.to_string();
        assert!(
            text.contains("LISTEN_FDS says 1025 sockets were passed, more than this process may have open (its open-files limit is 1024)"),
            "{text}"
        );
        // At the limit, the last descriptor decides.
        assert!(check_count(&passed(1024), 1024, |_| Some(true)).is_ok());
    }

    #[test]
    fn the_last_descriptor_named_must_be_open() {
        let asked = std::cell::Cell::new(0);
        let err = check_count(&passed(5), 1024, |fd| {
            asked.set(fd);
            Some(false)
        })
        .unwrap_err();
        assert_eq!(asked.get(), 7, "3 + 5 - 1");
        let text = err.to_string();
        assert!(
            text.contains("descriptors 3 to 7, but descriptor 7 is not open"),
            "{text}"
        );
        let one = check_count(&passed(1), 1024, |_| Some(false)).unwrap_err();
        assert!(
            one.to_string()
                .contains("as descriptor 3, but descriptor 3 is not open"),
            "{one}"
        );
        // Without /proc the open-files limit is the bound.
        assert!(check_count(&passed(5), 1024, |_| None).is_ok());
    }

    #[test]
    fn descriptors_are_told_open_or_not() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        assert_eq!(descriptor_open(fd), Some(true));
        drop(file);
        assert_eq!(descriptor_open(i32::MAX), Some(false));
    }
}
