// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
//
// The client leg without the loopback TCP stack, from the agent to the proxy.
//
// The agent's socket of an intercepted connection joins airlock_socks (by
// sockops, when its connect to the proxy completes); the proxy's accepted
// socket joins airlock_proxy_socks (by the daemon, right after accept, before
// it reads or answers anything). On each send from an agent's socket,
// airlock_redirect looks its peer up by the reversed 4-tuple and hands the
// bytes to the proxy socket's receive queue directly (bpf_msg_redirect_hash,
// BPF_F_INGRESS): no TCP transmit, loopback device, softirq or TCP receive.
// Without a peer the send goes through TCP as before.
//
// One direction only. Bytes redirected into a socket wait in a queue of its
// own that only recvmsg reads: splice() (Go's io.Copy between sockets, many
// forwarders) reads the TCP queue alone and would lose them. The proxy reads
// with read(2), so it may be a target; the agent's programs are not ours to
// vouch for, so nothing is ever redirected to them, and the proxy's socket
// has no sk_msg program (its sends are plain TCP at plain TCP's cost).
//
// A separate object from airlock.c, so that a kernel without sockhash or
// sk_msg still loads interception itself (the daemon falls back to TCP).
// The maps are pinned like the core's, and with airlock_socks the sk_msg
// program attached to it: freeing a map would drop what the agent had
// already handed to a proxy socket.
//
// Why the agent cannot use this to reach anything but its own proxy socket:
// - only sockets connect4/6 redirected to the proxy (they have an
//   airlock_peers entry) and whose peer is a loopback address are joined by
//   the kernel; only the daemon, which alone can write the maps, puts the
//   proxy's sockets in airlock_proxy_socks, and only ones it accepted on
//   loopback;
// - keys are the sockets' real 4-tuples, unique among open TCP sockets of a
//   network namespace; entries are inserted with BPF_NOEXIST and the kernel
//   removes a socket's entry when it closes, so a key names one live socket,
//   and the reversed tuple of an agent's socket names the other end of the
//   same connection or nothing;
// - so a send is redirected to its own connection's proxy socket or goes by
//   TCP. When the daemon dies its sockets close and leave the map: the
//   agent's sends go to TCP, meet a closed socket and fail; new connects are
//   refused as before (nothing listens).
// Ordering: the kernel (tcp_bpf) reads a socket's redirected queue before
// its TCP receive queue. The daemon joins its socket before it answers, so
// everything a client sends in reply to the proxy arrives redirected; only
// what it sent before the join went by TCP. A client that sends more before
// the proxy's first answer (pipelining past the startup or TLS request, which
// no PostgreSQL client does) may have its own later bytes read first: that
// scrambles its own stream, which the proxy parses like any other input from
// it; no other connection's bytes are involved.

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

// One end of a connection as that end sees it: addresses as 16 bytes
// (IPv4 v4-mapped), ports in host order. Built identically in Go.
struct sock_key {
	__u8 local[16];
	__u8 remote[16];
	__u32 local_port;
	__u32 remote_port;
};

// Same definition as in airlock.c; the loader hands over the core's map.
struct peer {
	__u8 addr[16];
	__u16 port;
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct peer);
} airlock_peers SEC(".maps");

// The agents' sockets; airlock_redirect is attached here.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_socks SEC(".maps");

// The proxy's ends: redirect targets only, no program.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_proxy_socks SEC(".maps");

enum sockmap_stat {
	SOCKMAP_JOINED, // client sockets joined by sockops
	SOCKMAP_JOIN_FAILED, // map full or the socket could not be joined
	SOCKMAP_REDIRECTED, // agents' sends handed to the proxy socket directly
	SOCKMAP_PASSED, // agents' sends with no proxy socket in the map, through TCP
	SOCKMAP_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SOCKMAP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} airlock_sockmap_stats SEC(".maps");

static __always_inline void sockmap_stat(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&airlock_sockmap_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline void v4mapped(__u8 *dst, __u32 ip4)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(&dst[12], &ip4, 4);
}

static __always_inline int loopback(const __u8 *a)
{
	int i;
	// ::ffff:127.x.x.x
	if (a[10] == 0xff && a[11] == 0xff && a[12] == 127) {
		for (i = 0; i < 10; i++)
			if (a[i])
				return 0;
		return 1;
	}
	// ::1
	for (i = 0; i < 15; i++)
		if (a[i])
			return 0;
	return a[15] == 1;
}

// Copies an IPv6 address out of a context: volatile 4-byte loads, since clang
// would merge them into 8-byte loads, which the verifier rejects there.
#define load_ip6(dst, src)                                  \
	do {                                                \
		__u32 ip6_[4];                              \
		ip6_[0] = *(volatile __u32 *)&(src)[0];     \
		ip6_[1] = *(volatile __u32 *)&(src)[1];     \
		ip6_[2] = *(volatile __u32 *)&(src)[2];     \
		ip6_[3] = *(volatile __u32 *)&(src)[3];     \
		__builtin_memcpy((dst), ip6_, 16);          \
	} while (0)

// remote_port is in network order; little-endian kernels shift the 16-bit
// value into the upper half (sockops always, sk_msg on newer kernels), so
// take whichever half holds it.
static __always_inline __u32 remote_port(__u32 p)
{
	if (p > 0xffff)
		return bpf_ntohl(p);
	return bpf_ntohs((__u16)p);
}

SEC("sockops")
int airlock_sockops_join(struct bpf_sock_ops *ctx)
{
	struct sock_key k = {};
	__u64 cookie;

	if (ctx->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	cookie = bpf_get_socket_cookie(ctx);
	if (!bpf_map_lookup_elem(&airlock_peers, &cookie))
		return 1; // not redirected to the proxy
	if (ctx->family == AF_INET) {
		v4mapped(k.local, ctx->local_ip4);
		v4mapped(k.remote, ctx->remote_ip4);
	} else if (ctx->family == AF_INET6) {
		load_ip6(k.local, ctx->local_ip6);
		load_ip6(k.remote, ctx->remote_ip6);
	} else {
		return 1;
	}
	// Only the loopback proxy: a connection sent to a network namespace
	// address crosses namespaces, where 4-tuples are not unique.
	if (!loopback(k.remote))
		return 1;
	k.local_port = ctx->local_port; // host order
	k.remote_port = remote_port(ctx->remote_port);
	if (bpf_sock_hash_update(ctx, &airlock_socks, &k, BPF_NOEXIST) == 0)
		sockmap_stat(SOCKMAP_JOINED);
	else
		sockmap_stat(SOCKMAP_JOIN_FAILED);
	return 1;
}

SEC("sk_msg")
int airlock_redirect(struct sk_msg_md *msg)
{
	struct sock_key peer = {};

	if (msg->family == AF_INET) {
		v4mapped(peer.local, msg->remote_ip4);
		v4mapped(peer.remote, msg->local_ip4);
	} else if (msg->family == AF_INET6) {
		load_ip6(peer.local, msg->remote_ip6);
		load_ip6(peer.remote, msg->local_ip6);
	} else {
		return SK_PASS;
	}
	peer.local_port = remote_port(msg->remote_port);
	peer.remote_port = msg->local_port;
	// On a miss the helper sets no redirect, and SK_PASS sends through TCP.
	if (bpf_msg_redirect_hash(msg, &airlock_proxy_socks, &peer, BPF_F_INGRESS) == SK_PASS)
		sockmap_stat(SOCKMAP_REDIRECTED);
	else
		sockmap_stat(SOCKMAP_PASSED);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
