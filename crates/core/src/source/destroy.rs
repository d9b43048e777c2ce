//! The sock_diag destroy feed: the cookie of every inet socket the kernel frees, within a
//! millisecond of the close, from the multicast groups of one network namespace.
//!
//! Owns the subscribed netlink socket and the decoding of its messages; what a cookie means
//! is the tracker's business. No "created" counterpart exists, so the feed only says "gone".

use std::io;

use netlink_packet_core::{NetlinkBuffer, Parseable};
use netlink_packet_sock_diag::constants::SOCK_DIAG_BY_FAMILY;
use netlink_packet_sock_diag::inet::InetResponseHeader;
use netlink_sys::{Socket as NlSocket, protocols::NETLINK_SOCK_DIAG};

use super::diag::{INET_DIAG_MSG_LEN, RECV_BUF_LEN, cookie};
use super::{At, Feed, FeedState, Observation};
use crate::error::{Error, Result};

/// The sock_diag destroy multicast groups: TCP/IPv4, UDP/IPv4, TCP/IPv6, UDP/IPv6
/// (`SKNLGRP_INET_TCP_DESTROY` … `SKNLGRP_INET6_UDP_DESTROY`).
const DESTROY_GROUPS: [u32; 4] = [1, 2, 3, 4];

/// Calls `f` with the cookie of every socket-destroyed message in one datagram from the
/// destroy groups. Those messages carry inode 0 and uid 0; only the cookie identifies the
/// socket. Malformed messages end the datagram (the next scan corrects anything missed).
pub(crate) fn destroyed_cookies(buf: &[u8], mut f: impl FnMut(u64)) {
    let mut offset = 0;
    while offset < buf.len() {
        let Ok(msg) = NetlinkBuffer::new_checked(&buf[offset..]) else { return };
        let len = msg.length() as usize;
        if len < 16 {
            return;
        }
        offset += len.next_multiple_of(4);
        let payload = msg.payload();
        if msg.message_type() == SOCK_DIAG_BY_FAMILY
            && payload.len() >= INET_DIAG_MSG_LEN
            && let Ok(h) = InetResponseHeader::parse(&payload[..INET_DIAG_MSG_LEN])
        {
            f(cookie(h.socket_id.cookie));
        }
    }
}

/// What draining the destroy feed found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Messages were dropped (ENOBUFS): closes may have been missed, so rescan.
    pub(crate) overrun: bool,
    /// Datagrams from a process rather than the kernel, dropped.
    pub(crate) forged: u32,
}

/// A netlink socket subscribed to the sock_diag destroy groups of the namespace it was created
/// in. Every freed inet socket arrives, both ends of every connection included; the caller
/// keeps the cookies it knows and drops the rest.
pub(crate) struct DestroyFeed {
    socket: NlSocket,
    buf: Vec<u8>,
}

impl DestroyFeed {
    /// Opens the feed; `receive_buffer` sets SO_RCVBUF (the kernel doubles it and applies its
    /// minimum), else the system default.
    pub(crate) fn open(receive_buffer: Option<usize>) -> Result<DestroyFeed> {
        let nl = |source| Error::NetlinkUnavailable { source };
        let mut socket = NlSocket::new(NETLINK_SOCK_DIAG).map_err(nl)?;
        if let Some(bytes) = receive_buffer {
            socket.set_rx_buf_sz(bytes).map_err(nl)?;
        }
        socket.bind_auto().map_err(nl)?;
        for group in DESTROY_GROUPS {
            socket.add_membership(group).map_err(nl)?;
        }
        socket.set_non_blocking(true).map_err(nl)?;
        Ok(DestroyFeed { socket, buf: vec![0; RECV_BUF_LEN] })
    }

    /// For `poll`.
    pub(crate) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.socket.as_fd()
    }

    /// Reads every pending message without blocking, calling `f` with each destroyed cookie.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(u64)) -> Result<Drained> {
        let mut drained = Drained::default();
        loop {
            let mut window = &mut self.buf[..];
            match self.socket.recv_from(&mut window, 0) {
                Ok((0, _)) => return Ok(drained),
                // Only the kernel (port id 0) speaks for the destroy groups: any process may
                // send a datagram to this socket's port id, and a copy of a live socket's
                // message would otherwise report it closed while it still listens.
                Ok((_, from)) if from.port_number() != 0 => drained.forged += 1,
                Ok((n, _)) => destroyed_cookies(&self.buf[..n.min(self.buf.len())], &mut f),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => drained.overrun = true,
                Err(source) => return Err(Error::Netlink { request: "destroy events", source }),
            }
        }
    }
}

impl Feed for DestroyFeed {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.as_fd()
    }

    fn read(&mut self, out: &mut Vec<Observation>) -> Result<FeedState> {
        let at = At::now(super::Source::Scan);
        let drained = self.drain(|cookie| out.push(Observation::Gone { cookie, at }))?;
        if drained.forged > 0 {
            log::debug!(
                "destroy feed: dropped {} datagram(s) not sent by the kernel",
                drained.forged
            );
        }
        Ok(FeedState { resync: drained.overrun, ..FeedState::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::diag::tests::{INET_LISTEN_127_8080, message};

    #[test]
    fn destroy_messages_yield_cookies() {
        // A destroy message: state 7, inode 0, uid 0, cookie 0x2_0000_0001.
        let mut msg = INET_LISTEN_127_8080;
        msg[1] = 7;
        msg[64..72].fill(0);
        let mut buf = message(SOCK_DIAG_BY_FAMILY, 0, 0, &msg);
        buf.extend(message(SOCK_DIAG_BY_FAMILY, 0, 0, &msg[..40])); // short: ignored
        let mut cookies = Vec::new();
        destroyed_cookies(&buf, |c| cookies.push(c));
        if cfg!(target_endian = "little") {
            assert_eq!(cookies, [0x2_0000_0001]);
        }
        for cut in 0..buf.len() {
            destroyed_cookies(&buf[..cut], |_| {});
        }
    }
}
