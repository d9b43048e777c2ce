/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * The kernel structs every portwatch BPF program reads: the event programs (portwatch.bpf.h,
 * for portwatch.bpf.c and connections.bpf.c) and the owner iterator (owners.bpf.c). One place,
 * so that a field is declared once.
 *
 * They are not copies of the kernel's: they name only the fields the programs read, and
 * preserve_access_index makes every access a CO-RE relocation that the loader resolves against
 * the running kernel's BTF (/sys/kernel/btf/vmlinux), by field name, looking through the
 * kernel's anonymous unions. Offsets and sizes here do not matter, and a field one program
 * does not read costs it no relocation (a few bytes of BTF: a read makes a relocation). This
 * replaces a generated vmlinux.h (megabytes, tied to one build machine).
 */
#ifndef PORTWATCH_KERNEL_BPF_H
#define PORTWATCH_KERNEL_BPF_H

#include <linux/bpf.h>
#include <linux/types.h>

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

typedef struct {
	__u32 val;
} kuid_t;

struct cred {
	kuid_t uid;
} __attribute__((preserve_access_index));

struct pid {
	unsigned int level;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	struct task_struct *real_parent;
	const struct cred *cred;
	struct pid *thread_pid;
	struct signal_struct *signal;
	char comm[16];
} __attribute__((preserve_access_index));

#endif /* PORTWATCH_KERNEL_BPF_H */
