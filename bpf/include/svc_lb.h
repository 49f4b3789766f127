/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Backend selection, shared by the socket hooks, the tc programs and the test program
 * (svc_test_select), so that BPF_PROG_TEST_RUN exercises the very code the cgroup hooks run.
 */
#ifndef SVC_LB_H
#define SVC_LB_H

#include "svc_maps.h"

/* lb_req.verdict */
#define LB_NONE 0       /* not a frontend of this scope: leave the traffic alone */
#define LB_OK 1         /* a backend was chosen */
#define LB_NO_BACKEND 2 /* a frontend without a usable backend: refuse */

/* The request and answer of lb_select. It is also the context of svc_test_select, so its
 * layout is part of the Go side's test contract. */
struct lb_req {
	/* in */
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 scope;
	__u64 client; /* affinity identity: netns cookie or client address */
	/* out */
	__s32 verdict;
	__u32 backend_id;
	__u32 be_addr;
	__u16 be_port;
	__u8 be_flags;
	__u8 svc_flags;
	__u16 rev_nat_id;
	__u16 slot;
};

static __always_inline int lb_select(struct lb_req *r)
{
	struct svc_key k = {
		.addr = r->addr,
		.port = r->port,
		.proto = r->proto,
		.scope = r->scope,
		.slot = 0,
	};
	struct svc_value *svc, *sl;
	struct backend_value *be = 0;
	struct affinity_key ak = {};
	struct affinity_value *av;
	__u64 now = 0;
	__u16 count, slot = 0;
	__u32 backend_id = 0;

	r->verdict = LB_NONE;
	svc = bpf_map_lookup_elem(&svc_services, &k);
	if (!svc)
		return LB_NONE;
	count = svc->count;
	r->rev_nat_id = svc->rev_nat_id;
	r->svc_flags = svc->flags;
	r->verdict = LB_NO_BACKEND;
	if (count == 0)
		return LB_NO_BACKEND;

	if (svc->flags & SVC_F_AFFINITY) {
		now = bpf_ktime_get_ns();
		ak.client = r->client;
		ak.rev_nat_id = svc->rev_nat_id;
		ak.scope = r->scope;
		av = bpf_map_lookup_elem(&svc_affinity, &ak);
		if (av && now - av->last_ns <= (__u64)svc->affinity_timeout * 1000000000ULL &&
		    av->slot >= 1 && av->slot <= count) {
			/* Reuse only while the backend still sits in an active slot. */
			k.slot = av->slot;
			sl = bpf_map_lookup_elem(&svc_services, &k);
			if (sl && sl->backend_id == av->backend_id) {
				be = bpf_map_lookup_elem(&svc_backends, &sl->backend_id);
				if (be) {
					slot = av->slot;
					backend_id = av->backend_id;
				}
			}
		}
	}
	if (!be) {
		slot = (bpf_get_prandom_u32() % count) + 1;
		k.slot = slot;
		sl = bpf_map_lookup_elem(&svc_services, &k);
		if (!sl)
			return LB_NO_BACKEND;
		backend_id = sl->backend_id;
		be = bpf_map_lookup_elem(&svc_backends, &backend_id);
		if (!be)
			return LB_NO_BACKEND;
	}
	if (r->svc_flags & SVC_F_AFFINITY) {
		struct affinity_value nv = {
			.last_ns = now,
			.backend_id = backend_id,
			.slot = slot,
		};
		bpf_map_update_elem(&svc_affinity, &ak, &nv, BPF_ANY);
	}
	r->backend_id = backend_id;
	r->be_addr = be->addr;
	r->be_port = be->port;
	r->be_flags = be->flags;
	r->slot = slot;
	r->verdict = LB_OK;
	return LB_OK;
}

#endif
