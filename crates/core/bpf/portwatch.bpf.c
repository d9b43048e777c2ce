// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// portwatch kernel events: TCP sockets entering and leaving LISTEN, UDP sockets bound,
// connected and released, each reported once, in the context of the process that did it,
// and the exit of the processes that own them, through one ring buffer. These programs observe only: every cgroup hook returns 1 (allow)
// on every path, so loading them can never change what a socket call does.
//
// Built by `make bpf` into portwatch.bpf.o, which is committed (cargo needs no clang) and
// checked against this source by `make bpf-check`. Compiled once (CO-RE): field offsets come
// from the running kernel's BTF at load time, through the preserve_access_index structs in
// kernel.bpf.h, not from a vmlinux.h generated on the build machine.
//
// The record layout (struct pw_event) is decoded by crates/core/src/ebpf/record.rs: keep both
// in step.

#include "portwatch.bpf.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

// Ring buffer for struct pw_event records. Userspace sets the size at load time (a power of two,
// a multiple of the page size); this default is what a plain load gets.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} PW_EVENTS SEC(".maps");

// Slot 0: events dropped because the ring buffer was full. One plain counter, updated with an
// atomic add, so userspace reads one value.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} PW_LOST SEC(".maps");

// Cookies of the UDP sockets reported bound: only their connect or release is a listener's
// end. A client's socket (bound implicitly by its first send or connect: every DNS query) is
// not reported, so an idle watcher is not woken by every resolver on the host. LRU: a socket
// whose release was never seen (the map was full) cannot keep its slot for good.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} PW_UDP_BOUND SEC(".maps");

// Processes whose exit userspace wants to hear of (owners of the sockets it tracks), by
// thread group id: it keeps this set in step with its open set. Full: the rest are found by
// userspace's own periodic check.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} PW_OWNERS SEC(".maps");

// Slot 0: 1 when only the namespaces in PW_NETNS are watched (a watcher of one namespace or
// container), 0 for all. Written by userspace; events of other namespaces are then not sent,
// so they do not wake a watcher that would drop them.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} PW_NETNS_ONLY SEC(".maps");

// The inodes of the watched network namespaces, when PW_NETNS_ONLY says so.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} PW_NETNS SEC(".maps");

// Whether events of namespace `inum` are wanted.
static __always_inline int netns_wanted(__u32 inum)
{
	__u32 key = 0;
	__u32 *only = bpf_map_lookup_elem(&PW_NETNS_ONLY, &key);

	return !only || !*only || bpf_map_lookup_elem(&PW_NETNS, &inum);
}

static __always_inline void count_lost(void)
{
	__u32 key = 0;
	__u64 *lost = bpf_map_lookup_elem(&PW_LOST, &key);

	if (lost)
		__sync_fetch_and_add(lost, 1);
}

// Reserves a zeroed record of `kind`, or counts it lost.
static __always_inline struct pw_event *reserve(__u8 kind)
{
	struct pw_event *e = bpf_ringbuf_reserve(&PW_EVENTS, sizeof(*e), 0);

	if (!e) {
		count_lost();
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	return e;
}

// Fills in who the current task is: pid, tid, uid, comm. Only for events whose caller is the
// socket's owner (an open): a close names the owners userspace already knows.
static __always_inline void fill_caller(struct pw_event *e)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

// The inode of the socket itself (what /proc/PID/fd/N links to): how its holders are found.
// 0 for a socket without a file (kernel sockets).
static __always_inline __u64 sock_ino(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
}

// The inode of the socket's network namespace (what /proc/PID/ns/net links to).
static __always_inline __u32 netns_inum(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

// The local port. skc_num is what the port tables use, but closing a socket whose port the
// kernel picked (bind to port 0) releases the port and zeroes skc_num before the LISTEN ->
// CLOSE change is traced; inet_sport, the copy in network order, stays.
static __always_inline __u16 local_port(const struct sock *sk)
{
	__u16 num = BPF_CORE_READ(sk, __sk_common.skc_num);

	if (num)
		return num;
	return bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
}

// (a) TCP: a socket entering LISTEN (listen(2)) or leaving it (close, shutdown, or a failed
// listen). Fires in the caller's context, so the current task is the owner.
//
// This runs on every TCP state change on the host (every connection's handshake and close),
// so it reads the typed tracepoint argument directly: with BTF the verifier turns each field
// access into one guarded load, where a BPF_CORE_READ is a helper call (~30 ns each). A
// change that does not involve LISTEN returns after two compares; leaving LISTEN sends only
// what identifies the socket (its cookie, for the close) and where (family, port, netns).
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(pw_tcp_listen, const struct sock *sk, int oldstate, int newstate)
{
	struct pw_event *e;
	__u16 family;
	__u32 netns;
	__u8 kind;

	// A listener leaves LISTEN only for CLOSE (close, shutdown, a failed listen). The other
	// change out of LISTEN is a connection's child socket, cloned from its listener with the
	// listener's state and set to SYN_RECV: one per accepted connection, not a close.
	if (newstate == PW_TCP_LISTEN)
		kind = PW_KIND_LISTEN;
	else if (oldstate == PW_TCP_LISTEN && newstate == PW_TCP_CLOSE)
		kind = PW_KIND_UNLISTEN;
	else
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	netns = sk->__sk_common.skc_net.net->ns.inum;
	if (!netns_wanted(netns))
		return 0;

	e = reserve(kind);
	if (!e)
		return 0;
	e->cookie = bpf_get_socket_cookie((void *)sk);
	e->netns = netns;
	e->family = family;
	e->protocol = IPPROTO_TCP;
	e->port = sk->__sk_common.skc_num;
	if (!e->port) // the close of a socket whose port the kernel picked (see local_port)
		e->port = local_port(sk);
	if (kind == PW_KIND_LISTEN) {
		fill_caller(e);
		e->ino = sk->sk_socket->file->f_inode->i_ino;
		if (family == AF_INET)
			*(__u32 *)e->addr = sk->__sk_common.skc_rcv_saddr;
		else
			__builtin_memcpy(e->addr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline int is_udp(const struct bpf_sock *sk)
{
	return sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP;
}

// The kernel socket behind a bpf_sock pointer, as a plain address for probe reads: the
// verifier forbids arithmetic on socket pointers, so the pointer goes through the stack and
// comes back as a scalar. Only ever dereferenced with bpf_probe_read_kernel (BPF_CORE_READ).
static __always_inline const struct sock *kernel_sock(const void *bs)
{
	const void *copy = bs;
	const struct sock *out = 0;

	bpf_probe_read_kernel(&out, sizeof(out), &copy);
	return out;
}

// What a close carries: where the socket was (family, port, netns); the cookie joins it to its
// open. CO-RE probe reads of the kernel socket: outside post_bind4/6 the bpf_sock view's
// src_ip4/src_ip6/src_port may not be read.
static __always_inline void fill_closed(struct pw_event *e, const struct sock *sk)
{
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->protocol = IPPROTO_UDP;
	e->port = local_port(sk);
	e->netns = netns_inum(sk);
}

// (b) UDP: an explicit bind(2) (port 0 included: the event carries the port the kernel chose).
// Implicit binds (a first sendto or connect on an unbound socket) do not run this hook. The
// address and port come from the bpf_sock view (readable here, cheaper than probe reads).
static __always_inline int udp_bind(struct bpf_sock *ctx, int v6)
{
	const struct sock *sk;
	struct pw_event *e;

	if (!is_udp(ctx))
		return 1;
	sk = kernel_sock(ctx);
	__u32 netns = netns_inum(sk);
	// Not recorded as bound either: its connect and release are not sent.
	if (!netns_wanted(netns))
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u8 one = 1;

	bpf_map_update_elem(&PW_UDP_BOUND, &cookie, &one, BPF_ANY);
	e = reserve(PW_KIND_UDP_BIND);
	if (!e)
		return 1;
	e->cookie = cookie;
	fill_caller(e);
	e->family = v6 ? AF_INET6 : AF_INET;
	e->protocol = IPPROTO_UDP;
	e->port = ctx->src_port;
	// Each hook may read only its own family's address field: `v6` is a constant per program.
	if (!v6) {
		*(__u32 *)e->addr = ctx->src_ip4;
	} else {
		*(__u32 *)&e->addr[0] = ctx->src_ip6[0];
		*(__u32 *)&e->addr[4] = ctx->src_ip6[1];
		*(__u32 *)&e->addr[8] = ctx->src_ip6[2];
		*(__u32 *)&e->addr[12] = ctx->src_ip6[3];
	}
	e->netns = netns;
	e->ino = sock_ino(sk);
	bpf_ringbuf_submit(e, 0);
	return 1;
}

SEC("cgroup/post_bind4")
int pw_udp_bind4(struct bpf_sock *ctx)
{
	return udp_bind(ctx, 0);
}

SEC("cgroup/post_bind6")
int pw_udp_bind6(struct bpf_sock *ctx)
{
	return udp_bind(ctx, 1);
}

// (c) UDP: connect(2) to an address. A connected UDP socket only receives from its peer, so a
// bound socket that connects stops being a listener. Runs before the kernel connects (the
// call may still fail); the local address and port are the ones bound so far. A socket with no
// port yet was never a listener (a resolver's query socket, say): not reported, which keeps
// the busiest UDP pattern out of the ring buffer. Disconnecting (connect to AF_UNSPEC) does not
// run this hook.
static __always_inline int udp_connect(struct bpf_sock_addr *ctx)
{
	const struct sock *ksk;
	struct bpf_sock *sk;
	struct pw_event *e;

	if (ctx->type != SOCK_DGRAM || ctx->protocol != IPPROTO_UDP)
		return 1;
	sk = ctx->sk;
	if (!sk)
		return 1;
	ksk = kernel_sock(sk);
	if (BPF_CORE_READ(ksk, __sk_common.skc_num) == 0)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (!bpf_map_lookup_elem(&PW_UDP_BOUND, &cookie))
		return 1;
	e = reserve(PW_KIND_UDP_CONNECT);
	if (!e)
		return 1;
	e->cookie = cookie;
	fill_closed(e, ksk);
	bpf_ringbuf_submit(e, 0);
	return 1;
}

SEC("cgroup/connect4")
int pw_udp_conn4(struct bpf_sock_addr *ctx)
{
	return udp_connect(ctx);
}

SEC("cgroup/connect6")
int pw_udp_conn6(struct bpf_sock_addr *ctx)
{
	return udp_connect(ctx);
}

// (d) UDP: the socket is released (last close). Only sockets reported bound are reported
// (PW_UDP_BOUND); the others were never listeners.
SEC("cgroup/sock_release")
int pw_udp_release(struct bpf_sock *ctx)
{
	const struct sock *sk;
	struct pw_event *e;

	if (!is_udp(ctx))
		return 1;
	sk = kernel_sock(ctx);
	if (BPF_CORE_READ(sk, __sk_common.skc_num) == 0)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (!bpf_map_lookup_elem(&PW_UDP_BOUND, &cookie))
		return 1;
	bpf_map_delete_elem(&PW_UDP_BOUND, &cookie);
	e = reserve(PW_KIND_UDP_RELEASE);
	if (!e)
		return 1;
	e->cookie = cookie;
	fill_closed(e, sk);
	bpf_ringbuf_submit(e, 0);
	return 1;
}

// (e) A process that owns a tracked socket exits: its last thread, when the thread group is
// dead (signal->live reached 0), before its files are closed. Sockets it shared with others
// (a forked server's parent) change owners now, not at the next periodic check. Every exit on
// the host runs this; one hash lookup sends the others away.
SEC("tp_btf/sched_process_exit")
int BPF_PROG(pw_owner_exit, struct task_struct *p)
{
	struct pw_event *e;
	__u32 tgid = p->tgid;

	if (!bpf_map_lookup_elem(&PW_OWNERS, &tgid))
		return 0;
	if (p->signal->live.counter != 0)
		return 0;
	e = reserve(PW_KIND_EXIT);
	if (!e)
		return 0;
	e->pid = tgid;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
