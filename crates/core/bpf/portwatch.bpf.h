/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * What portwatch.bpf.c needs from the kernel, and the record it sends to userspace.
 *
 * The kernel structs below are not copies of the kernel's: they name only the fields the
 * programs read, and preserve_access_index makes every access a CO-RE relocation that the
 * loader resolves against the running kernel's BTF (/sys/kernel/btf/vmlinux), by field name,
 * looking through the kernel's anonymous unions. Offsets and sizes here do not matter.
 * This replaces a generated vmlinux.h (megabytes, tied to one build machine).
 */
#ifndef PORTWATCH_BPF_H
#define PORTWATCH_BPF_H

#include <linux/bpf.h>
#include <linux/types.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_DGRAM 2
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define PW_TCP_CLOSE 7   /* TCP_CLOSE in include/net/tcp_states.h */
#define PW_TCP_LISTEN 10 /* TCP_LISTEN */

struct in6_addr {
	__u8 s6_addr[16];
} __attribute__((preserve_access_index));

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	__be32 skc_rcv_saddr;
	unsigned short skc_family;
	__u16 skc_num;
	possible_net_t skc_net;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
} __attribute__((preserve_access_index));
struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));
struct socket {
	struct file *file;
} __attribute__((preserve_access_index));
struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	struct socket *sk_socket;
} __attribute__((preserve_access_index));

struct inet_sock {
	__be16 inet_sport;
} __attribute__((preserve_access_index));

typedef struct {
	int counter;
} pw_atomic_t;

struct signal_struct {
	pw_atomic_t live;
} __attribute__((preserve_access_index));

struct task_struct {
	int tgid;
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

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

#endif
