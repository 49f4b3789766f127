/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts shared by every svcproxy BPF program. The Go side (proxy/ebpf) mirrors these
 * structs through the types bpf2go generates; keep both in step (a test compares sizes).
 *
 * Addresses and ports are stored in network byte order, as they appear in packets and in
 * struct bpf_sock_addr.
 */
#ifndef SVC_MAPS_H
#define SVC_MAPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define SVC_PROTO_TCP 6
#define SVC_PROTO_UDP 17

/* Scopes of a frontend: the per-packet (tc) path serves clients outside the node, the socket
 * path serves clients on the node. They may use different endpoint lists (traffic policies). */
#define SVC_SCOPE_EXT 0
#define SVC_SCOPE_INT 1

/* svc_value.flags, meaningful in slot 0. */
#define SVC_F_AFFINITY 0x01 /* sessionAffinity ClientIP: affinity_timeout holds seconds */
#define SVC_F_LOCAL 0x02    /* traffic policy Local for this scope: keep the client address */
#define SVC_F_SNAT 0x04     /* tc path: always SNAT to the node (external destinations under
			     * policy Cluster, masqueradeAll) */
#define SVC_F_RANGES 0x08   /* tc path: only sources in svc_src_ranges (loadBalancerSourceRanges) */
#define SVC_F_NODE_ADDR 0x10 /* tc path: the frontend address is a node address; without
			      * backends the packet is left to the stack, which refuses it */

/* backend_value.flags */
#define BE_F_LOCAL 0x01 /* the endpoint runs on this node */

/* conntrack entry kinds */
#define CT_FWD 1   /* client -> frontend, as seen entering the node */
#define CT_REPLY 2 /* backend -> client (or node address after SNAT), as seen by the node */

/* ct_value.flags */
#define CT_F_CLOSING 0x01 /* TCP: a FIN or RST was seen in either direction (short timeout) */

struct svc_key {
	__u32 addr;  /* frontend address */
	__u16 port;  /* frontend port */
	__u8 proto;  /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 scope;  /* SVC_SCOPE_* */
	__u16 slot;  /* 0: service header, 1..count+qcount: backends */
	__u16 pad;
};

struct svc_value {
	__u32 backend_id;       /* slots >= 1 */
	__u16 count;            /* slot 0: active backends, slots 1..count */
	__u16 qcount;           /* slot 0: terminating backends, slots count+1..count+qcount */
	__u16 rev_nat_id;       /* slot 0: id of the frontend in svc_revnat */
	__u8 flags;             /* slot 0: SVC_F_* */
	__u8 pad;
	__u32 affinity_timeout; /* slot 0: seconds, with SVC_F_AFFINITY */
};

struct backend_value {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 flags; /* BE_F_* */
};

/* The frontend of a rev-NAT id, to restore the VIP. */
struct revnat_value {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/* Socket-LB reverse map: which frontend a socket meant when it was sent to a backend. */
struct sock_revnat_key {
	__u64 cookie;
	__u32 addr; /* backend address */
	__u16 port; /* backend port */
	__u16 pad;
};

struct sock_revnat_value {
	__u32 addr; /* frontend address */
	__u16 port; /* frontend port */
	__u16 rev_nat_id;
};

struct affinity_key {
	__u64 client;     /* netns cookie (socket path) or client IPv4 address (tc path) */
	__u16 rev_nat_id;
	__u8 scope;
	__u8 pad[5];
};

struct affinity_value {
	__u64 last_ns;    /* bpf_ktime_get_ns of the last use */
	__u32 backend_id;
	__u16 slot;       /* where backend_id sat when chosen; checked on reuse */
	__u16 pad;
};

struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct ct_value {
	__u8 kind;        /* CT_FWD / CT_REPLY */
	__u8 snat;        /* 1 when the source was rewritten to the node address */
	__u16 rev_nat_id;
	__u32 backend_id; /* CT_FWD: validated against svc_backends on every packet */
	/* CT_FWD: the new destination (backend) and, with snat, the new source.
	 * CT_REPLY: the new source (frontend) and the new destination (original client). */
	__u32 nat_daddr;
	__u32 nat_saddr;
	__u16 nat_dport;
	__u16 nat_sport;
	__u8 flags;       /* CT_F_*; this byte was padding before, so older pinned entries hold 0 */
	__u8 pad[3];
	__u64 last_ns;    /* bpf_ktime_get_ns of the last packet in this entry's direction */
};

/* loadBalancerSourceRanges: an LPM key matching rev_nat_id exactly (prefixlen 32 + bits). */
struct src_range_key {
	__u32 prefixlen;
	__u16 rev_nat_id;
	__u16 pad;
	__u32 addr;
};

/* clusterCIDR prefixes: an LPM key over an IPv4 address (prefixlen 0..32). */
struct cidr_key {
	__u32 prefixlen;
	__u32 addr;
};

/* Backends whose connected UDP sockets the socket iterator destroys. */
struct destroy_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

#ifndef SVC_MAX_SERVICES
#define SVC_MAX_SERVICES 262144
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(max_entries, SVC_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svc_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct backend_value);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svc_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct revnat_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svc_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat_value);
	__uint(max_entries, 262144);
} svc_sock_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(max_entries, 65536);
} svc_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, 262144);
} svc_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct src_range_key);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svc_src_ranges SEC(".maps");

/* ifindex -> IPv4 address used to SNAT flows entering through that interface. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 256);
} svc_ifaddrs SEC(".maps");

/* The cluster's pod ranges (clusterCIDR). The tc path masquerades flows from sources outside
 * them under traffic policy Cluster; an empty map means every source is outside. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct cidr_key);
	__type(value, __u8);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svc_cluster_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct destroy_key);
	__type(value, __u8);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svc_destroy SEC(".maps");

#endif
