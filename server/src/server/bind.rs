//! Binding at start-up: the sockets to serve (bound here, or inherited
//! from a service manager through [`super::extras::activation`]), and the
//! descriptor budget that sets how many connections and pipes fit under
//! the open-files limit.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Instant;

use super::MAX_BINDS;
use super::config::{ServerConfig, StartError};
use super::extras::activation;
use super::extras::udp_guard::{GuardConfig, UdpGuard};
use super::listener::Listener;
use super::udp::{EchoSocket, UdpEcho};
use crate::net::{self, BindError, BindOptions, Transport};

/// Descriptors kept free for everything that is not a connection or a
/// pipe: the listeners and UDP sockets, the poll, the waker, the signal
/// pipe, stdio, and slack for a log file or a library that opens one. The
/// pipes bulk connections are spliced through get their own share, see
/// [`pipes_for`].
pub const RESERVED_DESCRIPTORS: u64 = 32;

/// How the open-files limit is shared out: connections, and pipes for
/// bulk streams. Worked out once, from one reading of the limit, so the
/// connections leave exactly the pipes' descriptors free.
#[derive(Clone, Copy, Debug)]
pub struct DescriptorBudget {
    /// The default `--max-connections`: the limit less
    /// [`RESERVED_DESCRIPTORS`] and the pipes' descriptors.
    pub max_connections: usize,
    /// Pipes the splice pool may open (see [`pipes_for`]).
    pub pipes: usize,
}

/// Raises the soft open-files limit to the hard limit (servers need many
/// descriptors; the soft limit is often 1,024) and shares it out.
pub fn descriptor_budget() -> DescriptorBudget {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            log::debug!("open-files limit raised to {soft} (the hard limit)");
            soft
        }
        Err(err) => {
            let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
            log::debug!("open-files limit stays {soft}: raising it failed: {err}");
            soft
        }
    };
    let pipes = pipes_for(soft);
    let max_connections = soft
        .saturating_sub(RESERVED_DESCRIPTORS + 2 * pipes as u64)
        .max(1);
    DescriptorBudget {
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        pipes,
    }
}

/// Most pipes open at once, in use or spare. Each costs two descriptors
/// (counted in the descriptor budget, see [`RESERVED_DESCRIPTORS`])
/// and up to `--buffer` of pinned kernel memory. One core saturates with a
/// handful of bulk streams, so beyond a few dozen a pipe saves little CPU
/// per stream; and 64 pipes of the default 64 KiB (4 MiB, 1,024 pages) stay
/// far below Linux's per-user pipe allowance (`fs.pipe-user-pages-soft`,
/// 16,384 pages), past which `F_SETPIPE_SZ` would be refused. More bulk
/// connections than this fall back to the ring path, which is just as
/// correct.
pub const MAX_PIPES: usize = 64;

/// How many pipes a process whose open-files limit is `limit` may have
/// open: [`MAX_PIPES`], but no more than one (two descriptors) for every 16
/// descriptors beyond [`RESERVED_DESCRIPTORS`], so that a small limit
/// is left to connections (a limit of 64 gets 2 pipes, 1,024 gets 62).
/// The connection limit leaves these descriptors free.
pub fn pipes_for(limit: u64) -> usize {
    let share = limit.saturating_sub(RESERVED_DESCRIPTORS) / 16;
    usize::try_from(share).map_or(MAX_PIPES, |share| share.min(MAX_PIPES))
}

/// Where Linux keeps the IPv4 settings of each interface (proc(5)); the
/// entries `all` and `default` sit beside the interfaces.
pub const IPV4_CONF: &str = "/proc/sys/net/ipv4/conf";

/// The entries under `conf` (normally [`IPV4_CONF`]) whose `route_localnet`
/// is 1, sorted. With it on, Linux accepts packets with a loopback source
/// or destination arriving on that interface instead of dropping them as
/// martians (ip-sysctl.rst; some cluster proxies set it), so a loopback
/// source no longer means "this host". Empty where there is no such
/// directory (not Linux).
pub fn route_localnet(conf: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(conf) else {
        return Vec::new();
    };
    let mut on: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("route_localnet"))
                .is_ok_and(|value| value.trim() == "1")
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    on.sort();
    on
}

/// The server's UDP guard, one for all its UDP sockets, so that its rates
/// bound the server's replies, not each socket's.
pub(super) fn udp_guard(config: &ServerConfig) -> UdpGuard {
    UdpGuard::new(
        &udp_guard_config(config, Path::new(IPV4_CONF)),
        Instant::now(),
    )
}

/// The UDP guard's settings as served: `--limit-loopback` holds loopback
/// sources to the rates, and so does `route_localnet` found on at start in
/// `ipv4_conf` (normally [`IPV4_CONF`]; then loopback sources may
/// come from another host), which is said once.
fn udp_guard_config(config: &ServerConfig, ipv4_conf: &Path) -> GuardConfig {
    let mut guard = config.udp_guard.clone();
    guard.limit_loopback |= config.limit_loopback;
    if config.udp && !guard.limit_loopback {
        let on = route_localnet(ipv4_conf);
        if !on.is_empty() {
            log::info!(
                "route_localnet is on ({} in {}), so datagrams with a loopback source can come \
                 from other hosts: --udp-rate and --udp-rate-total hold loopback sources too",
                on.join(", "),
                ipv4_conf.display()
            );
            guard.limit_loopback = true;
        }
    }
    guard
}

/// Binds the listeners and UDP sockets for every configured address, or
/// takes them from the service manager when it passed some.
pub(super) fn bind_all(config: &ServerConfig) -> Result<(Vec<Listener>, Vec<UdpEcho>), StartError> {
    if config.socket_activation
        && let Some(sockets) = activation::take().map_err(StartError::Activation)?
    {
        return serve_inherited(sockets, config);
    }
    let explicit = !config.bind.is_empty();
    let addrs = if explicit {
        config.bind.clone()
    } else {
        vec![net::DUAL_STACK_ANY]
    };
    if addrs.len() > MAX_BINDS {
        return Err(StartError::Bind(BindError {
            transport: Transport::Tcp,
            addr: SocketAddr::new(addrs[MAX_BINDS], config.port),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {MAX_BINDS} addresses can be served"),
            ),
        }));
    }
    let mut attempt = 1;
    loop {
        match bind_addrs(&addrs, config) {
            // The machine has no IPv6: serve IPv4 on all addresses instead.
            Err(StartError::Bind(err)) if !explicit && net::is_ipv6_unavailable(&err.source) => {
                log::debug!("IPv6 is unavailable ({}), serving IPv4 only", err.source);
                return bind_addrs(&[net::IPV4_ANY], config);
            }
            // With port 0, the port the kernel picked for TCP may be taken
            // for UDP (or on another address): pick again.
            Err(StartError::Bind(err))
                if config.port == 0
                    && err.source.kind() == io::ErrorKind::AddrInUse
                    && attempt < PORT_ZERO_ATTEMPTS =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Wraps the sockets a service manager passed for the loop. `--port`,
/// `--bind` and `--reuseport` do not apply (the manager bound them);
/// `--no-tcp` and `--no-udp` still turn a transport off.
fn serve_inherited(
    sockets: Vec<activation::Socket>,
    config: &ServerConfig,
) -> Result<(Vec<Listener>, Vec<UdpEcho>), StartError> {
    let served = activation::sort(sockets, config.tcp, config.udp, MAX_BINDS)
        .map_err(StartError::Activation)?;
    let connections = net::ConnectionOptions {
        socket_buffer: config.socket_buffer,
    };
    let mut listeners: Vec<Listener> = served
        .tcp
        .into_iter()
        .map(|(socket, local)| Listener::new(socket, local))
        .collect();
    // These listeners are listening already: the options reach the
    // connections whose handshake comes after this (see
    // `net::set_connection_options`). A service manager can set the same
    // on the socket unit (NoDelay=, ReceiveBuffer=, SendBuffer=) so that
    // the connection that started echod has them too.
    for listener in &mut listeners {
        // Without it (systemd has no setting for it), the connections
        // queued already lack it too: they get it at accept.
        listener.backlog_without_oobinline = !socket2::SockRef::from(&listener.socket)
            .out_of_band_inline()
            .unwrap_or(false);
        if let Err(err) = net::set_connection_options(&listener.socket, connections) {
            log::warn!(
                "could not set TCP_NODELAY, SO_OOBINLINE and the socket buffer sizes on the tcp socket \
                 {} passed by the service manager: {err}. Its connections are served with \
                 the kernel's defaults (set NoDelay=, ReceiveBuffer= and SendBuffer= in \
                 the .socket unit instead).",
                listener.local
            );
        }
    }
    report_socket_buffers(&listeners, config.socket_buffer);
    let udp = served
        .udp
        .into_iter()
        .map(|(socket, local)| {
            // The manager bound it with its own buffer sizes: made larger
            // here if they are smaller, as a bound socket's are.
            net::enlarge_udp_buffers(socket2::SockRef::from(&socket), local);
            echo_socket(socket, local)
        })
        .collect::<Result<_, _>>()?;
    Ok((listeners, udp))
}

/// How often `--port 0` picks again when the chosen port is not free for
/// every socket.
const PORT_ZERO_ATTEMPTS: usize = 20;

/// Wraps a bound UDP socket for the loop, with the options its control
/// messages need.
fn echo_socket(socket: mio::net::UdpSocket, local: SocketAddr) -> Result<UdpEcho, StartError> {
    let socket = EchoSocket::new(socket, local).map_err(|source| BindError {
        transport: Transport::Udp,
        addr: local,
        source,
    })?;
    Ok(UdpEcho::new(socket, local))
}

fn bind_addrs(
    addrs: &[IpAddr],
    config: &ServerConfig,
) -> Result<(Vec<Listener>, Vec<UdpEcho>), StartError> {
    // With port 0 the kernel picks a port for the first socket; every other
    // socket uses that same port, so one number serves TCP and UDP.
    let mut port = config.port;
    let options = BindOptions {
        reuse_port: config.reuse_port,
        ipv6_only: addrs.iter().any(IpAddr::is_ipv4),
        connections: net::ConnectionOptions {
            socket_buffer: config.socket_buffer,
        },
    };
    let mut listeners = Vec::new();
    let mut udp = Vec::new();
    for &ip in addrs {
        if config.tcp {
            let socket = net::bind_tcp(SocketAddr::new(ip, port), options)?;
            let local = socket.local_addr().map_err(StartError::Poll)?;
            port = local.port();
            listeners.push(Listener::new(socket, local));
        }
        if config.udp {
            let socket = net::bind_udp(SocketAddr::new(ip, port), options)?;
            let local = socket.local_addr().map_err(StartError::Poll)?;
            port = local.port();
            udp.push(echo_socket(socket, local)?);
        }
    }
    report_socket_buffers(&listeners, config.socket_buffer);
    Ok((listeners, udp))
}

/// Says what socket buffers accepted connections will get (the first
/// listener's, which they inherit), and warns when the kernel granted less
/// than `--socket-buffer` asked: then the memory bound is lower than asked,
/// and throughput may be too.
fn report_socket_buffers(listeners: &[Listener], asked: usize) {
    let Some(listener) = listeners.first() else {
        return;
    };
    if asked == 0 {
        log::debug!("accepted connections keep the kernel's socket buffer autotuning");
        return;
    }
    match net::buffer_sizes(&listener.socket) {
        // Linux grants twice what is asked (socket(7)), up to twice
        // net.core.rmem_max / wmem_max. A stock kernel caps the default
        // (212,992, so 425,984 granted): still bounded, so only a size the
        // operator chose is worth a warning.
        Ok((recv, send)) if recv < 2 * asked || send < 2 * asked => {
            let level = if asked == net::DEFAULT_SOCKET_BUFFER {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(
                level,
                "--socket-buffer {asked}: the kernel granted socket buffers of {recv} bytes \
                 to receive and {send} to send, where it grants twice what is asked; it caps \
                 them at twice net.core.rmem_max and net.core.wmem_max, which sysctl can \
                 raise"
            );
        }
        Ok((recv, send)) => log::debug!(
            "accepted connections get socket buffers of {recv} bytes to receive and {send} \
             to send (--socket-buffer {asked}, doubled by the kernel)"
        ),
        Err(err) => log::debug!("could not read the socket buffer sizes back: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_take_a_sixteenth_of_the_descriptors_beyond_the_reserve_at_most() {
        assert_eq!(pipes_for(0), 0);
        assert_eq!(pipes_for(32), 0);
        assert_eq!(pipes_for(64), 2);
        assert_eq!(pipes_for(1024), 62);
        assert_eq!(pipes_for(1056), MAX_PIPES);
        assert_eq!(pipes_for(u64::MAX), MAX_PIPES);
    }

    /// Loopback is exempt from the UDP rates unless --limit-loopback, or
    /// route_localnet is on for any interface (here a directory made to
    /// look like /proc/sys/net/ipv4/conf).
    #[test]
    fn route_localnet_or_the_flag_holds_loopback_to_the_udp_rates() {
        let conf = std::env::temp_dir().join(format!("echod-ipv4-conf-{}", std::process::id()));
        std::fs::create_dir_all(conf.join("eth0")).unwrap();
        let set = |value: &str| std::fs::write(conf.join("eth0/route_localnet"), value).unwrap();
        let default = ServerConfig::default();
        let flagged = ServerConfig {
            limit_loopback: true,
            ..ServerConfig::default()
        };
        set("0\n");
        assert!(!udp_guard_config(&default, &conf).limit_loopback);
        assert!(udp_guard_config(&flagged, &conf).limit_loopback);
        set("1\n");
        let limited = udp_guard_config(&default, &conf).limit_loopback;
        std::fs::remove_dir_all(&conf).unwrap();
        assert!(limited);
    }

    #[test]
    fn route_localnet_lists_the_interfaces_that_have_it_on() {
        let dir = std::env::temp_dir().join(format!("echod-conf-{}", std::process::id()));
        for (name, value) in [
            ("all", "0\n"),
            ("eth0", "1\n"),
            ("lo", "0\n"),
            ("cni0", "1\n"),
        ] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("route_localnet"), value).unwrap();
        }
        std::fs::create_dir_all(dir.join("odd")).unwrap(); // no file: off
        let on = route_localnet(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(on, ["cni0", "eth0"]);
        assert!(route_localnet(Path::new("/nonexistent/echod")).is_empty());
    }
}
