// SPDX-License-Identifier: GPL-2.0
/*
 * rxe_odp_repro: does an RDMA device move bytes into and out of on-demand
 * paging (ODP) memory correctly?
 *
 * Plain verbs on one device, one RC QP connected to itself (loopback). Each
 * case moves a few pages with RDMA WRITE or READ between an ODP buffer and a
 * pinned one, at a given path MTU and starting at a given offset into a page,
 * then checks every byte of the destination mapping: the target range must
 * hold the source range, everything around it (guards of a page on each
 * side) must be untouched.
 *
 * The pattern never repeats: every 8-byte word holds a tag, the case number
 * and its word index, so a wrong word says where it came from:
 *   - from the source range, misplaced (the distance is printed);
 *   - from the source mapping outside the registered range;
 *   - the destination's old contents (never written);
 *   - from an earlier case's transfer (stale kernel buffers);
 *   - foreign: never in this process's buffers at all (e.g. uninitialised
 *     kernel memory that went on the wire).
 *
 * Usage: rxe_odp_repro [-d DEVICE] [-v]
 * Exit status: 0 every case correct, 1 a case corrupted data or the guards,
 * 2 set-up failed, 4 the device has no RC ODP (nothing to test).
 *
 * Build: cc -O2 -Wall -o rxe_odp_repro rxe_odp_repro.c -libverbs
 * Needs: an RDMA device whose port 1 has an IPv4 RoCE v2 GID (for rxe, a
 * netdev with an IPv4 address) and an active MTU of 4096 (netdev MTU > 4096),
 * and enough locked memory (ulimit -l) for a few pinned pages.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>

#define PAGE		4096UL
#define PORT		1
/* Pages a transfer covers: several packets per page at MTU 1024. */
#define XFER_PAGES	4
#define XFER_LEN	(XFER_PAGES * PAGE)
/* Mapping: a guard page, the transfer (plus its offset), a guard page. */
#define MAP_LEN		((XFER_PAGES + 3) * PAGE)
#define TIMEOUT_SEC	10

#define TAG_SOURCE	0x53ULL	/* 'S' */
#define TAG_DEST	0xd5ULL
#define TAG_SHIFT	56
#define CASE_SHIFT	48
#define INDEX_MASK	((1ULL << CASE_SHIFT) - 1)

enum op { OP_WRITE, OP_READ };
enum odp_side { ODP_NONE, ODP_SOURCE, ODP_DEST };

struct repro_case {
	const char *name;
	enum op op;
	enum odp_side odp;
	enum ibv_mtu mtu;
	size_t offset;		/* of the transfer into its first page; 8-aligned */
};

static const struct repro_case cases[] = {
	/* Controls: both buffers pinned. If these fail, nothing below counts. */
	{ "control: pinned WRITE, MTU 1024, offset 16", OP_WRITE, ODP_NONE, IBV_MTU_1024, 16 },
	{ "control: pinned READ, MTU 1024, offset 16", OP_READ, ODP_NONE, IBV_MTU_1024, 16 },
	/* The device writes ODP memory. */
	{ "WRITE into ODP, MTU 1024, page aligned", OP_WRITE, ODP_DEST, IBV_MTU_1024, 0 },
	{ "READ into ODP sink, MTU 1024, page aligned", OP_READ, ODP_DEST, IBV_MTU_1024, 0 },
	{ "WRITE into ODP, MTU 4096, page aligned", OP_WRITE, ODP_DEST, IBV_MTU_4096, 0 },
	{ "WRITE into ODP, MTU 4096, offset 16", OP_WRITE, ODP_DEST, IBV_MTU_4096, 16 },
	{ "READ into ODP sink, MTU 4096, offset 16", OP_READ, ODP_DEST, IBV_MTU_4096, 16 },
	/* The device reads ODP memory. */
	{ "READ from ODP source, MTU 1024, page aligned", OP_READ, ODP_SOURCE, IBV_MTU_1024, 0 },
	{ "READ from ODP source, MTU 1024, offset 16", OP_READ, ODP_SOURCE, IBV_MTU_1024, 16 },
	{ "READ from ODP source, MTU 1024, offset 512", OP_READ, ODP_SOURCE, IBV_MTU_1024, 512 },
	{ "READ from ODP source, MTU 4096, offset 16", OP_READ, ODP_SOURCE, IBV_MTU_4096, 16 },
	{ "WRITE from ODP source, MTU 1024, offset 512", OP_WRITE, ODP_SOURCE, IBV_MTU_1024, 512 },
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

struct dev {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	union ibv_gid gid;
	int gid_index;
	bool has_odp;
};

static bool verbose;

static uint64_t word(uint64_t tag, unsigned int case_no, uint64_t index)
{
	return tag << TAG_SHIFT | (uint64_t)case_no << CASE_SHIFT | index;
}

static void fill(uint64_t *map, uint64_t tag, unsigned int case_no)
{
	for (size_t i = 0; i < MAP_LEN / 8; i++)
		map[i] = word(tag, case_no, i);
}

static int mtu_bytes(enum ibv_mtu mtu)
{
	return 128 << mtu;
}

/* Port 1's first RoCE v2 GID holding an IPv4 address (::ffff:a.b.c.d). */
static int find_gid(struct dev *d, const char *name)
{
	struct ibv_port_attr port;
	static const uint8_t v4_prefix[12] = { [10] = 0xff, [11] = 0xff };

	if (ibv_query_port(d->ctx, PORT, &port)) {
		perror("ibv_query_port");
		return -1;
	}
	for (int i = 0; i < port.gid_tbl_len; i++) {
		char path[256], type[32] = "";
		FILE *f;

		if (ibv_query_gid(d->ctx, PORT, i, &d->gid))
			continue;
		if (memcmp(d->gid.raw, v4_prefix, sizeof(v4_prefix)))
			continue;
		snprintf(path, sizeof(path),
			 "/sys/class/infiniband/%s/ports/%d/gid_attrs/types/%d",
			 name, PORT, i);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (!fgets(type, sizeof(type), f))
			type[0] = 0;
		fclose(f);
		if (strncmp(type, "RoCE v2", 7))
			continue;
		d->gid_index = i;
		return 0;
	}
	fprintf(stderr, "%s port %d: no RoCE v2 GID with an IPv4 address\n",
		name, PORT);
	return -1;
}

static int open_dev(struct dev *d, const char *want)
{
	struct ibv_device **list = ibv_get_device_list(NULL);
	struct ibv_device_attr_ex attr = {};
	const uint32_t rc_caps = IBV_ODP_SUPPORT_WRITE | IBV_ODP_SUPPORT_READ;
	const char *name = NULL;

	if (!list) {
		perror("ibv_get_device_list");
		return -1;
	}
	for (int i = 0; list[i]; i++) {
		if (want && strcmp(ibv_get_device_name(list[i]), want))
			continue;
		name = ibv_get_device_name(list[i]);
		d->ctx = ibv_open_device(list[i]);
		break;
	}
	if (!d->ctx) {
		fprintf(stderr, "no RDMA device %s\n", want ? want : "at all");
		ibv_free_device_list(list);
		return -1;
	}
	printf("device %s\n", name);
	if (ibv_query_device_ex(d->ctx, NULL, &attr)) {
		perror("ibv_query_device_ex");
		goto err_list;
	}
	d->has_odp = (attr.odp_caps.general_caps & IBV_ODP_SUPPORT) &&
		     (attr.odp_caps.per_transport_caps.rc_odp_caps & rc_caps) == rc_caps;
	if (find_gid(d, name))
		goto err_list;
	ibv_free_device_list(list);
	d->pd = ibv_alloc_pd(d->ctx);
	if (!d->pd) {
		perror("ibv_alloc_pd");
		return -1;
	}
	d->cq = ibv_create_cq(d->ctx, 4, NULL, NULL, 0);
	if (!d->cq) {
		perror("ibv_create_cq");
		return -1;
	}
	return 0;

err_list:
	ibv_free_device_list(list);
	return -1;
}

/* An RC QP connected to itself at path MTU @mtu. */
static struct ibv_qp *loopback_qp(struct dev *d, enum ibv_mtu mtu)
{
	struct ibv_qp_init_attr init = {
		.send_cq = d->cq,
		.recv_cq = d->cq,
		.qp_type = IBV_QPT_RC,
		.cap = { .max_send_wr = 1, .max_recv_wr = 1,
			 .max_send_sge = 1, .max_recv_sge = 1 },
	};
	struct ibv_qp_attr attr = {
		.qp_state = IBV_QPS_INIT,
		.port_num = PORT,
		.qp_access_flags = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE,
	};
	struct ibv_qp *qp = ibv_create_qp(d->pd, &init);

	if (!qp) {
		perror("ibv_create_qp");
		return NULL;
	}
	if (ibv_modify_qp(qp, &attr, IBV_QP_STATE | IBV_QP_PKEY_INDEX |
			  IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
		goto err_qp;
	memset(&attr, 0, sizeof(attr));
	attr.qp_state = IBV_QPS_RTR;
	attr.path_mtu = mtu;
	attr.dest_qp_num = qp->qp_num;
	attr.max_dest_rd_atomic = 1;
	attr.min_rnr_timer = 12;
	attr.ah_attr.is_global = 1;
	attr.ah_attr.grh.dgid = d->gid;
	attr.ah_attr.grh.sgid_index = d->gid_index;
	attr.ah_attr.grh.hop_limit = 64;
	attr.ah_attr.port_num = PORT;
	if (ibv_modify_qp(qp, &attr, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
			  IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
			  IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
		goto err_qp;
	memset(&attr, 0, sizeof(attr));
	attr.qp_state = IBV_QPS_RTS;
	attr.timeout = 14;
	attr.retry_cnt = 7;
	attr.rnr_retry = 7;
	attr.max_rd_atomic = 1;
	if (ibv_modify_qp(qp, &attr, IBV_QP_STATE | IBV_QP_TIMEOUT |
			  IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
			  IBV_QP_MAX_QP_RD_ATOMIC))
		goto err_qp;
	return qp;

err_qp:
	perror("ibv_modify_qp");
	ibv_destroy_qp(qp);
	return NULL;
}

/* Waits for one completion; returns its status, or -1 on a timeout. */
static int wait_completion(struct dev *d)
{
	struct timespec start, now;
	struct ibv_wc wc;
	int n;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		n = ibv_poll_cq(d->cq, 1, &wc);
		if (n < 0)
			return -1;
		if (n == 1)
			return wc.status;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec > TIMEOUT_SEC)
			return -1;
		usleep(100);
	}
}

/* What a wrong word in the target range turned out to be. */
struct verdict {
	size_t wrong;			/* words in the target range */
	size_t misplaced;		/* source range words, wrong place */
	size_t outside_source;		/* source mapping, outside the range */
	size_t stale_dest;		/* the destination's old words */
	size_t earlier_case;		/* a word of an earlier case */
	size_t foreign;			/* none of the above */
	size_t foreign_zero;		/* of which all-zero */
	size_t guard_before;		/* changed words before the target */
	size_t guard_after;		/* changed words after the target */
	size_t first_guard_before;	/* byte offset of the first, from target start */
	long last_displacement;		/* of a misplaced word, bytes */
	uint64_t foreign_sample[4];
	size_t correct_per_page[XFER_PAGES + 1];
};

static void classify(const uint64_t *dst, size_t first, size_t src_first,
		     unsigned int case_no, struct verdict *v)
{
	const size_t words = XFER_LEN / 8;

	for (size_t i = 0; i < MAP_LEN / 8; i++) {
		uint64_t got = dst[i];
		bool in_target = i >= first && i < first + words;
		uint64_t tag = got >> TAG_SHIFT;
		unsigned int got_case = (got >> CASE_SHIFT) & 0xff;
		uint64_t index = got & INDEX_MASK;

		if (!in_target) {
			if (got == word(TAG_DEST, case_no, i))
				continue;
			if (i < first) {
				if (!v->guard_before)
					v->first_guard_before = (first - i) * 8;
				v->guard_before++;
			} else {
				v->guard_after++;
			}
			continue;
		}
		if (got == word(TAG_SOURCE, case_no, src_first + i - first)) {
			v->correct_per_page[((i - first) * 8 + (first * 8 % PAGE)) / PAGE]++;
			continue;
		}
		v->wrong++;
		if (got_case != case_no && (tag == TAG_SOURCE || tag == TAG_DEST)) {
			v->earlier_case++;
		} else if (tag == TAG_SOURCE && index < MAP_LEN / 8) {
			if (index >= src_first && index < src_first + words) {
				v->misplaced++;
				v->last_displacement =
					((long)index - (long)src_first -
					 (long)(i - first)) * 8;
			} else {
				v->outside_source++;
			}
		} else if (got == word(TAG_DEST, case_no, i)) {
			v->stale_dest++;
		} else {
			if (v->foreign < 4)
				v->foreign_sample[v->foreign] = got;
			v->foreign++;
			v->foreign_zero += got == 0;
		}
	}
}

static void report(const struct verdict *v, size_t offset)
{
	printf("    %zu of %lu words wrong", v->wrong, XFER_LEN / 8);
	if (v->wrong) {
		printf(" (correct words per page touched:");
		for (size_t p = 0; p < XFER_PAGES + (offset != 0); p++)
			printf(" %zu", v->correct_per_page[p]);
		printf(")");
	}
	printf("\n");
	if (v->misplaced)
		printf("    %zu words from the source range, misplaced (e.g. by %+ld bytes)\n",
		       v->misplaced, v->last_displacement);
	if (v->outside_source)
		printf("    %zu words from the source mapping OUTSIDE the registered source range\n",
		       v->outside_source);
	if (v->stale_dest)
		printf("    %zu words never written (destination's old contents)\n",
		       v->stale_dest);
	if (v->earlier_case)
		printf("    %zu words from an EARLIER case's transfer (stale kernel buffer)\n",
		       v->earlier_case);
	if (v->foreign) {
		printf("    %zu words FOREIGN: never in any buffer of this process (%zu all-zero); first:",
		       v->foreign, v->foreign_zero);
		for (size_t k = 0; k < v->foreign && k < 4; k++)
			printf(" %016" PRIx64, v->foreign_sample[k]);
		printf("\n");
	}
	if (v->guard_before)
		printf("    GUARD BEFORE the target overwritten: %zu words, from %zu bytes before its start\n",
		       v->guard_before, v->first_guard_before);
	if (v->guard_after)
		printf("    GUARD AFTER the target overwritten: %zu words\n",
		       v->guard_after);
}

struct buffer {
	uint64_t *map;
	struct ibv_mr *mr;
};

static int buffer_init(struct dev *d, struct buffer *b, uint64_t tag,
		       unsigned int case_no, size_t first_byte, int access)
{
	b->map = mmap(NULL, MAP_LEN, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (b->map == MAP_FAILED) {
		perror("mmap");
		return -1;
	}
	fill(b->map, tag, case_no);
	/* Exactly the transfer's range: the guards are outside the MR. */
	b->mr = ibv_reg_mr(d->pd, (char *)b->map + first_byte, XFER_LEN, access);
	if (!b->mr) {
		perror("ibv_reg_mr");
		munmap(b->map, MAP_LEN);
		return -1;
	}
	return 0;
}

static void buffer_fini(struct buffer *b)
{
	ibv_dereg_mr(b->mr);
	munmap(b->map, MAP_LEN);
}

/*
 * Runs one case. Returns 0 when every byte is right, 1 when data or guards
 * were corrupted (or the transfer failed), -1 when set-up failed.
 */
static int run_case(struct dev *d, unsigned int case_no)
{
	const struct repro_case *c = &cases[case_no];
	/* The transfer starts one guard page plus @offset into the mapping. */
	const size_t first_byte = PAGE + c->offset;
	const int odp = IBV_ACCESS_ON_DEMAND;
	int src_access = c->op == OP_WRITE ? 0 : IBV_ACCESS_REMOTE_READ;
	int dst_access = IBV_ACCESS_LOCAL_WRITE |
			 (c->op == OP_WRITE ? IBV_ACCESS_REMOTE_WRITE : 0);
	struct buffer src, dst;
	struct ibv_mr *local, *remote;
	struct verdict v = {};
	struct ibv_qp *qp;
	struct ibv_sge sge;
	struct ibv_send_wr wr = {}, *bad;
	int status, ret = -1;

	printf("case %u: %s\n", case_no, c->name);
	if (c->odp != ODP_NONE && !d->has_odp) {
		printf("    skipped: no RC ODP on this device\n");
		return 0;
	}
	if (c->odp == ODP_SOURCE)
		src_access |= odp;
	if (c->odp == ODP_DEST)
		dst_access |= odp;
	if (buffer_init(d, &src, TAG_SOURCE, case_no, first_byte, src_access))
		return -1;
	if (buffer_init(d, &dst, TAG_DEST, case_no, first_byte, dst_access))
		goto err_src;
	qp = loopback_qp(d, c->mtu);
	if (!qp)
		goto err_dst;

	local = c->op == OP_WRITE ? src.mr : dst.mr;
	remote = c->op == OP_WRITE ? dst.mr : src.mr;
	sge.addr = (uintptr_t)local->addr;
	sge.length = XFER_LEN;
	sge.lkey = local->lkey;
	wr.sg_list = &sge;
	wr.num_sge = 1;
	wr.opcode = c->op == OP_WRITE ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
	wr.send_flags = IBV_SEND_SIGNALED;
	wr.wr.rdma.remote_addr = (uintptr_t)remote->addr;
	wr.wr.rdma.rkey = remote->rkey;
	if (ibv_post_send(qp, &wr, &bad)) {
		perror("ibv_post_send");
		goto err_qp;
	}
	status = wait_completion(d);
	/* No request of the QP can reach the buffers once it is gone. */
	ibv_destroy_qp(qp);
	qp = NULL;
	if (status) {
		printf("    FAIL: %s\n", status < 0 ? "no completion" :
		       ibv_wc_status_str(status));
		ret = 1;
		goto err_dst;
	}
	classify(dst.map, first_byte / 8, first_byte / 8, case_no, &v);
	printf("    completed with IBV_WC_SUCCESS (path MTU %d, offset %zu, %lu bytes)\n",
	       mtu_bytes(c->mtu), c->offset, XFER_LEN);
	report(&v, c->offset);
	ret = v.wrong || v.guard_before || v.guard_after;
	printf("    %s\n", ret ? "FAIL: data corrupted" : "ok: every byte right, guards intact");
	if (verbose && ret) {
		for (size_t i = 0; i < MAP_LEN / 8; i++)
			printf("      dst+%05zx %016" PRIx64 "\n", i * 8, dst.map[i]);
	}

err_qp:
	if (qp)
		ibv_destroy_qp(qp);
err_dst:
	buffer_fini(&dst);
err_src:
	buffer_fini(&src);
	return ret;
}

int main(int argc, char **argv)
{
	const char *want = NULL;
	struct dev d = {};
	int opt, failed = 0, broken = 0, ran_odp = 0;

	while ((opt = getopt(argc, argv, "d:v")) != -1) {
		switch (opt) {
		case 'd':
			want = optarg;
			break;
		case 'v':
			verbose = true;
			break;
		default:
			fprintf(stderr, "usage: %s [-d DEVICE] [-v]\n", argv[0]);
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (open_dev(&d, want))
		return 2;
	printf("RC ODP (read, write): %s; GID index %d\n",
	       d.has_odp ? "yes" : "no", d.gid_index);
	for (unsigned int i = 0; i < NCASES; i++) {
		int ret = run_case(&d, i);

		if (ret < 0)
			broken++;
		else
			failed += ret;
		ran_odp += cases[i].odp != ODP_NONE && d.has_odp;
	}
	printf("rxe_odp_repro: %d of %zu cases corrupted data%s\n", failed,
	       NCASES, broken ? ", some could not be set up" : "");
	if (failed)
		return 1;
	if (broken)
		return 2;
	return ran_odp ? 0 : 4;
}
