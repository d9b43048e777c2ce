// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// portwatch connection events: every outbound TCP connect, every inbound TCP connection that
// reaches ESTABLISHED, and the close of each one reported, through one ring buffer of their
// own (struct pw_conn_event in portwatch.bpf.h). A separate object from portwatch.bpf.c: it
// is loaded and attached only when connection events are asked for, so a listener-only
// watcher, and every socket call on the host, pays nothing for it. The programs only observe:
// the sock_ops program returns 1 and never sets a reply, so TCP behaves as without it.
//
// Who did it. A connect is reported in the caller's context: CLOSE -> SYN_SENT is traced from
// connect(2), where the current task is the caller (pid, tid, uid and comm are stashed then),
// and the record is sent from the sock_ops TCP_CONNECT_CB, still inside connect(2) but after
// the kernel picked the local port. An accept reaches ESTABLISHED in softirq context, and most
// closes happen there too: the current task is whoever was interrupted, so those records carry
// no pid at all (userspace names the listener's owners, and for a close the owners recorded
// at the connect or accept).
//
// Volume. Only connections wanted (direction, remote address: PW_CONN_CONFIG and the LPM
// tries, set by userspace before attaching) enter PW_CONNS, and only those have their close
// reported; connects by the watcher itself (and its descendants) are left out. A record that
// finds the ring buffer full is counted in PW_CONN_LOST slot 0, never invented later; a
// connection reported while PW_CONNS was full is counted in slot 1 (its close cannot be).

#include "portwatch.bpf.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} PW_CONN_EVENTS SEC(".maps");

// Slot 0: records dropped, ring buffer full. Slot 1: connections reported whose close cannot
// be (PW_CONNS full).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} PW_CONN_LOST SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pw_conn_config);
} PW_CONN_CONFIG SEC(".maps");

// Remote prefixes: with PW_CONN_F_ONLY a connection is reported only if its remote address is
// in PW_CONN_ONLY; with PW_CONN_F_IGNORE, not if it is in PW_CONN_IGNORE.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pw_cidr_key);
	__type(value, __u8);
} PW_CONN_ONLY SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pw_cidr_key);
	__type(value, __u8);
} PW_CONN_IGNORE SEC(".maps");

// One entry per connection wanted, from its connect or accept to its close.
struct conn {
	__u64 start_ns;
	__u32 pid;
	__u32 tid;
	__u32 uid;
	__u8 dir;
	__u8 reported;    // its connect or accept record was sent
	__u8 established; // it reached ESTABLISHED
	__u8 pad;
	char comm[16];
};

// Sized by userspace (default 65 536). Not an LRU: an entry is never dropped silently, so a
// close is either reported or counted as impossible (slot 1) at the connect. Allocated as used.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct conn);
} PW_CONNS SEC(".maps");

// Listeners opened since loading, by namespace, port and family: who called listen(2), in
// their context, so an accept can name the listener's owner even when the watcher has not
// handled the listener's own event yet. A listen without a bind (port chosen after the event)
// is not recorded.
struct listener_key {
	__u32 netns;
	__u16 port;
	__u16 family;
};

struct listener {
	__u64 cookie;
	__u32 pid;
	__u32 uid;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct listener_key);
	__type(value, struct listener);
} PW_CONN_LISTENERS SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&PW_CONN_LOST, &slot);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline const struct pw_conn_config *config(void)
{
	__u32 key = 0;

	return bpf_map_lookup_elem(&PW_CONN_CONFIG, &key);
}

// The remote address as an LPM key (IPv4 mapped into IPv6, so one trie holds both).
static __always_inline void remote_key(const struct sock *sk, __u16 family, struct pw_cidr_key *k)
{
	const struct sock_common___conn *c = (const void *)sk;

	k->prefixlen = 128;
	if (family == AF_INET) {
		__builtin_memset(k->addr, 0, 10);
		k->addr[10] = 0xff;
		k->addr[11] = 0xff;
		BPF_CORE_READ_INTO((__u32 *)&k->addr[12], c, skc_daddr);
	} else {
		BPF_CORE_READ_INTO((struct in6_addr *)k->addr, c, skc_v6_daddr);
	}
}

// Whether a connection in direction `dir` to this socket's remote address is wanted.
static __always_inline int wanted(const struct pw_conn_config *cfg, const struct sock *sk,
				  __u16 family, __u8 dir)
{
	struct pw_cidr_key k;

	if (!(cfg->flags & dir))
		return 0;
	if (!(cfg->flags & (PW_CONN_F_ONLY | PW_CONN_F_IGNORE)))
		return 1;
	remote_key(sk, family, &k);
	if ((cfg->flags & PW_CONN_F_ONLY) && !bpf_map_lookup_elem(&PW_CONN_ONLY, &k))
		return 0;
	if ((cfg->flags & PW_CONN_F_IGNORE) && bpf_map_lookup_elem(&PW_CONN_IGNORE, &k))
		return 0;
	return 1;
}

// Whether the current task is the watcher or one of its descendants (a hook it runs, and what
// the hook starts), up to 8 generations. The task is the kernel's BTF-typed pointer: walking
// real_parent is plain loads the verifier guards, not helper calls (this runs on every connect).
static __always_inline int is_own(const struct pw_conn_config *cfg)
{
	struct task_struct *task = bpf_get_current_task_btf();
	int i;

	if (!cfg->own_tgid)
		return 0;
	for (i = 0; i < 8 && task; i++) {
		int tgid = task->tgid;

		if (tgid == (int)cfg->own_tgid)
			return 1;
		if (tgid <= 1)
			return 0;
		task = task->real_parent;
	}
	return 0;
}

// Both ends, the family and the namespace, from the kernel socket, through CO-RE probe reads:
// for a socket address known only as a number (the sock_ops hook's).
static __always_inline void fill_tuple(struct pw_conn_event *e, const struct sock *sk)
{
	const struct sock_common___conn *c = (const void *)sk;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	e->family = family;
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	e->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->rport = bpf_ntohs(BPF_CORE_READ(c, skc_dport));
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)e->laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)e->raddr, c, skc_daddr);
	} else {
		BPF_CORE_READ_INTO((struct in6_addr *)e->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO((struct in6_addr *)e->raddr, c, skc_v6_daddr);
	}
}

// The same from the tracepoint's socket, a BTF-typed pointer: plain loads (CO-RE relocated,
// guarded by the verifier), no helper call per field. This runs for every accept and close.
static __always_inline void fill_tuple_btf(struct pw_conn_event *e, const struct sock *sk,
					   __u16 family)
{
	const struct sock_common___conn *c = (const void *)sk;

	e->family = family;
	e->netns = sk->__sk_common.skc_net.net->ns.inum;
	e->lport = sk->__sk_common.skc_num;
	e->rport = bpf_ntohs(c->skc_dport);
	if (family == AF_INET) {
		*(__u32 *)e->laddr = sk->__sk_common.skc_rcv_saddr;
		*(__u32 *)e->raddr = c->skc_daddr;
	} else {
		// Whole-struct copies: s6_addr is a macro in the kernel, not a field to relocate.
		*(struct in6_addr *)e->laddr = sk->__sk_common.skc_v6_rcv_saddr;
		*(struct in6_addr *)e->raddr = c->skc_v6_daddr;
	}
}

static __always_inline struct pw_conn_event *reserve(__u8 kind, __u64 ts_ns, __u64 cookie)
{
	struct pw_conn_event *e = bpf_ringbuf_reserve(&PW_CONN_EVENTS, sizeof(*e), 0);

	if (!e) {
		count(0);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->kind = kind;
	e->ts_ns = ts_ns;
	e->cookie = cookie;
	return e;
}

// CLOSE -> SYN_SENT, in connect(2): the caller is stashed; the record goes out from
// pw_conn_sockops once the local port is known.
static __always_inline void connecting(const struct pw_conn_config *cfg, const struct sock *sk,
				       __u16 family, __u64 cookie)
{
	struct conn c = {};
	__u64 pid_tgid;

	if (!wanted(cfg, sk, family, PW_DIR_OUT) || is_own(cfg))
		return;
	pid_tgid = bpf_get_current_pid_tgid();
	c.start_ns = bpf_ktime_get_ns();
	c.pid = pid_tgid >> 32;
	c.tid = (__u32)pid_tgid;
	c.uid = (__u32)bpf_get_current_uid_gid();
	c.dir = PW_DIR_OUT;
	bpf_get_current_comm(c.comm, sizeof(c.comm));
	// No room to remember it: without the entry no record can follow, so it is a loss.
	if (bpf_map_update_elem(&PW_CONNS, &cookie, &c, BPF_ANY))
		count(0);
}

// SYN_RECV -> ESTABLISHED: an inbound connection, reported now, without a pid.
static __always_inline void accepted(const struct pw_conn_config *cfg, const struct sock *sk,
				     __u16 family, __u64 cookie)
{
	struct conn c = {};
	struct pw_conn_event *e;

	if (bpf_map_lookup_elem(&PW_CONNS, &cookie))
		return; // a simultaneous open of our own connect: not an accept
	if (!wanted(cfg, sk, family, PW_DIR_IN))
		return;
	c.start_ns = bpf_ktime_get_ns();
	c.dir = PW_DIR_IN;
	c.reported = 1;
	c.established = 1;
	e = reserve(PW_CONN_ACCEPT, c.start_ns, cookie);
	if (!e)
		return;
	if (bpf_map_update_elem(&PW_CONNS, &cookie, &c, BPF_ANY))
		count(1);
	e->dir = PW_DIR_IN;
	fill_tuple_btf(e, sk, family);
	// Not the current task (softirq): the process that called listen(2) on the listener.
	{
		struct listener_key lk = { .netns = e->netns, .port = e->lport, .family = family };
		struct listener *l = bpf_map_lookup_elem(&PW_CONN_LISTENERS, &lk);

		if (l) {
			e->pid = l->pid;
			e->uid = l->uid;
			__builtin_memcpy(e->comm, l->comm, sizeof(e->comm));
		}
	}
	bpf_ringbuf_submit(e, 0);
}

// -> CLOSE: the close of a connection reported (an unreported entry is a connect that failed
// before its SYN: forgotten).
static __always_inline void closed(const struct sock *sk, __u16 family, __u64 cookie)
{
	struct pw_conn_event *e;
	struct conn *c = bpf_map_lookup_elem(&PW_CONNS, &cookie);
	__u64 now;

	if (!c)
		return;
	if (c->reported) {
		now = bpf_ktime_get_ns();
		e = reserve(PW_CONN_DISCONNECT, now, cookie);
		if (e) {
			e->dir = c->dir;
			e->established = c->established;
			e->duration_ns = now - c->start_ns;
			fill_tuple_btf(e, sk, family);
			bpf_ringbuf_submit(e, 0);
		}
	}
	bpf_map_delete_elem(&PW_CONNS, &cookie);
}

// A listener opened (listen(2), the caller's context) or closed: remembered for accepts.
static __always_inline void listening(const struct sock *sk, __u16 family, __u64 cookie, int open)
{
	struct listener_key k = {
		.netns = sk->__sk_common.skc_net.net->ns.inum,
		.port = sk->__sk_common.skc_num,
		.family = family,
	};
	struct listener *known;
	struct listener l = {};

	if (!k.port)
		return;
	if (!open) {
		known = bpf_map_lookup_elem(&PW_CONN_LISTENERS, &k);
		if (known && known->cookie == cookie)
			bpf_map_delete_elem(&PW_CONN_LISTENERS, &k);
		return;
	}
	l.cookie = cookie;
	l.pid = bpf_get_current_pid_tgid() >> 32;
	l.uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(l.comm, sizeof(l.comm));
	bpf_map_update_elem(&PW_CONN_LISTENERS, &k, &l, BPF_ANY);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(pw_conn_state, const struct sock *sk, int oldstate, int newstate)
{
	const struct pw_conn_config *cfg;
	struct conn *c;
	__u64 cookie;
	__u16 family;

	// The cheap tests first: this runs on every TCP state change on the host.
	if (newstate == PW_TCP_SYN_SENT) {
		if (oldstate != PW_TCP_CLOSE)
			return 0;
	} else if (newstate == PW_TCP_ESTABLISHED) {
		if (oldstate != PW_TCP_SYN_RECV && oldstate != PW_TCP_SYN_SENT)
			return 0;
	} else if (newstate != PW_TCP_CLOSE && newstate != PW_TCP_LISTEN) {
		return 0;
	}
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	cookie = bpf_get_socket_cookie((void *)sk);
	if (newstate == PW_TCP_LISTEN || oldstate == PW_TCP_LISTEN) {
		listening(sk, family, cookie, newstate == PW_TCP_LISTEN);
		return 0;
	}
	if (newstate == PW_TCP_CLOSE) {
		closed(sk, family, cookie);
		return 0;
	}
	if (newstate == PW_TCP_ESTABLISHED && oldstate == PW_TCP_SYN_SENT) {
		c = bpf_map_lookup_elem(&PW_CONNS, &cookie);
		if (c)
			c->established = 1;
		return 0;
	}
	cfg = config();
	if (!cfg)
		return 0;
	if (newstate == PW_TCP_SYN_SENT)
		connecting(cfg, sk, family, cookie);
	else
		accepted(cfg, sk, family, cookie);
	return 0;
}

// The sock_ops hook inside tcp_connect(), in connect(2), after the local port was picked: the
// connect record, with the caller stashed at SYN_SENT.
SEC("sockops")
int pw_conn_sockops(struct bpf_sock_ops *ops)
{
	struct pw_conn_event *e;
	struct bpf_sock *bs;
	struct conn *c;
	__u64 cookie;

	if (ops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	cookie = bpf_get_socket_cookie(ops);
	c = bpf_map_lookup_elem(&PW_CONNS, &cookie);
	if (!c || c->reported)
		return 1;
	bs = ops->sk;
	if (!bs)
		return 1;
	e = reserve(PW_CONN_CONNECT, c->start_ns, cookie);
	if (!e) {
		// Lost: forget it, so its close is not reported either.
		bpf_map_delete_elem(&PW_CONNS, &cookie);
		return 1;
	}
	c->reported = 1;
	e->pid = c->pid;
	e->tid = c->tid;
	e->uid = c->uid;
	e->dir = PW_DIR_OUT;
	__builtin_memcpy(e->comm, c->comm, sizeof(e->comm));
	{
		const void *copy = bs;
		const struct sock *sk = 0;

		// The verifier forbids arithmetic on socket pointers: read the kernel socket's
		// address as a scalar, and only through CO-RE probe reads.
		bpf_probe_read_kernel(&sk, sizeof(sk), &copy);
		fill_tuple(e, sk);
	}
	bpf_ringbuf_submit(e, 0);
	return 1;
}
