// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
//
// Airlock interception programs.
//
// connect4/connect6 rewrite the destination of selected TCP connects to the
// local proxy and remember who connected and where to; sockops re-keys that
// record by the client's address as the proxy will see it on accept;
// getpeername4/6 hide the rewrite from the application; three BTF tracepoints
// keep the set of tracked process trees current, and the exec tracepoint
// starts tracking a process that execs a configured executable itself, so that
// it is selected before it runs a single instruction, daemon running or not.
//
// Selection fails closed: a tracked-process map that overflowed makes target
// connects of untracked processes fail in tree mode until user space has
// rebuilt the set; a selected process in another network namespace is sent
// to the configured host address of the proxy or refused, never let through.
//
// Map layouts are part of the on-disk (bpffs) contract: a daemon upgrade takes
// over pinned maps, so any change to a struct below or to a map definition must
// bump AIRLOCK_LAYOUT_VERSION and the Go side's pin folder version with it.
// Adding a pinned map is compatible (a takeover creates it when it is missing,
// and an older daemon ignores it): airlock_match was added that way in v1.

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define AIRLOCK_LAYOUT_VERSION 2

// Not in the UAPI headers, and pulling in libc headers for BPF is fragile.
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_CLOSE 7

#define MODE_ALL 0
#define MODE_TREE 1
#define MODE_CGROUP 2
#define MODE_USER 3

// How many cgroup ancestor levels cgroup mode inspects (level 0 is the root).
#define MAX_CGROUP_LEVELS 16

// Minimal CO-RE view of the kernel's task_struct: only the fields used,
// relocated against the running kernel's BTF at load time, so no vmlinux.h.
// signal_struct.live counts the group's threads that have not yet exited:
// do_exit decrements it before trace_sched_process_exit, so the thread that
// sees 0 there is the last one of its group.
typedef struct {
	int counter;
} airlock_atomic_t;

struct signal_struct {
	airlock_atomic_t live;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	struct task_struct *real_parent;
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

// Kernel structures the exec tracepoint reads, fields relocated by name.
// linux_binprm's filename, interp and file exist in every kernel we support.
struct qstr {
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct path {
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
} __attribute__((preserve_access_index));

struct linux_binprm {
	struct file *file; // what is being run: for a script, its interpreter
	const char *filename; // the path given to execve (the script, for a script)
	const char *interp; // the path of what is being run, after #! lookups
} __attribute__((preserve_access_index));

// Key of airlock_match: a configured executable, a base name ("cursor") or
// a path ("/opt/cursor/cursor.AppImage"), NUL-padded to the full size. The Go
// side accepts names of at most EXEC_NAME_SIZE-2 bytes, so that a name read
// from the kernel that filled the buffer (and may have been cut) can never
// equal an entry.
#define EXEC_NAME_SIZE 256

struct exec_name {
	char name[EXEC_NAME_SIZE];
};

struct config {
	__u32 proxy_port; // host order; 0 = not configured, never redirect
	__u32 mode;
	__u32 mark; // 0 = no mark check
	__be32 netns_addr4; // proxy address for other namespaces; 0 = refuse their IPv4 connects
	__u64 netns_cookie; // the daemon's network namespace; 0 = unknown, every socket counts as local
	__u8 netns_addr6[16]; // likewise for IPv6; all zero = refuse
	__u32 layout_version;
	__u32 _pad;
};

// airlock_state slots. The kernel counts failed inserts into airlock_tracked
// in STATE_TRACK_LOST; user space, after rebuilding the tracked set from
// /proc, writes the count it had read before the rebuild into
// STATE_TRACK_REBUILT. While they differ, some process may be missing from
// the set. Two slots, so that neither side ever overwrites the other's.
#define STATE_TRACK_LOST 0
#define STATE_TRACK_REBUILT 1
#define STATE_MAX 2

// LPM key: the port is the first 16 bits of the matched data, so a prefix of
// length 16+N matches that exact port and the first N address bits.
// IPv4 is stored v4-mapped (::ffff:a.b.c.d), so an IPv4 /24 is 16+96+24.
struct target_key {
	__u32 prefixlen;
	__be16 port; // network order; 0 = any port (looked up separately)
	__u8 addr[16];
	__u8 _pad[2]; // never covered by prefixlen, always zero
};

struct record {
	__u8 addr[16]; // original destination, v4-mapped for IPv4
	__u16 port; // host order
	__u16 _pad;
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	__u32 gid;
	__u32 _pad2;
	__u64 cgroup_id;
	__u64 ktime_ns; // bpf_ktime_get_ns (CLOCK_MONOTONIC) at connect
	char comm[16];
};

// The proxy's view of an accepted connection's remote side.
struct client_key {
	__u8 addr[16]; // v4-mapped for IPv4
	__u16 port; // host order
	__u16 _pad;
};

struct peer {
	__u8 addr[16];
	__u16 port; // host order
	__u16 _pad;
};

struct exec_event {
	__u32 tgid;
	__u32 ppid; // parent's tgid
	char comm[16];
	__u32 tracked; // 1: the kernel matched and tracked it (user space contains it); 0: user space decides
	__u32 _pad;
};

// The ring buffer carries no type; this gives exec_event BTF for bpf2go.
const struct exec_event *unused_exec_event __attribute__((unused));

enum stat_idx {
	STAT_REDIRECTED,
	STAT_SKIP_LOOPBACK,
	STAT_SKIP_MARK,
	STAT_SKIP_SELECTION,
	STAT_RECORD_MOVED,
	STAT_RECORD_MISSING,
	STAT_EXEC_DROPPED,
	STAT_TRACKED_FORK,
	STAT_REDIRECTED_NETNS, // a selected process in another network namespace, sent to the netns address
	STAT_REFUSED_NETNS, // likewise, but no address is configured for its family: refused
	STAT_REFUSED_OVERFLOW, // untracked process while the tracked map had overflowed: refused
	STAT_TRACK_FAILED, // an insert into airlock_tracked failed (map full)
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct target_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); // tgid
	__type(value, __u32); // why it is tracked: 1 user space, 2 fork, 3 exec match
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_tracked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); // cgroup id
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_cgroups SEC(".maps");

// User mode: uids whose every process is intercepted, wherever it started.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); // uid
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_users SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STATE_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_state SEC(".maps");

// Records between connect and the handshake completing, by socket cookie.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct record);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_pending SEC(".maps");

// Records waiting for the proxy to accept, by the client's address.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct client_key);
	__type(value, struct record);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_records SEC(".maps");

// Original peer of each redirected socket for getpeername, by socket cookie;
// removed when the socket closes (STATE_CB), LRU as a backstop.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_peers SEC(".maps");

// Executables whose exec makes the kernel track the process (tree mode).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct exec_name);
	__type(value, __u32); // reserved, 1
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_match SEC(".maps");

// Scratch space for the exec tracepoint: two names do not fit on the BPF
// stack next to everything else. Per CPU, not pinned (no state to keep).
struct exec_scratch {
	struct exec_name path;
	struct exec_name base;
	// Offset of the base name in path. Kept in map memory (volatile), not a register:
	// the verifier does not track it there, so the scan below verifies in
	// one pass instead of once per (position, last slash) pair.
	__u32 last;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_scratch);
} airlock_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&airlock_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline struct config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&airlock_config, &zero);
}

static __always_inline int is_target(const __u8 addr[16], __u16 port_be)
{
	struct target_key k = {};

	__builtin_memcpy(k.addr, addr, 16);
	k.prefixlen = 16 + 128;
	k.port = port_be;
	if (bpf_map_lookup_elem(&airlock_targets, &k))
		return 1;
	k.port = 0;
	return bpf_map_lookup_elem(&airlock_targets, &k) != NULL;
}

static __always_inline int cgroup_selected(void)
{
	__u64 id = bpf_get_current_cgroup_id();

	if (bpf_map_lookup_elem(&airlock_cgroups, &id))
		return 1;
#pragma unroll
	for (int level = 1; level < MAX_CGROUP_LEVELS; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (id == 0)
			break;
		if (bpf_map_lookup_elem(&airlock_cgroups, &id))
			return 1;
	}
	return 0;
}

// A tracked process could not be recorded: from now on tree mode cannot tell
// who belongs to a tree, so it refuses instead of guessing (see selection).
static __always_inline void track_failed(void)
{
	__u32 k = STATE_TRACK_LOST;
	__u64 *lost = bpf_map_lookup_elem(&airlock_state, &k);

	stat_inc(STAT_TRACK_FAILED);
	if (lost)
		__sync_fetch_and_add(lost, 1);
}

static __always_inline int track_incomplete(void)
{
	__u32 k1 = STATE_TRACK_LOST, k2 = STATE_TRACK_REBUILT;
	__u64 *lost = bpf_map_lookup_elem(&airlock_state, &k1);
	__u64 *rebuilt = bpf_map_lookup_elem(&airlock_state, &k2);

	return lost && rebuilt && *lost != *rebuilt;
}

static __always_inline int track(__u32 tgid, __u32 reason)
{
	if (bpf_map_update_elem(&airlock_tracked, &tgid, &reason, BPF_ANY) != 0) {
		track_failed();
		return -1;
	}
	return 0;
}

#define SEL_NO 0
#define SEL_YES 1
#define SEL_REFUSE 2

// Whether the calling process is one Airlock intercepts.
static __always_inline int selection(struct config *cfg)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 uid = (__u32)bpf_get_current_uid_gid();

	// Cgroups Airlock selected (`airlock run`, configured ones) count in
	// every mode: `airlock run` must work whatever the configuration.
	if (cgroup_selected())
		return SEL_YES;
	switch (cfg->mode) {
	case MODE_ALL:
		return SEL_YES;
	case MODE_TREE:
		if (bpf_map_lookup_elem(&airlock_tracked, &tgid))
			return SEL_YES;
		// A fork or exec that should have been tracked was lost: this
		// process may be one of them, so it is refused until user space
		// has rebuilt the set and cleared the flag.
		if (track_incomplete())
			return SEL_REFUSE;
		break;
	case MODE_USER:
		if (bpf_map_lookup_elem(&airlock_users, &uid))
			return SEL_YES;
		break;
	}
	return SEL_NO;
}

#define VERDICT_SKIP 0
#define VERDICT_LOCAL 1 // redirect to the proxy on loopback
#define VERDICT_NETNS 2 // redirect to the proxy's address for other namespaces
#define VERDICT_REFUSE 3

// What to do with a TCP connect to a target, apart from the destination.
static __always_inline int verdict(struct bpf_sock_addr *ctx, struct config *cfg)
{
	int local = !cfg->netns_cookie || bpf_get_netns_cookie(ctx) == cfg->netns_cookie;
	int sel;

	// The daemon's own sockets carry the mark. It counts only in the
	// daemon's network namespace: setting it needs CAP_NET_ADMIN there,
	// while anyone may own a namespace of their own where they have it.
	if (local && cfg->mark) {
		struct bpf_sock *sk = ctx->sk;
		if (sk && sk->mark == cfg->mark) {
			stat_inc(STAT_SKIP_MARK);
			return VERDICT_SKIP;
		}
	}
	sel = selection(cfg);
	if (sel == SEL_NO) {
		stat_inc(STAT_SKIP_SELECTION);
		return VERDICT_SKIP;
	}
	if (sel == SEL_REFUSE) {
		stat_inc(STAT_REFUSED_OVERFLOW);
		return VERDICT_REFUSE;
	}
	return local ? VERDICT_LOCAL : VERDICT_NETNS;
}

static __always_inline void remember(struct bpf_sock_addr *ctx, const __u8 addr[16], __u16 port_be)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	struct record r = {};
	struct peer p = {};

	__builtin_memcpy(r.addr, addr, 16);
	r.port = bpf_ntohs(port_be);
	r.pid = (__u32)pid_tgid;
	r.tgid = pid_tgid >> 32;
	r.uid = (__u32)uid_gid;
	r.gid = uid_gid >> 32;
	r.cgroup_id = bpf_get_current_cgroup_id();
	r.ktime_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(r.comm, sizeof(r.comm));
	bpf_map_update_elem(&airlock_pending, &cookie, &r, BPF_ANY);

	__builtin_memcpy(p.addr, addr, 16);
	p.port = r.port;
	bpf_map_update_elem(&airlock_peers, &cookie, &p, BPF_ANY);
	stat_inc(STAT_REDIRECTED);
}

SEC("cgroup/connect4")
int airlock_connect4(struct bpf_sock_addr *ctx)
{
	struct config *cfg;
	__u8 addr[16] = {};
	__u32 ip4 = ctx->user_ip4;
	__u16 port_be = (__u16)ctx->user_port;

	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	cfg = get_config();
	if (!cfg || !cfg->proxy_port)
		return 1;
	if ((bpf_ntohl(ip4) >> 24) == 127) {
		stat_inc(STAT_SKIP_LOOPBACK);
		return 1;
	}
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(&addr[12], &ip4, 4);
	if (!is_target(addr, port_be))
		return 1;
	switch (verdict(ctx, cfg)) {
	case VERDICT_SKIP:
		return 1;
	case VERDICT_REFUSE:
		return 0; // connect() fails with EPERM
	case VERDICT_NETNS:
		// 127.0.0.1 in another namespace is not the proxy's loopback.
		if (!cfg->netns_addr4) {
			stat_inc(STAT_REFUSED_NETNS);
			return 0;
		}
		remember(ctx, addr, port_be);
		stat_inc(STAT_REDIRECTED_NETNS);
		ctx->user_ip4 = cfg->netns_addr4;
		break;
	default:
		remember(ctx, addr, port_be);
		ctx->user_ip4 = bpf_htonl(0x7f000001);
	}
	// A full 32-bit store: narrower stores to user_port are rejected by some verifiers.
	ctx->user_port = (__u32)bpf_htons((__u16)cfg->proxy_port);
	return 1;
}

SEC("cgroup/connect6")
int airlock_connect6(struct bpf_sock_addr *ctx)
{
	struct config *cfg;
	__u32 ip6[4];
	__u16 port_be = (__u16)ctx->user_port;
	int mapped, v;

	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	cfg = get_config();
	if (!cfg || !cfg->proxy_port)
		return 1;
	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];

	mapped = ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0x0000ffff);
	if (mapped && (bpf_ntohl(ip6[3]) >> 24) == 127) {
		stat_inc(STAT_SKIP_LOOPBACK);
		return 1;
	}
	if (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0 && ip6[3] == bpf_htonl(1)) {
		stat_inc(STAT_SKIP_LOOPBACK);
		return 1;
	}
	if (!is_target((__u8 *)ip6, port_be))
		return 1;
	v = verdict(ctx, cfg);
	if (v == VERDICT_SKIP)
		return 1;
	if (v == VERDICT_REFUSE)
		return 0;
	if (v == VERDICT_NETNS) {
		__u32 a6[4];

		__builtin_memcpy(a6, cfg->netns_addr6, 16);
		if (mapped ? !cfg->netns_addr4 : !(a6[0] | a6[1] | a6[2] | a6[3])) {
			stat_inc(STAT_REFUSED_NETNS);
			return 0;
		}
		remember(ctx, (__u8 *)ip6, port_be);
		stat_inc(STAT_REDIRECTED_NETNS);
		if (mapped) {
			ctx->user_ip6[0] = 0;
			ctx->user_ip6[1] = 0;
			ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->user_ip6[3] = cfg->netns_addr4;
		} else {
			ctx->user_ip6[0] = a6[0];
			ctx->user_ip6[1] = a6[1];
			ctx->user_ip6[2] = a6[2];
			ctx->user_ip6[3] = a6[3];
		}
		ctx->user_port = (__u32)bpf_htons((__u16)cfg->proxy_port);
		return 1;
	}

	remember(ctx, (__u8 *)ip6, port_be);
	if (mapped) {
		// The socket may be dual-stack talking IPv4: keep it on the IPv4 path.
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = (__u32)bpf_htons((__u16)cfg->proxy_port);
	return 1;
}

SEC("cgroup/getpeername4")
int airlock_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct peer *p = bpf_map_lookup_elem(&airlock_peers, &cookie);
	__u32 ip4;

	if (!p)
		return 1;
	__builtin_memcpy(&ip4, &p->addr[12], 4);
	ctx->user_ip4 = ip4;
	ctx->user_port = (__u32)bpf_htons(p->port);
	return 1;
}

SEC("cgroup/getpeername6")
int airlock_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct peer *p = bpf_map_lookup_elem(&airlock_peers, &cookie);
	__u32 ip6[4];

	if (!p)
		return 1;
	__builtin_memcpy(ip6, p->addr, 16);
	ctx->user_ip6[0] = ip6[0];
	ctx->user_ip6[1] = ip6[1];
	ctx->user_ip6[2] = ip6[2];
	ctx->user_ip6[3] = ip6[3];
	ctx->user_port = (__u32)bpf_htons(p->port);
	return 1;
}

SEC("sockops")
int airlock_sockops(struct bpf_sock_ops *ctx)
{
	__u64 cookie;
	struct record *r;
	struct client_key k = {};

	switch (ctx->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		cookie = bpf_get_socket_cookie(ctx);
		// Only redirected sockets pay for state callbacks: they let us drop
		// the getpeername entry when the socket closes.
		if (bpf_map_lookup_elem(&airlock_peers, &cookie))
			bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;

	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		cookie = bpf_get_socket_cookie(ctx);
		r = bpf_map_lookup_elem(&airlock_pending, &cookie);
		if (!r)
			return 1;
		if (ctx->family == AF_INET) {
			__u32 ip4 = ctx->local_ip4;
			k.addr[10] = 0xff;
			k.addr[11] = 0xff;
			__builtin_memcpy(&k.addr[12], &ip4, 4);
		} else if (ctx->family == AF_INET6) {
			// volatile: clang would merge these into 8-byte loads, which the
			// verifier rejects for bpf_sock_ops.
			__u32 ip6[4];
			ip6[0] = *(volatile __u32 *)&ctx->local_ip6[0];
			ip6[1] = *(volatile __u32 *)&ctx->local_ip6[1];
			ip6[2] = *(volatile __u32 *)&ctx->local_ip6[2];
			ip6[3] = *(volatile __u32 *)&ctx->local_ip6[3];
			__builtin_memcpy(k.addr, ip6, 16);
		} else {
			return 1;
		}
		k.port = (__u16)ctx->local_port; // already host order
		if (bpf_map_update_elem(&airlock_records, &k, r, BPF_ANY) == 0)
			stat_inc(STAT_RECORD_MOVED);
		else
			stat_inc(STAT_RECORD_MISSING);
		bpf_map_delete_elem(&airlock_pending, &cookie);
		return 1;

	case BPF_SOCK_OPS_STATE_CB:
		if (ctx->args[1] != TCP_CLOSE)
			return 1;
		cookie = bpf_get_socket_cookie(ctx);
		bpf_map_delete_elem(&airlock_peers, &cookie);
		// A connect that never completed leaves its record here.
		bpf_map_delete_elem(&airlock_pending, &cookie);
		return 1;
	}
	return 1;
}

static __always_inline int tracking_enabled(void)
{
	struct config *cfg = get_config();
	return cfg && cfg->mode == MODE_TREE;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(airlock_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = parent->tgid;
	__u32 ctgid = child->tgid;
	__u32 reason = 2;

	// New threads share the tgid; only new processes need an entry.
	if (ptgid == ctgid)
		return 0;
	if (!bpf_map_lookup_elem(&airlock_tracked, &ptgid))
		return 0;
	if (track(ctgid, reason) == 0)
		stat_inc(STAT_TRACKED_FORK);
	return 0;
}

// Reads the kernel string at src into n, NUL-padded, and reports whether it is
// a configured executable. A string that fills the buffer may have been cut:
// it is longer than any entry, so it cannot match and is not looked up.
static __always_inline int name_matches(struct exec_name *n, const void *src)
{
	long len;

	if (!src)
		return 0;
	__builtin_memset(n->name, 0, sizeof(n->name));
	len = bpf_probe_read_kernel_str(n->name, sizeof(n->name), src);
	if (len <= 1 || len >= EXEC_NAME_SIZE)
		return 0;
	return bpf_map_lookup_elem(&airlock_match, n) != NULL;
}

// Whether a path, or its last component, is a configured executable.
static __always_inline int path_matches(struct exec_scratch *s, const char *path)
{
	__u32 last;

	if (!path)
		return 0;
	if (name_matches(&s->path, path))
		return 1;
	// s->path holds the path (cut if too long: then its base name is
	// unknown here, and the dentry name below still covers the common case).
	*(volatile __u32 *)&s->last = 0;
	for (__u32 i = 0; i < EXEC_NAME_SIZE; i++) {
		char c = s->path.name[i];
		if (c == 0)
			break;
		if (c == '/')
			*(volatile __u32 *)&s->last = i + 1;
	}
	last = *(volatile __u32 *)&s->last;
	if (last == 0 || last >= EXEC_NAME_SIZE)
		return 0; // no slash: the whole string was the base name, already looked up
	return name_matches(&s->base, path + last);
}

// Whether the exec described by bprm runs a configured executable. Looked up:
// the path given to execve and its base name (what the user typed, symlinks
// unresolved; for a script, the script); the name of the file actually run
// (symlinks resolved: the base name of /proc/PID/exe); the interpreter's path.
// A configured full path reached through a symlinked directory is only seen
// by user space (/proc/PID/exe), while the daemon runs.
static __always_inline int exec_matches(struct linux_binprm *bprm)
{
	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&airlock_scratch, &zero);
	const char *filename, *interp;
	const unsigned char *dname;

	if (!s || !bprm)
		return 0;
	filename = BPF_CORE_READ(bprm, filename);
	if (path_matches(s, filename))
		return 1;
	dname = BPF_CORE_READ(bprm, file, f_path.dentry, d_name.name);
	if (name_matches(&s->base, dname))
		return 1;
	interp = BPF_CORE_READ(bprm, interp);
	if (interp && interp != filename && name_matches(&s->path, interp))
		return 1;
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(airlock_exec, struct task_struct *p, int old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = p->tgid;
	__u32 reason = 3;
	struct exec_event *e;
	int matched;

	if (!tracking_enabled())
		return 0;
	// Tracked processes stay tracked across exec.
	if (bpf_map_lookup_elem(&airlock_tracked, &tgid))
		return 0;
	// A configured executable is tracked here, before it runs: its first
	// connect is intercepted, and this works while no daemon runs. User
	// space is told, to move the new tree into a cgroup of its own; the
	// tracked entry bridges the moment until then.
	matched = exec_matches(bprm);
	if (matched && track(tgid, reason) != 0)
		return 0;
	// Others get a look from user space, which matches /proc/PID/exe (a full
	// path reached through a symlink, say) against the configured list.
	e = bpf_ringbuf_reserve(&airlock_execs, sizeof(*e), 0);
	if (!e) {
		// A lost notice of a tracked exec only delays containment: the
		// daemon's periodic scan of the tracked map catches it.
		stat_inc(STAT_EXEC_DROPPED);
		return 0;
	}
	e->tracked = matched;
	e->_pad = 0;
	e->tgid = tgid;
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(airlock_exit, struct task_struct *p)
{
	__u32 tgid = p->tgid;

	// Only when the whole thread group is gone: the leader may exit
	// (SYS_exit) while its threads run on, and a thread that execs makes
	// the kernel kill the leader first (de_thread) and then takes over its
	// tgid. In both cases the group lives on and must stay tracked.
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	bpf_map_delete_elem(&airlock_tracked, &tgid);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
