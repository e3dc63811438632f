//! What to check: `ADDR` as a person types it (`host:port`, `[v6]:port`,
//! a bare host for port 7), resolved to the addresses to probe: one per
//! address family, so a name with IPv4 and IPv6 addresses is checked on
//! both, as clients that prefer either will reach it.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use echod_server::net::RFC862_PORT;

/// `ADDR` split into host and port.
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

impl Target {
    /// Parses `host:port`, `[ipv6]:port`, a bare IPv6 address, or a bare
    /// host (port 7, the echo port of RFC 862).
    pub fn parse(text: &str) -> Result<Target, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the address is empty; give one such as localhost:7007".into());
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
        } else if text.parse::<std::net::Ipv6Addr>().is_ok() {
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
            Some(port) => port
                .parse()
                .map_err(|_| format!("'{port}' in '{text}' is not a port number (0 to 65535)"))?,
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

    /// Resolves the host and picks the addresses to probe (see
    /// [`one_per_family`]). A host that is an IP address needs no lookup.
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let found: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|err| self.resolve_error(&err))?
            .collect();
        let picked = one_per_family(&found);
        if picked.is_empty() {
            return Err(format!(
                "the name '{}' resolved to no address; check the spelling, or give an IP \
                 address",
                self.host
            ));
        }
        Ok(picked)
    }

    fn resolve_error(&self, err: &io::Error) -> String {
        format!(
            "could not resolve the name '{}' ({err}); check the spelling and the machine's \
             DNS settings, or give an IP address",
            self.host
        )
    }
}

/// The first address of each family, in the resolver's order (which puts
/// the family clients will try first first). Checking one address per
/// family is what matters: a server that listens on IPv4 only is refused to
/// every client that tries IPv6 first.
pub fn one_per_family(found: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut picked: Vec<SocketAddr> = Vec::new();
    for &addr in found {
        if !picked.iter().any(|p| p.is_ipv4() == addr.is_ipv4()) {
            picked.push(addr);
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn an_ip_address_needs_no_lookup() {
        let addrs = target("::1", 7007).resolve().unwrap();
        assert_eq!(addrs, vec!["[::1]:7007".parse().unwrap()]);
    }
}
