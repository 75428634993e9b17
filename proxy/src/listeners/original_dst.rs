//! The destination a redirected connection was addressed to, before iptables `REDIRECT` rewrote
//! it to the proxy's port: `getsockopt(SOL_IP, SO_ORIGINAL_DST)` for IPv4 and
//! `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` for IPv6 (Linux conntrack). This is the only
//! module of the proxy allowed `unsafe`, for that one call (`get_sockaddr`).

use std::io;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The original destination of an accepted connection. For a connection that was not redirected
/// this is its own local address (conntrack still knows it); without conntrack it is an error.
///
/// The family is the connection's, not the listening socket's: an IPv4 connection accepted by a
/// dual-stack `[::]` socket has an IPv4-mapped local address, and conntrack holds it as IPv4
/// (asking `SOL_IPV6` for it fails with `ENOENT`).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let ipv6 = local.ip().to_canonical().is_ipv6();
    imp::original_dst(stream, ipv6)
}

/// The accepted connection's own address in its own family (see `original_dst`).
pub fn local_addr(stream: &TcpStream) -> io::Result<SocketAddr> {
    stream.local_addr().map(super::bind::canonical)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::mem::size_of;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::{AsRawFd, RawFd};
    use tokio::net::TcpStream;

    /// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
    /// (linux/netfilter_ipv6/ip6_tables.h) are both 80.
    const SO_ORIGINAL_DST: libc::c_int = 80;

    pub fn original_dst(stream: &TcpStream, ipv6: bool) -> io::Result<SocketAddr> {
        let fd = stream.as_raw_fd();
        if ipv6 {
            let zero = libc::sockaddr_in6 {
                sin6_family: 0,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
                sin6_scope_id: 0,
            };
            let sin6 = get_sockaddr(fd, libc::SOL_IPV6, zero)?;
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        } else {
            let zero = libc::sockaddr_in {
                sin_family: 0,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: 0 },
                sin_zero: [0; 8],
            };
            let sin = get_sockaddr(fd, libc::SOL_IP, zero)?;
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
    }

    /// The only `unsafe` in the proxy: `getsockopt(fd, level, SO_ORIGINAL_DST)` into `addr`, a
    /// `sockaddr_in` (level SOL_IP) or `sockaddr_in6` (level SOL_IPV6), returned as filled in.
    #[allow(unsafe_code)]
    fn get_sockaddr<T: Copy>(fd: RawFd, level: libc::c_int, mut addr: T) -> io::Result<T> {
        let mut len = size_of::<T>() as libc::socklen_t;
        // SAFETY: `fd` is an open socket borrowed from a live `TcpStream` for the duration of the
        // call; `addr` is an initialised, plain-old-data C struct valid for writes of `len`
        // bytes, and the kernel writes at most `len` bytes into it. Any bytes it writes leave a
        // valid value of `T` (every bit pattern is valid for these integer-only structs).
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                SO_ORIGINAL_DST,
                (&mut addr as *mut T).cast::<libc::c_void>(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(addr)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn original_dst(
        _stream: &tokio::net::TcpStream,
        _ipv6: bool,
    ) -> std::io::Result<std::net::SocketAddr> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "transparent proxying needs Linux (SO_ORIGINAL_DST)",
        ))
    }
}
