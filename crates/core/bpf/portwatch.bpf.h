/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * What portwatch.bpf.c and connections.bpf.c need from the kernel beyond the structs of
 * kernel.bpf.h (shared with owners.bpf.c), and the records they send to userspace.
 */
#ifndef PORTWATCH_BPF_H
#define PORTWATCH_BPF_H

#include "kernel.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define PW_TCP_CLOSE 7   /* TCP_CLOSE in include/net/tcp_states.h */
#define PW_TCP_LISTEN 10 /* TCP_LISTEN */

/* struct pw_event.kind */
#define PW_KIND_LISTEN 1      /* TCP socket entered LISTEN */
#define PW_KIND_UNLISTEN 2    /* TCP socket left LISTEN */
#define PW_KIND_UDP_BIND 3    /* UDP socket bound explicitly */
#define PW_KIND_UDP_CONNECT 4 /* UDP socket about to connect: no longer a listener */
#define PW_KIND_UDP_RELEASE 5 /* UDP socket with a local port released (closed) */
#define PW_KIND_EXIT 6        /* a process userspace asked about exited (its last thread) */

/*
 * One ring-buffer record, 80 bytes, native byte order except addr. Mirrored by
 * crates/core/src/ebpf/record.rs.
 *
 *   off size field
 *     0    8 ts_ns     bpf_ktime_get_ns(): CLOCK_MONOTONIC nanoseconds
 *     8    8 cookie    socket cookie (as in sock_diag's idiag_cookie)
 *    16    4 pid       thread group id of the current task (the process)
 *    20    4 tid       thread id
 *    24    4 uid       current task's uid (in the initial user namespace)
 *    28    4 netns     inode of the socket's network namespace
 *    32    1 kind      PW_KIND_*
 *    33    1 family    AF_INET or AF_INET6
 *    34    1 protocol  IPPROTO_TCP or IPPROTO_UDP
 *    35    1 (zero)
 *    36    2 port      local port, host byte order (0: not bound yet)
 *    38    2 (zero)
 *    40   16 addr      local address, network byte order; IPv4 in the first 4 bytes
 *    56   16 comm      task comm, NUL-padded (the calling thread's)
 *    72    8 ino       inode of the socket (what /proc/PID/fd/N links to); 0 if it has none
 *
 * pid, tid, uid, comm, addr and ino are filled in on opens (LISTEN, UDP_BIND) and 0 on
 * closes, which carry the cookie (joining them to their open), family, protocol, port, netns.
 * EXIT carries ts_ns and pid (the process that exited) only.
 */
struct pw_event {
	__u64 ts_ns;
	__u64 cookie;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 netns;
	__u8 kind;
	__u8 family;
	__u8 protocol;
	__u8 pad0;
	__u16 port;
	__u16 pad1;
	__u8 addr[16];
	char comm[16];
	__u64 ino;
};

_Static_assert(sizeof(struct pw_event) == 80, "pw_event layout is shared with record.rs");

/*
 * Connection events (connections.bpf.c): their own record, ring buffer and maps, loaded only
 * when connection events are asked for. Declared after everything above, which stays as it is.
 */

#define PW_TCP_ESTABLISHED 1
#define PW_TCP_SYN_SENT 2
#define PW_TCP_SYN_RECV 3
/* PW_TCP_CLOSE (7) and PW_TCP_LISTEN (10) are defined above */

/* The fields the connection programs read beyond the listener ones. */
struct sock_common___conn {
	__be32 skc_daddr;
	__be16 skc_dport;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

/* struct task_struct (real_parent, tgid) is in kernel.bpf.h. */

/* struct pw_conn_event.kind */
#define PW_CONN_CONNECT 1    /* a TCP connect(2) sent its SYN: in the caller's context */
#define PW_CONN_ACCEPT 2     /* an inbound TCP connection reached ESTABLISHED (softirq) */
#define PW_CONN_DISCONNECT 3 /* a connection reported by one of the above reached CLOSE */

/* struct pw_conn_event.dir, and the bits of pw_conn_config.flags that select them */
#define PW_DIR_OUT 1
#define PW_DIR_IN 2
/* pw_conn_config.flags: only remotes in PW_CONN_ONLY; none in PW_CONN_IGNORE */
#define PW_CONN_F_ONLY 4
#define PW_CONN_F_IGNORE 8

/* Slot 0 of PW_CONN_CONFIG, written by userspace before the programs are attached. */
struct pw_conn_config {
	__u32 flags;    /* PW_DIR_OUT | PW_DIR_IN | PW_CONN_F_* */
	__u32 own_tgid; /* connects by this process and its descendants are left out; 0: none */
};

/* Keys of the remote-address LPM tries: IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d). */
struct pw_cidr_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/*
 * One connection record, 96 bytes, native byte order except the addresses. Mirrored by
 * crates/core/src/source/ebpf/conn_record.rs.
 *
 *   off size field
 *     0    8 ts_ns       CLOCK_MONOTONIC ns: the connect (SYN_SENT), the accept or the close
 *     8    8 cookie      socket cookie (as in sock_diag's idiag_cookie)
 *    16    4 pid         connect: the caller's thread group id; accept: the process that
 *                       called listen(2) on the listener, recorded then (0 if unknown);
 *                       disconnect: 0. Never the task a softirq interrupted.
 *    20    4 tid         connect: the caller's thread id; else 0
 *    24    4 uid         connect: the caller's uid; accept: the listen caller's; else 0
 *    28    4 netns       inode of the socket's network namespace
 *    32    1 kind        PW_CONN_*
 *    33    1 family      AF_INET or AF_INET6
 *    34    1 dir         PW_DIR_OUT or PW_DIR_IN
 *    35    1 established disconnect: 1 if it reached ESTABLISHED (0: a connect that failed)
 *    36    2 lport       local port, host byte order
 *    38    2 rport       remote port, host byte order
 *    40   16 laddr       local address, network byte order; IPv4 in the first 4 bytes
 *    56   16 raddr       remote address, likewise
 *    72   16 comm        connect: the calling thread's comm, NUL-padded; accept: the listen
 *                       caller's; else zero
 *    88    8 duration_ns disconnect: since the connect or accept; else 0
 */
struct pw_conn_event {
	__u64 ts_ns;
	__u64 cookie;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u32 netns;
	__u8 kind;
	__u8 family;
	__u8 dir;
	__u8 established;
	__u16 lport;
	__u16 rport;
	__u8 laddr[16];
	__u8 raddr[16];
	char comm[16];
	__u64 duration_ns;
};

_Static_assert(sizeof(struct pw_conn_event) == 96, "pw_conn_event layout is shared with conn_record.rs");

#endif
