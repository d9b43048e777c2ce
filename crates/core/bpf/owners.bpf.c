// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// portwatch owner lookup: one pass over every open file of every process on the host
// (`iter/task_file`), writing one record per socket fd: which process holds which socket
// inode. It is the same map the /proc/*/fd walk builds (crates/core/src/owners/), read in one
// pass inside the kernel instead of a readlink per fd. It only reads.
//
// Kept apart from portwatch.bpf.c (the event programs) so that loading it costs only what it
// needs: one program, no maps, a few CO-RE field relocations. Built by `make bpf` into
// owners.bpf.o, which is committed and checked by `make bpf-check`. The record is decoded by
// crates/core/src/owners/bpf/mod.rs: keep both in step.

#include "kernel.bpf.h"

#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

// The iterator's context is the argument list of the kernel's bpf_iter_task_file(meta, task,
// fd, file): one 8-byte slot each, fixed by the iterator's prototype, so no relocation.
struct seq_file;
struct bpf_iter_meta {
	struct seq_file *seq;
};

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
};

/*
 * One record per socket fd, 48 bytes, native byte order. What /proc/PID/status would say of
 * the process comes with it, read at the same instant as its fd table, so no later read of
 * /proc can mix it up with a process that took the pid since:
 *
 *   off size field
 *     0    4 tgid   the holding process (thread group id, in the initial pid namespace)
 *     4    4 fd     the fd number in that process
 *     8    8 ino    inode of the socket (what /proc/PID/fd/N links to); 0 for a marker
 *    16    4 ppid   its parent's tgid (status PPid)
 *    20    4 uid    its real uid (status Uid, first field)
 *    24    4 level  depth of its pid namespace: 0 in the initial one (else status NSpid differs)
 *    28    4 described  1 when ppid, uid, level and comm are filled in: for fds 0-2 only
 *    32   16 comm   its command name, NUL-padded (status Name, unescaped)
 *
 * A process none of whose fds 0-2 is open gets no description from the pass; the reader
 * reads /proc/PID/status for it, as the walk does.
 *
 * Markers: a record with ino 0 for each of fds 0, 1 and 2 that is not a socket, so that the
 * reader knows which processes were walked. A kernel can hide a process's files even from
 * this iterator (a protected init, say); the reader then finds it in /proc with fds but no
 * record, and an owner that may be there is reported unreadable, not absent, as the /proc
 * walk reports a process whose fd links are refused.
 */
#define PW_MARKER_FDS 3

struct pw_owner {
	__u32 tgid;
	__u32 fd;
	__u64 ino;
	__u32 ppid;
	__u32 uid;
	__u32 level;
	__u32 described;
	char comm[16];
};

_Static_assert(sizeof(struct pw_owner) == 48, "pw_owner layout is shared with owners/bpf/mod.rs");

// Called for every fd of every task (threads sharing their process's fd table are skipped by
// the kernel, except under a leader that exited: then each is walked), then once more with
// task NULL at the end. Only thread group leaders are reported: what /proc/PID/fd shows, and
// so what the /proc walk finds.
SEC("iter/task_file")
int pw_owners(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct pw_owner rec = {};

	if (!task || !file || task->pid != task->tgid)
		return 0;
	if (bpf_sock_from_file(file))
		rec.ino = file->f_inode->i_ino;
	else if (ctx->fd < PW_MARKER_FDS)
		rec.ino = 0;
	else
		return 0;
	rec.tgid = task->tgid;
	rec.fd = ctx->fd;
	// The process's fields once or a few times per process, not once per socket: a
	// server's fds 0-2 are its first files, and reading them costs pointer chases.
	if (ctx->fd < PW_MARKER_FDS) {
		rec.ppid = task->real_parent->tgid;
		rec.uid = task->cred->uid.val;
		rec.level = task->thread_pid->level;
		rec.described = 1;
		bpf_probe_read_kernel_str(rec.comm, sizeof(rec.comm), task->comm);
	}
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}
