//! The UDP socket of the echo, which says more about each datagram than
//! `recv_from` does, through control messages (cmsg(3)):
//!
//! - **the kernel's drops** (`SO_RXQ_OVFL`, socket(7)): datagrams the
//!   kernel threw away because the receive buffer was full never reach
//!   echod, so no counter of its own can see them. With this option each
//!   datagram carries the socket's drop count as of its arrival.
//! - **the address it was sent to** (`IP_PKTINFO`, ip(7); `IPV6_RECVPKTINFO`,
//!   ipv6(7), RFC 3542 § 6). A socket bound to a wildcard address (`::`,
//!   `0.0.0.0`) receives for every address of the host, but a reply sent
//!   with `send_to` goes out from whichever address the kernel picks for
//!   the route back: a datagram sent to 127.0.0.2 is answered from
//!   127.0.0.1, and a client with a connected socket (which accepts only
//!   what comes from the address it sent to) never sees it. So the reply
//!   names its source, the address the datagram was sent to, as DNS
//!   servers do on hosts with several addresses.
//!
//! Per datagram this is `recvmsg` instead of `recvfrom` (the same system
//! call underneath, plus reading the control messages from a buffer kept
//! for the purpose) and, on a wildcard socket, `sendmmsg` of one message
//! with one control message instead of `sendto`. Bound to one address,
//! the kernel answers from that address anyway: no packet info is asked
//! for and replies go out with `send_to`.
//!
//! Linux only (these options and nix's wrappers for them); elsewhere the
//! socket receives and sends as plain `recv_from` / `send_to` would.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use mio::net::UdpSocket;

/// One datagram received, and what the kernel said about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Its length (it is in the caller's buffer).
    pub len: usize,
    /// Who sent it.
    pub peer: SocketAddr,
    /// The address to answer from, when the socket must say (bound to a
    /// wildcard address) and the datagram was sent to one host's address.
    pub reply_from: Option<ReplyFrom>,
    /// The socket's count of datagrams the kernel dropped, as of this
    /// one's arrival (`SO_RXQ_OVFL`; Linux leaves it out while it is 0).
    /// It counts from the socket's creation and wraps at `u32::MAX`.
    pub kernel_drops: Option<u32>,
}

/// The local address a reply goes out from (the packet info it is sent
/// with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyFrom {
    /// On an IPv4 socket: `ipi_spec_dst` of `IP_PKTINFO`, "the local
    /// address of the packet" (ip(7)), which is the destination address
    /// for a datagram sent to one of ours.
    V4(Ipv4Addr),
    /// On an IPv6 socket, the destination address of the datagram (an
    /// IPv4 one as `::ffff:a.b.c.d` on a dual-stack socket), and the
    /// interface to send on. The interface is left to the routing table
    /// (0), as BIND does, except for a link-local address, which means
    /// nothing without its link.
    V6 {
        /// The source address of the reply.
        addr: Ipv6Addr,
        /// The interface index, or 0 to let the kernel route.
        ifindex: u32,
    },
}

impl ReplyFrom {
    /// The reply's source for a datagram received on an IPv6 socket and
    /// sent to `to` on interface `ifindex`; `None` when the datagram went
    /// to a multicast or broadcast address, which is no source for a reply
    /// (the kernel then picks one, as before).
    pub fn for_ipv6(to: Ipv6Addr, ifindex: u32) -> Option<ReplyFrom> {
        let one_host = match to.to_ipv4_mapped() {
            Some(v4) => !v4.is_multicast() && !v4.is_broadcast() && !v4.is_unspecified(),
            None => !to.is_multicast() && !to.is_unspecified(),
        };
        let link_local = to.is_unicast_link_local();
        one_host.then_some(ReplyFrom::V6 {
            addr: to,
            ifindex: if link_local { ifindex } else { 0 },
        })
    }

    /// The reply's source for a datagram received on an IPv4 socket whose
    /// `IP_PKTINFO` says `spec_dst`.
    pub fn for_ipv4(spec_dst: Ipv4Addr) -> Option<ReplyFrom> {
        (!spec_dst.is_unspecified()).then_some(ReplyFrom::V4(spec_dst))
    }
}

/// A UDP socket for the echo: mio's socket for the poll, and what the
/// control messages need.
pub struct EchoSocket {
    socket: UdpSocket,
    /// Where `recvmsg` puts the control messages of one datagram: made
    /// once, reused for each.
    #[cfg(target_os = "linux")]
    control: Vec<u8>,
    /// Replies name their source (bound to a wildcard address).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    reply_from: bool,
}

impl EchoSocket {
    /// Sets up the options on a bound socket (its address is `local`):
    /// the drop count always, the packet info when `local` is a wildcard
    /// address.
    pub fn new(socket: UdpSocket, local: SocketAddr) -> io::Result<EchoSocket> {
        let reply_from = local.ip().is_unspecified();
        #[cfg(target_os = "linux")]
        {
            use nix::sys::socket::{setsockopt, sockopt};
            setsockopt(&socket, sockopt::RxqOvfl, &1)?;
            if reply_from {
                if local.is_ipv6() {
                    // On a dual-stack socket this covers IPv4 datagrams too:
                    // they come with an IPV6_PKTINFO holding the v4-mapped
                    // destination (tested in udp/tests.rs).
                    setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
                } else {
                    setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
                }
            }
        }
        Ok(EchoSocket {
            socket,
            #[cfg(target_os = "linux")]
            control: nix::cmsg_space!(u32, libc::in_pktinfo, libc::in6_pktinfo),
            reply_from,
        })
    }

    /// mio's socket, for registering with the poll.
    pub fn source_mut(&mut self) -> &mut UdpSocket {
        &mut self.socket
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::cell::RefCell;
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmsg,
        sendmmsg,
    };

    use super::{EchoSocket, Received, ReplyFrom};

    thread_local! {
        /// The message header `sendmmsg` sends a reply with, with room for
        /// one packet info. nix's `sendmsg` allocates the control-message
        /// buffer on every call; `sendmmsg` writes into headers allocated
        /// once. Those hold raw pointers, so they cannot move between
        /// threads with the `Server` (built on one thread, it may run on
        /// another): each thread that sends makes its own, on first use.
        static REPLY_HEADER: RefCell<MultiHeaders<SockaddrStorage>> = RefCell::new(
            MultiHeaders::preallocate(1, Some(nix::cmsg_space!(libc::in6_pktinfo))),
        );
    }

    impl EchoSocket {
        /// Receives one datagram into `buf`, with its control messages.
        pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
            let mut iov = [IoSliceMut::new(buf)];
            let fd = self.socket.as_raw_fd();
            let msg = recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut self.control[..]),
                MsgFlags::empty(),
            )?;
            let peer =
                msg.address.as_ref().and_then(socket_addr).ok_or_else(|| {
                    io::Error::other("a datagram came without a sender's address")
                })?;
            let mut received = Received {
                len: msg.bytes,
                peer,
                reply_from: None,
                kernel_drops: None,
            };
            // MSG_CTRUNC (the buffer too small for the control messages)
            // cannot happen with the space made for every kind asked for;
            // if it did, the datagram is still echoed, as before.
            let Ok(cmsgs) = msg.cmsgs() else {
                return Ok(received);
            };
            for cmsg in cmsgs {
                match cmsg {
                    ControlMessageOwned::RxqOvfl(drops) => received.kernel_drops = Some(drops),
                    ControlMessageOwned::Ipv4PacketInfo(info) if self.reply_from => {
                        let spec_dst = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                        received.reply_from = ReplyFrom::for_ipv4(spec_dst);
                    }
                    ControlMessageOwned::Ipv6PacketInfo(info) if self.reply_from => {
                        let to = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                        received.reply_from = ReplyFrom::for_ipv6(to, info.ipi6_ifindex);
                    }
                    _ => {}
                }
            }
            Ok(received)
        }

        /// Sends `payload` to `to`, from `from` if given.
        pub fn send(
            &mut self,
            payload: &[u8],
            to: SocketAddr,
            from: Option<ReplyFrom>,
        ) -> io::Result<usize> {
            let Some(from) = from else {
                return self.socket.send_to(payload, to);
            };
            // Only the fields the kernel reads on sending are set: for
            // IPv4 the source (`ipi_spec_dst`) and the interface (0: the
            // routing table's), ip(7); for IPv6 the source and interface.
            let v4;
            let v6;
            let cmsg = match from {
                ReplyFrom::V4(addr) => {
                    v4 = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from(addr).to_be(),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    ControlMessage::Ipv4PacketInfo(&v4)
                }
                ReplyFrom::V6 { addr, ifindex } => {
                    v6 = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: addr.octets(),
                        },
                        ipi6_ifindex: ifindex,
                    };
                    ControlMessage::Ipv6PacketInfo(&v6)
                }
            };
            let fd = self.socket.as_raw_fd();
            let iov = [IoSlice::new(payload)];
            let addrs = [Some(SockaddrStorage::from(to))];
            REPLY_HEADER.with_borrow_mut(|header| {
                sendmmsg(fd, header, [&iov], addrs, [cmsg], MsgFlags::empty())
                    .map(|_| payload.len())
                    .map_err(io::Error::from)
            })
        }
    }

    /// A std address from nix's, for the two families a UDP socket has.
    fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = addr.as_sockaddr_in() {
            return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
        }
        addr.as_sockaddr_in6()
            .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
    }
}

#[cfg(not(target_os = "linux"))]
impl EchoSocket {
    /// Receives one datagram into `buf` (no control messages here).
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        let (len, peer) = self.socket.recv_from(buf)?;
        Ok(Received {
            len,
            peer,
            reply_from: None,
            kernel_drops: None,
        })
    }

    /// Sends `payload` to `to` (the kernel picks the source).
    pub fn send(
        &mut self,
        payload: &[u8],
        to: SocketAddr,
        _from: Option<ReplyFrom>,
    ) -> io::Result<usize> {
        self.socket.send_to(payload, to)
    }
}
