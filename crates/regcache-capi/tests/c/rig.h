/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The verbs side of the C API tests: a device with a PD, and links of two RC queue pairs
 * connected to each other by loopback on that device, which move bytes with RDMA WRITE.
 */
#ifndef REGCACHE_TEST_RIG_H
#define REGCACHE_TEST_RIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <infiniband/verbs.h>

#define RIG_PORT 1
/* A lost completion fails the test instead of hanging it; generous for an emulated CPU. */
#define RIG_COMPLETION_TIMEOUT_S 20

struct rig {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	union ibv_gid gid;
	uint8_t gid_index;
};

/* Two QPs on one CQ, each connected to the other: qp[0] writes into memory of qp[1]'s side. */
struct rig_link {
	struct ibv_cq *cq;
	struct ibv_qp *qp[2];
};

static inline bool rig_gid_is_ipv4(const union ibv_gid *gid)
{
	static const uint8_t prefix[12] = { [10] = 0xff, [11] = 0xff };

	return !memcmp(gid->raw, prefix, sizeof(prefix));
}

/* Opens `name` with a PD and the RoCE v2 GID of its IPv4 address; returns 0 or -errno. */
static inline int rig_open(struct rig *rig, const char *name)
{
	struct ibv_device **list = ibv_get_device_list(NULL);
	struct ibv_device_attr attr;
	int i, err = -ENODEV;

	memset(rig, 0, sizeof(*rig));
	for (i = 0; list && list[i]; i++)
		if (!strcmp(ibv_get_device_name(list[i]), name))
			rig->ctx = ibv_open_device(list[i]);
	if (list)
		ibv_free_device_list(list);
	if (!rig->ctx)
		return err;
	if (ibv_query_device(rig->ctx, &attr))
		goto err_close;
	for (i = 0; i < 256; i++) {
		if (ibv_query_gid(rig->ctx, RIG_PORT, i, &rig->gid))
			break;
		if (rig_gid_is_ipv4(&rig->gid)) {
			rig->gid_index = (uint8_t)i;
			break;
		}
	}
	if (!rig_gid_is_ipv4(&rig->gid))
		goto err_close;
	rig->pd = ibv_alloc_pd(rig->ctx);
	if (rig->pd)
		return 0;
	err = -ENOMEM;
err_close:
	ibv_close_device(rig->ctx);
	rig->ctx = NULL;
	return err;
}

/* Deallocates the PD (which the cache must not have done) and closes the device. */
static inline int rig_close(struct rig *rig)
{
	int err = ibv_dealloc_pd(rig->pd);

	ibv_close_device(rig->ctx);
	return err;
}

static inline int rig_connect(struct rig *rig, struct ibv_qp *qp, uint32_t remote_qpn)
{
	struct ibv_qp_attr attr = {
		.qp_state = IBV_QPS_INIT,
		.port_num = RIG_PORT,
		.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE,
	};

	if (ibv_modify_qp(qp, &attr, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
			  IBV_QP_ACCESS_FLAGS))
		return -errno;
	memset(&attr, 0, sizeof(attr));
	attr.qp_state = IBV_QPS_RTR;
	attr.path_mtu = IBV_MTU_4096;
	attr.dest_qp_num = remote_qpn;
	attr.max_dest_rd_atomic = 1;
	attr.min_rnr_timer = 12;
	attr.ah_attr.is_global = 1;
	attr.ah_attr.grh.dgid = rig->gid;
	attr.ah_attr.grh.sgid_index = rig->gid_index;
	attr.ah_attr.grh.hop_limit = 1;
	attr.ah_attr.port_num = RIG_PORT;
	if (ibv_modify_qp(qp, &attr, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
			  IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
			  IBV_QP_MIN_RNR_TIMER))
		return -errno;
	memset(&attr, 0, sizeof(attr));
	attr.qp_state = IBV_QPS_RTS;
	attr.timeout = 14;
	attr.retry_cnt = 7;
	attr.rnr_retry = 7;
	attr.max_rd_atomic = 1;
	if (ibv_modify_qp(qp, &attr, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
			  IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC))
		return -errno;
	return 0;
}

static inline int rig_link_open(struct rig *rig, struct rig_link *link)
{
	struct ibv_qp_init_attr init = {
		.qp_type = IBV_QPT_RC,
		.cap = { .max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1,
			 .max_recv_sge = 1 },
	};
	int i, err;

	memset(link, 0, sizeof(*link));
	link->cq = ibv_create_cq(rig->ctx, 16, NULL, NULL, 0);
	if (!link->cq)
		return -errno;
	init.send_cq = init.recv_cq = link->cq;
	for (i = 0; i < 2; i++) {
		link->qp[i] = ibv_create_qp(rig->pd, &init);
		if (!link->qp[i])
			return -errno;
	}
	for (i = 0; i < 2; i++) {
		err = rig_connect(rig, link->qp[i], link->qp[1 - i]->qp_num);
		if (err)
			return err;
	}
	return 0;
}

static inline void rig_link_close(struct rig_link *link)
{
	for (int i = 0; i < 2; i++)
		if (link->qp[i])
			ibv_destroy_qp(link->qp[i]);
	if (link->cq)
		ibv_destroy_cq(link->cq);
}

/* Waits for one completion; returns 0, or -ETIMEDOUT / -EIO (with the status printed). */
static inline int rig_wait(struct ibv_cq *cq)
{
	struct timespec start, now;
	struct ibv_wc wc;
	int n;

	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		n = ibv_poll_cq(cq, 1, &wc);
		if (n < 0)
			return -EIO;
		if (n == 1) {
			if (wc.status == IBV_WC_SUCCESS)
				return 0;
			fprintf(stderr, "# completion: %s\n", ibv_wc_status_str(wc.status));
			return -EIO;
		}
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec - start.tv_sec < RIG_COMPLETION_TIMEOUT_S);
	return -ETIMEDOUT;
}

/* RDMA WRITE of `len` bytes at `src` (lkey) to `dst` (rkey) over the link; waits for it. */
static inline int rig_write(struct rig_link *link, const void *src, uint32_t lkey, size_t len,
			    void *dst, uint32_t rkey)
{
	struct ibv_sge sge = {
		.addr = (uintptr_t)src, .length = (uint32_t)len, .lkey = lkey,
	};
	struct ibv_send_wr wr = {
		.sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
		.send_flags = IBV_SEND_SIGNALED,
		.wr.rdma = { .remote_addr = (uintptr_t)dst, .rkey = rkey },
	}, *bad;

	if (ibv_post_send(link->qp[0], &wr, &bad))
		return -errno;
	return rig_wait(link->cq);
}

/* An anonymous private mapping of `len` bytes at `addr` exactly (NULL: anywhere). */
static inline void *rig_map(void *addr, size_t len)
{
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | (addr ? MAP_FIXED_NOREPLACE : 0);
	void *p = mmap(addr, len, PROT_READ | PROT_WRITE, flags, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* How many of the `len` bytes at `p` equal `byte`. */
static inline size_t rig_count(const void *p, size_t len, uint8_t byte)
{
	const uint8_t *b = p;
	size_t n = 0;

	for (size_t i = 0; i < len; i++)
		n += b[i] == byte;
	return n;
}

#endif /* REGCACHE_TEST_RIG_H */
