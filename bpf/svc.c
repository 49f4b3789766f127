//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * svcproxy data path: socket-level load balancing (cgroup v2 sock_addr hooks), a per-packet
 * path for traffic entering the node from outside (tc, TCX), a socket iterator that destroys
 * connected UDP sockets whose backend went away, and a test entry point for the selection
 * logic. Maps: include/svc_maps.h. Selection: include/svc_lb.h.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "svc_kern.h"
#include "svc_maps.h"
#include "svc_lb.h"

#define SVC_AF_INET 2
#define SVC_ECONNREFUSED 111

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Load-time settings (.rodata), written by the loader (proxy/ebpf, through the collection
 * spec's Variables) before the programs are loaded; the values here are the defaults.
 *
 * Constants rather than a config map: the verifier and the JIT see them as immediates (no
 * map lookup per packet), and they belong to the program that uses them, so a restarted
 * daemon whose settings changed swaps programs with the new values into the pinned links
 * atomically (BPF_LINK_UPDATE); a pinned config map would outlive the programs and could be
 * seen half-written, or from an older daemon, by a new program.
 *
 * snat_port_min..snat_port_max (host order, inclusive): the source ports SNATed flows use.
 * The loader picks ports the node's own sockets never take as ephemeral ports (above
 * net.ipv4.ip_local_port_range by default), so the reply to a local connection can never
 * match the reverse entry of a masqueraded flow.
 *
 * ct_timeout_*_ns: how long a conntrack entry stays valid without traffic in either
 * direction of its flow; past that it is treated as absent (and deleted) by every lookup.
 */
volatile const __u16 snat_port_min = 61000;
volatile const __u16 snat_port_max = 65535;
/* TCP while open: Cilium's default for established entries, above Linux's default keepalive
 * (7200 s, then 9 probes 75 s apart), so idle connections with keepalive survive. */
volatile const __u64 ct_timeout_tcp_ns = 8000ULL * 1000000000ULL;
/* TCP once a FIN or RST was seen in either direction (netfilter's CLOSE, Cilium's FIN). */
volatile const __u64 ct_timeout_tcp_closing_ns = 10ULL * 1000000000ULL;
/* UDP: netfilter's timeout for UDP streams (Cilium uses 60 s). */
volatile const __u64 ct_timeout_udp_ns = 120ULL * 1000000000ULL;

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* ---------------------------------------------------------------- socket LB (local clients) */

static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx)
{
	struct lb_req r = {};
	__u32 proto = ctx->protocol;

	if (proto != SVC_PROTO_TCP && proto != SVC_PROTO_UDP)
		return 1;
	r.addr = ctx->user_ip4;
	r.port = (__u16)ctx->user_port;
	r.proto = (__u8)proto;
	r.scope = SVC_SCOPE_INT;
	r.client = bpf_get_netns_cookie(ctx);
	lb_select(&r);
	if (r.verdict == LB_NONE)
		return 1;
	if (r.verdict != LB_OK) {
		/* Like iptables' REJECT: fail at once instead of timing out. */
		bpf_set_retval(-SVC_ECONNREFUSED);
		return 0;
	}

	struct sock_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = r.be_addr,
		.port = r.be_port,
	};
	struct sock_revnat_value rv = {
		.addr = r.addr,
		.port = r.port,
		.rev_nat_id = r.rev_nat_id,
	};
	bpf_map_update_elem(&svc_sock_revnat, &rk, &rv, BPF_ANY);
	ctx->user_ip4 = r.be_addr;
	ctx->user_port = (__u32)r.be_port;
	return 1;
}

static __always_inline void sock4_revnat(struct bpf_sock_addr *ctx)
{
	struct sock_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
	};
	struct sock_revnat_value *v = bpf_map_lookup_elem(&svc_sock_revnat, &rk);
	struct revnat_value *fe;
	__u16 id;

	if (!v)
		return;
	id = v->rev_nat_id;
	fe = bpf_map_lookup_elem(&svc_revnat, &id);
	if (!fe || fe->addr != v->addr || fe->port != v->port) {
		/* The frontend is gone or was reused: do not show a stale VIP. */
		bpf_map_delete_elem(&svc_sock_revnat, &rk);
		return;
	}
	ctx->user_ip4 = v->addr;
	ctx->user_port = (__u32)v->port;
}

SEC("cgroup/connect4")
int svc_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}

SEC("cgroup/sendmsg4")
int svc_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}

SEC("cgroup/recvmsg4")
int svc_recvmsg4(struct bpf_sock_addr *ctx)
{
	sock4_revnat(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int svc_getpeername4(struct bpf_sock_addr *ctx)
{
	sock4_revnat(ctx);
	return 1;
}

/* ------------------------------------------------------------ per-packet path (tc, TCX) */

#define ETH_HLEN_ 14
#define IP_CSUM_OFF (ETH_HLEN_ + 10)
#define IP_SRC_OFF (ETH_HLEN_ + 12)
#define IP_DST_OFF (ETH_HLEN_ + 16)

struct pkt {
	__u32 l4_off;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags; /* TCP: the flags byte (FIN, SYN, RST, ACK, ...); 0 for UDP */
};

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u16 ports[2];

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return -1;
	/* Fragments carry no ports; they are not translated (documented in docs/ebpf.md). */
	if (ip->frag_off & bpf_htons(0x3fff))
		return -1;
	if (ip->protocol != SVC_PROTO_TCP && ip->protocol != SVC_PROTO_UDP)
		return -1;
	p->proto = ip->protocol;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->l4_off = ETH_HLEN_ + ip->ihl * 4;
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
		return -1;
	p->sport = ports[0];
	p->dport = ports[1];
	if (p->proto == SVC_PROTO_TCP &&
	    bpf_skb_load_bytes(skb, p->l4_off + 13, &p->tcp_flags, 1) < 0)
		return -1;
	return 0;
}

static __always_inline int rewrite_addr(struct __sk_buff *skb, struct pkt *p, __u32 off,
					__u32 from, __u32 to)
{
	__u32 csum_off = p->l4_off + (p->proto == SVC_PROTO_TCP ? 16 : 6);
	__u64 flags = BPF_F_PSEUDO_HDR | sizeof(to);

	if (from == to)
		return 0;
	if (p->proto == SVC_PROTO_UDP)
		flags |= BPF_F_MARK_MANGLED_0;
	if (bpf_l4_csum_replace(skb, csum_off, from, to, flags) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, sizeof(to)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}

static __always_inline int rewrite_port(struct __sk_buff *skb, struct pkt *p, __u32 off,
					__u16 from, __u16 to)
{
	__u32 csum_off = p->l4_off + (p->proto == SVC_PROTO_TCP ? 16 : 6);
	__u64 flags = sizeof(to);

	if (from == to)
		return 0;
	if (p->proto == SVC_PROTO_UDP)
		flags |= BPF_F_MARK_MANGLED_0;
	if (bpf_l4_csum_replace(skb, csum_off, from, to, flags) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}

/* nat rewrites the packet's tuple to (saddr:sport -> daddr:dport). */
static __always_inline int nat(struct __sk_buff *skb, struct pkt *p, __u32 saddr, __u16 sport,
			       __u32 daddr, __u16 dport)
{
	if (rewrite_addr(skb, p, IP_SRC_OFF, p->saddr, saddr) < 0 ||
	    rewrite_addr(skb, p, IP_DST_OFF, p->daddr, daddr) < 0 ||
	    rewrite_port(skb, p, p->l4_off, p->sport, sport) < 0 ||
	    rewrite_port(skb, p, p->l4_off + 2, p->dport, dport) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* fib_redirect sends a packet whose source is now a node address out of the node directly:
 * the stack would drop it as a martian (a local source arriving from outside). The route is
 * looked up as the forwarding path would (input lookup on the receiving interface), so a
 * backend behind the pod bridge and a client behind the external interface are both found;
 * the neighbour is the route's next hop. */
static __always_inline int fib_redirect(struct __sk_buff *skb, __u32 saddr, __u32 daddr)
{
	struct bpf_fib_lookup fib = {
		.family = SVC_AF_INET,
		.ipv4_src = saddr,
		.ipv4_dst = daddr,
		.ifindex = skb->ifindex,
	};
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);

	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {
			.nh_family = SVC_AF_INET,
			.ipv4_nh = fib.ipv4_dst,
		};
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	/* No forwarding route (or forwarding off on this interface): send it back out where
	 * it came from, resolving the destination as a neighbour there. */
	return bpf_redirect_neigh(skb->ifindex, 0, 0, 0);
}

/* in_cluster reports whether addr is inside clusterCIDR (a pod address of the cluster). */
static __always_inline int in_cluster(__u32 addr)
{
	struct cidr_key k = {
		.prefixlen = 32,
		.addr = addr,
	};

	return bpf_map_lookup_elem(&svc_cluster_cidrs, &k) != 0;
}

/* nat_out rewrites like nat and then, for flows SNATed to the node, redirects. */
static __always_inline int nat_out(struct __sk_buff *skb, struct pkt *p, __u8 snat, __u32 saddr,
				   __u16 sport, __u32 daddr, __u16 dport)
{
	int ret = nat(skb, p, saddr, sport, daddr, dport);

	if (ret != TC_ACT_OK || !snat)
		return ret;
	return fib_redirect(skb, saddr, daddr);
}

#define TCP_FL_FIN 0x01
#define TCP_FL_SYN 0x02
#define TCP_FL_RST 0x04
#define TCP_FL_ACK 0x10
#define TCP_OFF (ETH_HLEN_ + 20)
#define TCP_CSUM_OFF (TCP_OFF + 16)
#define RST_TAIL_MAX 40

/* reject_tcp turns a TCP segment sent to a frontend without backends into the RST its
 * destination would answer with, and sends it back out of the interface it came in on, so the
 * client is refused at once (kube-proxy REJECTs these). Checksums are updated incrementally,
 * which is right both for a full checksum and for one a device still has to complete; what
 * cannot be answered cheaply (IP options, more than RST_TAIL_MAX bytes of TCP options and
 * payload, a RST) is dropped. */
static __always_inline int reject_tcp(struct __sk_buff *skb, struct pkt *p)
{
	struct {
		__u32 seq;
		__u32 ack;
		__u16 flags; /* data offset, flags */
		__u16 window;
		__u16 csum;
		__u16 urg;
	} th, nth;
	__u8 tail_buf[RST_TAIL_MAX] = {};
	__u8 macs[12], swapped[12];
	__u16 tot_be, ttl_be, new_tot = bpf_htons(40), new_ttl;
	__u32 tot, hlen, tail, payload, i;
	__u8 fl;

	if (p->l4_off != TCP_OFF)
		return TC_ACT_SHOT; /* IP options */
	if (bpf_skb_load_bytes(skb, ETH_HLEN_ + 2, &tot_be, 2) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN_ + 8, &ttl_be, 2) < 0 ||
	    bpf_skb_load_bytes(skb, TCP_OFF + 4, &th, sizeof(th)) < 0)
		return TC_ACT_SHOT;
	fl = (__u8)(bpf_ntohs(th.flags) & 0xff);
	hlen = (bpf_ntohs(th.flags) >> 12) * 4;
	tot = bpf_ntohs(tot_be);
	if (fl & TCP_FL_RST || hlen < 20 || tot < 20 + hlen)
		return TC_ACT_SHOT;
	payload = tot - 20 - hlen;
	tail = tot - 40; /* TCP options and payload, removed */
	if (tail > RST_TAIL_MAX)
		return TC_ACT_SHOT;

	nth = th;
	nth.window = 0;
	nth.urg = 0;
	if (fl & TCP_FL_ACK) {
		nth.seq = th.ack;
		nth.ack = 0;
		nth.flags = bpf_htons(0x5000 | TCP_FL_RST);
	} else {
		nth.seq = 0;
		nth.ack = bpf_htonl(bpf_ntohl(th.seq) + payload + !!(fl & TCP_FL_SYN) + !!(fl & TCP_FL_FIN));
		nth.flags = bpf_htons(0x5000 | TCP_FL_RST | TCP_FL_ACK);
	}

	/* TCP checksum: the removed bytes, the changed fields and the pseudo-header length.
	 * Swapping addresses and ports leaves the sum alone. */
	if (tail > 0) {
		if (bpf_skb_load_bytes(skb, TCP_OFF + 20, tail_buf, tail) < 0)
			return TC_ACT_SHOT;
		__s64 diff = bpf_csum_diff((__be32 *)tail_buf, sizeof(tail_buf), 0, 0, 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, TCP_CSUM_OFF, 0, (__u32)diff, 0) < 0)
			return TC_ACT_SHOT;
	}
	if (bpf_l4_csum_replace(skb, TCP_CSUM_OFF, th.seq, nth.seq, 4) < 0 ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, th.ack, nth.ack, 4) < 0 ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, th.flags, nth.flags, 2) < 0 ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, th.window, 0, 2) < 0 ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, th.urg, 0, 2) < 0 ||
	    bpf_l4_csum_replace(skb, TCP_CSUM_OFF, bpf_htons(tot - 20), bpf_htons(20),
				BPF_F_PSEUDO_HDR | 2) < 0)
		return TC_ACT_SHOT;
	/* Read back the checksum the helpers computed, then write the new header over. */
	if (bpf_skb_load_bytes(skb, TCP_CSUM_OFF, &nth.csum, 2) < 0 ||
	    bpf_skb_store_bytes(skb, TCP_OFF + 4, &nth, sizeof(nth), 0) < 0 ||
	    bpf_skb_store_bytes(skb, TCP_OFF, &p->dport, 2, 0) < 0 ||
	    bpf_skb_store_bytes(skb, TCP_OFF + 2, &p->sport, 2, 0) < 0)
		return TC_ACT_SHOT;

	/* IPv4: new length and TTL, addresses swapped. */
	new_ttl = (ttl_be & bpf_htons(0x00ff)) | bpf_htons(64 << 8);
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, tot_be, new_tot, 2) < 0 ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, ttl_be, new_ttl, 2) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN_ + 2, &new_tot, 2, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN_ + 8, &new_ttl, 2, 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_SRC_OFF, &p->daddr, 4, 0) < 0 ||
	    bpf_skb_store_bytes(skb, IP_DST_OFF, &p->saddr, 4, 0) < 0)
		return TC_ACT_SHOT;

	/* Ethernet: back to the sender. */
	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
		return TC_ACT_SHOT;
	for (i = 0; i < 6; i++) {
		swapped[i] = macs[i + 6];
		swapped[i + 6] = macs[i];
	}
	if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0) < 0)
		return TC_ACT_SHOT;
	if (skb->len > ETH_HLEN_ + 40 && bpf_skb_change_tail(skb, ETH_HLEN_ + 40, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* ------------------------------------------------------------------------- conntrack */

/* A flow has two entries in svc_ct: CT_FWD keyed by what enters from the client, CT_REPLY
 * keyed by what the backend sends back. Each holds the other's key in its nat_* fields. Each
 * packet refreshes the entry of its own direction; a flow is over when both entries went
 * without a packet for longer than the timeout (ct_timeout), and lookups then treat it as
 * absent and delete it, so a finished flow neither keeps its backend nor holds its SNAT port
 * (LRU eviction alone would keep them until the map fills up). */

static __always_inline __u64 ct_timeout(const struct ct_value *ct, __u8 proto)
{
	if (proto != SVC_PROTO_TCP)
		return ct_timeout_udp_ns;
	return (ct->flags & CT_F_CLOSING) ? ct_timeout_tcp_closing_ns : ct_timeout_tcp_ns;
}

/* ct_fresh reports whether ct saw a packet within its timeout. Signed: another CPU may have
 * stored a last_ns later than this one's now. */
static __always_inline int ct_fresh(const struct ct_value *ct, __u8 proto, __u64 now)
{
	return (__s64)(now - ct->last_ns) <= (__s64)ct_timeout(ct, proto);
}

/* ct_partner returns the other entry of ct's flow (key k) and sets pk to its key, or NULL
 * when it is missing or now belongs to another flow. */
static __always_inline struct ct_value *ct_partner(const struct ct_value *ct, const struct ct_key *k,
						   struct ct_key *pk)
{
	struct ct_value *o;

	pk->saddr = ct->nat_daddr;
	pk->daddr = ct->nat_saddr;
	pk->sport = ct->nat_dport;
	pk->dport = ct->nat_sport;
	pk->proto = k->proto;
	o = bpf_map_lookup_elem(&svc_ct, pk);
	if (!o || o->kind == ct->kind || o->nat_daddr != k->saddr || o->nat_saddr != k->daddr ||
	    o->nat_dport != k->sport || o->nat_sport != k->dport)
		return NULL;
	return o;
}

/* ct_lookup returns the entry of k when its flow is still live, else NULL; the entries of a
 * flow found over are deleted. The partner is only looked at when k's own entry is stale (a
 * flow whose packets all go one way keeps the other entry alive). */
static __always_inline struct ct_value *ct_lookup(struct ct_key *k, __u64 now)
{
	struct ct_value *ct = bpf_map_lookup_elem(&svc_ct, k);
	struct ct_value *o;
	struct ct_key pk = {};

	if (!ct || ct_fresh(ct, k->proto, now))
		return ct;
	o = ct_partner(ct, k, &pk);
	if (o && ct_fresh(o, k->proto, now))
		return ct;
	if (o)
		bpf_map_delete_elem(&svc_ct, &pk);
	bpf_map_delete_elem(&svc_ct, k);
	return NULL;
}

/* ct_touch records a packet of p's direction in ct (key k). A TCP FIN or RST marks both
 * entries of the flow closing, which shortens their timeout. */
static __always_inline void ct_touch(struct ct_value *ct, const struct ct_key *k, const struct pkt *p,
				     __u64 now)
{
	struct ct_value *o;
	struct ct_key pk = {};

	ct->last_ns = now;
	if (!(p->tcp_flags & (TCP_FL_FIN | TCP_FL_RST)) || (ct->flags & CT_F_CLOSING))
		return;
	ct->flags |= CT_F_CLOSING;
	o = ct_partner(ct, k, &pk);
	if (o)
		o->flags |= CT_F_CLOSING;
}

static __always_inline __u16 snat_random_port(void)
{
	__u32 span = (__u32)snat_port_max - (__u32)snat_port_min + 1;

	return bpf_htons((__u16)(snat_port_min + bpf_get_prandom_u32() % span));
}

#define SNAT_TRIES 16

/* snat_port picks the source port a SNATed flow uses toward backend be: one in
 * snat_port_min..snat_port_max (never a port the node's own sockets pick), free for this
 * (backend, node address) pair. The client's own port is kept when it lies in that range and
 * is free; otherwise random ones are tried. 0 when none was found. */
static __always_inline __u16 snat_port(struct pkt *p, __u32 node, __u32 be_addr, __u16 be_port, __u64 now)
{
	__u16 cport = bpf_ntohs(p->sport);
	struct ct_key rk = {
		.saddr = be_addr,
		.daddr = node,
		.sport = be_port,
		.dport = p->sport,
		.proto = p->proto,
	};
	struct ct_value *o;
	int i;

	if (cport < snat_port_min || cport > snat_port_max)
		rk.dport = snat_random_port();
	for (i = 0; i < SNAT_TRIES; i++) {
		o = ct_lookup(&rk, now);
		/* Free, or held by this very client's flow (it is being re-balanced). */
		if (!o || (o->nat_daddr == p->saddr && o->nat_dport == p->sport))
			return rk.dport;
		rk.dport = snat_random_port();
	}
	return 0;
}

SEC("tc")
int svc_tc_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ct_value *ct;
	struct backend_value *be;
	struct lb_req r = {};
	__u64 now;

	if (parse(skb, &p) < 0)
		return TC_ACT_UNSPEC;
	struct ct_key ck = {
		.saddr = p.saddr,
		.daddr = p.daddr,
		.sport = p.sport,
		.dport = p.dport,
		.proto = p.proto,
	};
	now = bpf_ktime_get_ns();
	ct = ct_lookup(&ck, now);
	if (ct) {
		if (ct->kind == CT_REPLY) {
			/* Replies without SNAT leave through egress; only SNATed ones come back here. */
			if (!ct->snat)
				return TC_ACT_UNSPEC;
			ct_touch(ct, &ck, &p, now);
			return nat_out(skb, &p, 1, ct->nat_saddr, ct->nat_sport, ct->nat_daddr, ct->nat_dport);
		}
		__u32 id = ct->backend_id;
		be = bpf_map_lookup_elem(&svc_backends, &id);
		/* A new connection (SYN without ACK) reusing the tuple of a closing one is a new
		 * flow, as in netfilter: it must not inherit the short closing timeout. */
		int reopened = (ct->flags & CT_F_CLOSING) &&
			       (p.tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) == TCP_FL_SYN;
		if (!reopened && be && be->addr == ct->nat_daddr && be->port == ct->nat_dport) {
			ct_touch(ct, &ck, &p, now);
			return nat_out(skb, &p, ct->snat, ct->nat_saddr, ct->nat_sport, ct->nat_daddr, ct->nat_dport);
		}
		/* The backend went away: choose again (like kube-proxy's stale UDP cleanup). */
		bpf_map_delete_elem(&svc_ct, &ck);
	}

	r.addr = p.daddr;
	r.port = p.dport;
	r.proto = p.proto;
	r.scope = SVC_SCOPE_EXT;
	r.client = p.saddr;
	lb_select(&r);
	if (r.verdict == LB_NONE)
		return TC_ACT_UNSPEC;
	if (r.svc_flags & SVC_F_RANGES) {
		struct src_range_key sk = {
			.prefixlen = 64,
			.rev_nat_id = r.rev_nat_id,
			.addr = p.saddr,
		};
		if (!bpf_map_lookup_elem(&svc_src_ranges, &sk))
			return TC_ACT_SHOT;
	}
	if (r.verdict != LB_OK) {
		/* Like kube-proxy's REJECT: a frontend on a node address is left to the stack,
		 * where nothing listens on it, so the client gets a TCP RST or an ICMP port
		 * unreachable at once. TCP to other frontends (ClusterIPs, addresses not on the
		 * node) is answered with a RST here; their UDP is dropped. Policy Local without a
		 * local endpoint while other nodes have some is dropped (as kube-proxy does). */
		if (r.svc_flags & SVC_F_LOCAL)
			return TC_ACT_SHOT;
		if (r.svc_flags & SVC_F_NODE_ADDR)
			return TC_ACT_UNSPEC;
		if (p.proto == SVC_PROTO_TCP)
			return reject_tcp(skb, &p);
		return TC_ACT_SHOT;
	}

	__u32 nat_saddr = p.saddr;
	__u16 nat_sport = p.sport;
	__u8 snat = 0;
	/* Policy Cluster: masquerade what comes from outside clusterCIDR (as kube-proxy does for
	 * ClusterIPs), and whatever goes to a remote backend, which would otherwise answer the
	 * client directly. SVC_F_SNAT masquerades every flow (external destinations under policy
	 * Cluster, as kube-proxy's KUBE-EXT chains; masqueradeAll). Policy Local keeps the
	 * client address (local backends only). */
	if ((r.svc_flags & SVC_F_SNAT) ||
	    (!(r.svc_flags & SVC_F_LOCAL) && (!(r.be_flags & BE_F_LOCAL) || !in_cluster(p.saddr)))) {
		__u32 ifindex = skb->ifindex;
		__u32 *node = bpf_map_lookup_elem(&svc_ifaddrs, &ifindex);
		if (!node)
			return TC_ACT_SHOT;
		nat_saddr = *node;
		nat_sport = snat_port(&p, nat_saddr, r.be_addr, r.be_port, now);
		if (!nat_sport)
			return TC_ACT_SHOT;
		snat = 1;
	}

	/* A TCP flow opened by anything but a SYN (picked up mid-stream, or a stray FIN/RST)
	 * starts closing if that packet is a FIN or RST. */
	__u8 ct_flags = (p.tcp_flags & (TCP_FL_FIN | TCP_FL_RST)) ? CT_F_CLOSING : 0;
	struct ct_value fwd = {
		.kind = CT_FWD,
		.snat = snat,
		.flags = ct_flags,
		.rev_nat_id = r.rev_nat_id,
		.backend_id = r.backend_id,
		.nat_daddr = r.be_addr,
		.nat_saddr = nat_saddr,
		.nat_dport = r.be_port,
		.nat_sport = nat_sport,
		.last_ns = now,
	};
	struct ct_key rk = {
		.saddr = r.be_addr,
		.daddr = nat_saddr,
		.sport = r.be_port,
		.dport = nat_sport,
		.proto = p.proto,
	};
	struct ct_value rev = {
		.kind = CT_REPLY,
		.snat = snat,
		.flags = ct_flags,
		.rev_nat_id = r.rev_nat_id,
		.backend_id = r.backend_id,
		.nat_daddr = p.saddr,
		.nat_saddr = p.daddr,
		.nat_dport = p.sport,
		.nat_sport = p.dport,
		.last_ns = now,
	};
	if (bpf_map_update_elem(&svc_ct, &rk, &rev, BPF_ANY) < 0 ||
	    bpf_map_update_elem(&svc_ct, &ck, &fwd, BPF_ANY) < 0)
		return TC_ACT_SHOT;
	return nat_out(skb, &p, snat, nat_saddr, nat_sport, r.be_addr, r.be_port);
}

/* reply_ct parses the packet into p, its tuple into ck, the time into now, and returns its
 * conntrack entry when it is the reply side of a live translated flow, else NULL. */
static __always_inline struct ct_value *reply_ct(struct __sk_buff *skb, struct pkt *p, struct ct_key *ck,
						 __u64 *now)
{
	if (parse(skb, p) < 0)
		return NULL;
	*now = bpf_ktime_get_ns();
	ck->saddr = p->saddr;
	ck->daddr = p->daddr;
	ck->sport = p->sport;
	ck->dport = p->dport;
	ck->proto = p->proto;
	struct ct_value *ct = ct_lookup(ck, *now);
	if (!ct || ct->kind != CT_REPLY)
		return NULL;
	return ct;
}

/* svc_tc_pod_ingress runs on the interfaces toward local pods (the pod bridge). A local
 * backend answering a masqueraded flow sends its reply to the node address; here it is given
 * back its frontend as source and the client as destination, and routed out to the client.
 * Everything else is left alone: local pods' own traffic to services is translated by the
 * socket hooks. */
SEC("tc")
int svc_tc_pod_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ct_key ck = {};
	__u64 now = 0;
	struct ct_value *ct = reply_ct(skb, &p, &ck, &now);

	if (!ct || !ct->snat)
		return TC_ACT_UNSPEC;
	ct_touch(ct, &ck, &p, now);
	return nat_out(skb, &p, 1, ct->nat_saddr, ct->nat_sport, ct->nat_daddr, ct->nat_dport);
}

SEC("tc")
int svc_tc_egress(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ct_key ck = {};
	__u64 now = 0;
	struct ct_value *ct = reply_ct(skb, &p, &ck, &now);

	if (!ct || ct->snat)
		return TC_ACT_UNSPEC;
	ct_touch(ct, &ck, &p, now);
	/* Reply of a local backend to an outside client: restore the frontend as source. */
	return nat(skb, &p, ct->nat_saddr, ct->nat_sport, p.daddr, p.dport);
}

/* ------------------------------------------------- connected UDP sockets to gone backends */

SEC("iter/udp")
int svc_destroy_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;
	struct sock_common *sk;
	struct destroy_key dk = {};
	struct sock_revnat_key rk = {};

	if (!udp)
		return 0;
	sk = (struct sock_common *)udp;
	if (sk->skc_family != SVC_AF_INET || sk->skc_daddr == 0)
		return 0;
	dk.addr = sk->skc_daddr;
	dk.port = sk->skc_dport;
	dk.proto = SVC_PROTO_UDP;
	if (!bpf_map_lookup_elem(&svc_destroy, &dk))
		return 0;
	/* Only sockets that socket-LB sent to that backend, not every socket talking to it. */
	rk.cookie = bpf_get_socket_cookie(sk);
	rk.addr = dk.addr;
	rk.port = dk.port;
	if (!bpf_map_lookup_elem(&svc_sock_revnat, &rk))
		return 0;
	if (bpf_sock_destroy(sk) == 0) {
		/* One byte per destroyed socket: the reader counts them. */
		char one = '1';
		struct bpf_iter_meta *meta = ctx->meta;
		bpf_seq_write(meta->seq, &one, sizeof(one));
	}
	bpf_map_delete_elem(&svc_sock_revnat, &rk);
	return 0;
}

/* ------------------------------------------------------------------------------- tests */

/* svc_test_select runs lb_select on a struct lb_req given as context (BPF_PROG_TEST_RUN),
 * because the kernel cannot test-run cgroup sock_addr programs. */
SEC("syscall")
int svc_test_select(struct lb_req *r)
{
	return lb_select(r);
}
