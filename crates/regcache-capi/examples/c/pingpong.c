// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Ping-pong over two RC queue pairs on one RDMA device (loopback), every buffer registered
 * through libregcache right before use and released after its completion, as an MPI library
 * would. Every ten rounds the buffers are unmapped and mapped again: the kernel usually hands
 * back the same addresses with new pages, which the cache notices (no stale pages are sent).
 *
 *   cc pingpong.c $(pkg-config --cflags --libs regcache) -o pingpong
 *   ./pingpong [device] [rounds]        (default rxe0, 100)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <regcache.h>

#define MSG (256 * 1024)

static struct ibv_cq *cq;
static struct regcache *cache;

#define CHECK(cond, what) do { if (!(cond)) { perror(what); exit(1); } } while (0)

static void connect_qp(struct ibv_qp *qp, uint32_t remote, union ibv_gid gid, int gid_index)
{
	struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .port_num = 1,
				 .qp_access_flags = IBV_ACCESS_LOCAL_WRITE };

	CHECK(!ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
			     IBV_QP_ACCESS_FLAGS), "INIT");
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = IBV_MTU_1024;
	a.dest_qp_num = remote;
	a.min_rnr_timer = 12;
	a.ah_attr = (struct ibv_ah_attr){ .is_global = 1, .port_num = 1,
		.grh = { .dgid = gid, .sgid_index = (uint8_t)gid_index, .hop_limit = 1 } };
	CHECK(!ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
			     IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
			     IBV_QP_MIN_RNR_TIMER), "RTR");
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	a.timeout = 14;
	a.retry_cnt = 7;
	a.rnr_retry = 7;
	CHECK(!ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
			     IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC), "RTS");
}

/* Registers through the cache, or exits with the library's explanation. */
static const struct regcache_region *reg(void *buf, size_t len, unsigned int access)
{
	const struct regcache_region *r;
	int err = regcache_register(cache, buf, len, access, &r);

	if (err) {
		fprintf(stderr, "regcache_register: %s (%s)\n", regcache_strerror(err),
			regcache_last_error());
		exit(1);
	}
	return r;
}

static void wait_one(void)
{
	time_t start = time(NULL);
	struct ibv_wc wc;
	int n;

	while ((n = ibv_poll_cq(cq, 1, &wc)) == 0 && time(NULL) - start < 20)
		;
	if (n != 1 || wc.status != IBV_WC_SUCCESS) {
		fprintf(stderr, "completion failed: %s\n",
			n == 1 ? ibv_wc_status_str(wc.status) : "none within 20 s");
		exit(1);
	}
}

/* One message from `from` to `to`: post the receive, send, wait for both completions. */
static void transfer(struct ibv_qp *from, char *src, struct ibv_qp *to, char *dst)
{
	const struct regcache_region *s = reg(src, MSG, 0);
	const struct regcache_region *d = reg(dst, MSG, IBV_ACCESS_LOCAL_WRITE);
	struct ibv_sge send_sge = { (uintptr_t)src, MSG, s->lkey };
	struct ibv_sge recv_sge = { (uintptr_t)dst, MSG, d->lkey };
	struct ibv_recv_wr rwr = { .sg_list = &recv_sge, .num_sge = 1 }, *bad_r;
	struct ibv_send_wr swr = { .sg_list = &send_sge, .num_sge = 1, .opcode = IBV_WR_SEND,
				   .send_flags = IBV_SEND_SIGNALED }, *bad_s;

	CHECK(!ibv_post_recv(to, &rwr, &bad_r), "ibv_post_recv");
	CHECK(!ibv_post_send(from, &swr, &bad_s), "ibv_post_send");
	wait_one();
	wait_one();
	regcache_release(cache, s);
	regcache_release(cache, d);
}

int main(int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] : "rxe0";
	int rounds = argc > 2 ? atoi(argv[2]) : 100, gid_index = -1, n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	struct ibv_context *ctx = NULL;
	struct regcache_stats st;
	union ibv_gid gid;
	char *ping = NULL, *pong = NULL;

	for (int i = 0; i < n; i++)
		if (!strcmp(ibv_get_device_name(list[i]), name))
			ctx = ibv_open_device(list[i]);
	CHECK(ctx, name);
	for (int i = 0; i < 16 && gid_index < 0; i++) /* the RoCE GID of an IPv4 address */
		if (!ibv_query_gid(ctx, 1, i, &gid) && gid.raw[10] == 0xff && gid.raw[11] == 0xff)
			gid_index = i;
	CHECK(gid_index >= 0, "no IPv4 GID on port 1");
	struct ibv_pd *pd = ibv_alloc_pd(ctx);
	CHECK(pd, "ibv_alloc_pd");
	int err = regcache_create(pd, NULL, &cache); /* configured by REGCACHE_* variables */
	if (err) {
		fprintf(stderr, "regcache_create: %s (%s)\n", regcache_strerror(err),
			regcache_last_error());
		return 1;
	}
	cq = ibv_create_cq(ctx, 8, NULL, NULL, 0);
	CHECK(cq, "ibv_create_cq");
	struct ibv_qp_init_attr init = { .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
		.cap = { .max_send_wr = 1, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1 } };
	struct ibv_qp *a = ibv_create_qp(pd, &init), *b = ibv_create_qp(pd, &init);
	CHECK(a && b, "ibv_create_qp");
	connect_qp(a, b->qp_num, gid, gid_index);
	connect_qp(b, a->qp_num, gid, gid_index);

	for (int round = 0; round < rounds; round++) {
		if (round % 10 == 0) { /* new pages, likely at the old addresses */
			if (ping) {
				munmap(ping, MSG);
				munmap(pong, MSG);
			}
			ping = mmap(NULL, MSG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			pong = mmap(NULL, MSG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			CHECK(ping != MAP_FAILED && pong != MAP_FAILED, "mmap");
		}
		memset(ping, 'a' + round % 26, MSG);
		transfer(a, ping, b, pong); /* ping: a -> b */
		memset(ping, 0, MSG);
		transfer(b, pong, a, ping); /* pong: b -> a, the same bytes back */
		for (int i = 0; i < MSG; i++)
			if (ping[i] != 'a' + round % 26) {
				fprintf(stderr, "round %d: byte %d is %c\n", round, i, ping[i]);
				return 1;
			}
	}
	regcache_stats(cache, &st);
	printf("pingpong: %d round trips of %d bytes on %s, mode %s (policy %s): "
	       "%llu hits, %llu misses, %llu invalidations\n", rounds, MSG, name,
	       regcache_mode(cache), regcache_policy(cache), (unsigned long long)st.hits,
	       (unsigned long long)st.misses, (unsigned long long)st.invalidations);
	munmap(ping, MSG);
	munmap(pong, MSG);
	ibv_destroy_qp(a);
	ibv_destroy_qp(b);
	ibv_destroy_cq(cq);
	CHECK(regcache_destroy(cache) == 0, "regcache_destroy");
	ibv_dealloc_pd(pd);
	ibv_close_device(ctx);
	ibv_free_device_list(list);
	return 0;
}
