// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * libregcache through its C API, built against the installed library, on Soft-RoCE (rxe0):
 * the seed scenario in every mode the kernel allows, a naive cache as the negative control,
 * eight threads at once, and every bad argument. Outside the test VM (no rxe0) the tests
 * that need the device skip; inside it (REGCACHE_VM=1) a missing device fails them.
 */
#define TEST_TIMEOUT_SECONDS 900
#include <pthread.h>
#include <stdatomic.h>

#include <regcache.h>

#include "harness.h"
#include "rig.h"

#define KIB 1024UL
#define MIB (1024 * KIB)
#define OLD 'A'
#define NEW 'B'

static bool in_vm(void)
{
	const char *vm = getenv("REGCACHE_VM");

	return vm && !strcmp(vm, "1");
}

static bool under_valgrind(void)
{
	return getenv("REGCACHE_TEST_UNDER_VALGRIND") != NULL;
}

/* REGCACHE_EXPECT_ODP from the harness: whether this kernel's rxe has ODP. */
static bool expect_odp(void)
{
	const char *odp = getenv("REGCACHE_EXPECT_ODP");

	return odp && !strcmp(odp, "1");
}

/* Opens rxe0, or skips (host) / fails (VM) without it. */
static void open_rig(struct rig *rig)
{
	int err = rig_open(rig, "rxe0");

	if (!err)
		return;
	if (in_vm()) {
		TH_LOG("rxe0 unusable inside the VM: %s", strerror(-err));
		th_fail(true);
	}
	SKIP(, "no rxe0 (%s)", strerror(-err));
}

/* A cache in `mode` on the rig's PD; -EOPNOTSUPP is returned, anything else must succeed. */
static int create_cache(struct rig *rig, uint32_t mode, struct regcache **cache)
{
	struct regcache_config config;
	int err;

	ASSERT_EQ(regcache_config_init(&config), 0);
	config.mode = mode;
	config.odp_probe_mtu = 4096; /* the rig's QPs run at path MTU 4096 */
	err = regcache_create(rig->pd, &config, cache);
	if (err == -EOPNOTSUPP)
		return err;
	if (err)
		TH_LOG("regcache_create: %s (%s)", regcache_strerror(err), regcache_last_error());
	ASSERT_EQ(err, 0);
	ASSERT_NE(*cache, NULL);
	return 0;
}

struct target {
	uint8_t *buf;
	struct ibv_mr *mr;
	size_t len;
};

static void target_open(struct rig *rig, struct target *t, size_t len)
{
	t->len = len;
	t->buf = rig_map(NULL, len);
	ASSERT_NE(t->buf, NULL);
	t->mr = ibv_reg_mr(rig->pd, t->buf, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	ASSERT_NE(t->mr, NULL);
}

static void target_close(struct target *t)
{
	ASSERT_EQ(ibv_dereg_mr(t->mr), 0);
	munmap(t->buf, t->len);
}

/* Clears the target, writes `len` bytes at `src` with `lkey` into it, and counts `byte`. */
static size_t send_and_count(struct rig_link *link, struct target *t, const void *src,
			     uint32_t lkey, size_t len, uint8_t byte)
{
	memset(t->buf, 0, len);
	ASSERT_EQ(rig_write(link, src, lkey, len, t->buf, t->mr->rkey), 0);
	return rig_count(t->buf, len, byte);
}

/*
 * The seed scenario at `len` through `cache`: register 'A' bytes and write them; munmap and
 * mmap new pages at the same address with 'B' bytes; register again and write. Returns how many
 * 'B' bytes the second write delivered, and whether its registration was a hit.
 */
static size_t seed(struct rig_link *link, struct target *t, struct regcache *cache, size_t len,
		   bool *second_hit)
{
	const struct regcache_region *r;
	struct regcache_stats before, after;
	uint8_t *buf = rig_map(NULL, len), *again;
	size_t delivered;

	ASSERT_NE(buf, NULL);
	memset(buf, OLD, len);
	ASSERT_EQ(regcache_register(cache, buf, len, 0, &r), 0);
	ASSERT_LE(r->addr, (uintptr_t)buf);
	ASSERT_GE(r->addr + r->length, (uintptr_t)buf + len);
	ASSERT_EQ(send_and_count(link, t, buf, r->lkey, len, OLD), len);
	ASSERT_EQ(regcache_release(cache, r), 0);

	ASSERT_EQ(munmap(buf, len), 0);
	again = rig_map(buf, len);
	ASSERT_EQ(again, buf);
	memset(again, NEW, len);
	ASSERT_EQ(regcache_stats(cache, &before), 0);
	ASSERT_EQ(regcache_register(cache, again, len, 0, &r), 0);
	ASSERT_EQ(regcache_stats(cache, &after), 0);
	*second_hit = after.hits > before.hits;
	delivered = send_and_count(link, t, again, r->lkey, len, NEW);
	ASSERT_EQ(regcache_release(cache, r), 0);
	munmap(again, len);
	return delivered;
}

static void seed_in_mode(uint32_t mode, const char *name)
{
	static const size_t sizes[] = { 4 * KIB, MIB };
	struct regcache_stats stats;
	struct regcache *cache;
	struct rig_link link;
	struct target t;
	struct rig rig;
	const char *policy;
	int err;

	open_rig(&rig);
	ASSERT_EQ(rig_link_open(&rig, &link), 0);
	target_open(&rig, &t, MIB);
	err = create_cache(&rig, mode, &cache);
	if (err) {
		/* Only ODP may be refused: by a kernel without it, or by the self-test. */
		ASSERT_EQ(mode, REGCACHE_MODE_ODP);
		TH_LOG("mode %s refused: %s", name, regcache_last_error());
		target_close(&t);
		rig_link_close(&link);
		ASSERT_EQ(rig_close(&rig), 0);
		SKIP(return, "mode odp unavailable here (%s)", expect_odp() ?
		     "the ODP self-test failed" : "no ODP in this kernel's rxe");
	}
	policy = regcache_policy(cache);
	ASSERT_NE(policy, NULL);
	ASSERT_EQ(strcmp(regcache_mode(cache), name), 0);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		bool hit;
		size_t delivered = seed(&link, &t, cache, sizes[i], &hit);

		printf("# mode %s (policy %s), %zu bytes: %zu new bytes delivered, %s\n", name,
		       policy, sizes[i], delivered, hit ? "hit" : "miss");
		ASSERT_EQ(delivered, sizes[i]);
		if (!strcmp(policy, "pinned") || !strcmp(policy, "off"))
			ASSERT_FALSE(hit); /* the old registration must not serve new pages */
		if (!strcmp(policy, "odp"))
			ASSERT_TRUE(hit); /* the device follows the page tables */
	}
	ASSERT_EQ(regcache_stats(cache, &stats), 0);
	if (!strcmp(policy, "pinned"))
		ASSERT_GT(stats.invalidations, 0);
	ASSERT_EQ(stats.handles, 0);
	ASSERT_EQ(regcache_destroy(cache), 0);
	target_close(&t);
	rig_link_close(&link);
	ASSERT_EQ(rig_close(&rig), 0); /* the cache left the caller's PD alone */
}

/* The seed scenario: 4 KiB and 1 MiB, munmap + mmap at the same address, new bytes arrive. */
TEST(seed_pinned) { seed_in_mode(REGCACHE_MODE_PINNED, "pinned"); }
TEST(seed_off) { seed_in_mode(REGCACHE_MODE_OFF, "off"); }
TEST(seed_odp) { seed_in_mode(REGCACHE_MODE_ODP, "odp"); }
TEST(seed_auto) { seed_in_mode(REGCACHE_MODE_AUTO, "auto"); }

/* A NULL config reads REGCACHE_MODE and the other variables, as the Rust API does. */
TEST(config_from_environment)
{
	struct regcache *cache = NULL;
	struct rig rig;

	open_rig(&rig);
	setenv("REGCACHE_MODE", "fast", 1);
	ASSERT_EQ(regcache_create(rig.pd, NULL, &cache), -EINVAL);
	ASSERT_EQ(cache, NULL);
	ASSERT_NE(strstr(regcache_last_error(), "REGCACHE_MODE"), NULL);
	setenv("REGCACHE_MODE", "pinned", 1);
	ASSERT_EQ(regcache_create(rig.pd, NULL, &cache), 0);
	ASSERT_EQ(strcmp(regcache_mode(cache), "pinned"), 0);
	ASSERT_EQ(strcmp(regcache_policy(cache), "pinned"), 0);
	ASSERT_EQ(regcache_destroy(cache), 0);
	unsetenv("REGCACHE_MODE");
	ASSERT_EQ(rig_close(&rig), 0);
}

/* The negative control: a naive cache of raw ibv_reg_mr keyed by address. */
struct naive_entry {
	uintptr_t addr;
	size_t len;
	struct ibv_mr *mr;
};

static struct ibv_mr *naive_lookup(struct naive_entry *cache, int *n, struct ibv_pd *pd,
				   void *addr, size_t len)
{
	for (int i = 0; i < *n; i++)
		if (cache[i].addr == (uintptr_t)addr && cache[i].len >= len)
			return cache[i].mr;
	cache[*n] = (struct naive_entry){ (uintptr_t)addr, len, ibv_reg_mr(pd, addr, len, 0) };
	return cache[(*n)++].mr;
}

/* It hands out the old pages' registration after munmap + mmap: the scenario can fail. */
TEST(naive_cache_sends_stale_bytes)
{
	static const size_t sizes[] = { 4 * KIB, MIB };
	struct naive_entry naive[2];
	struct rig_link link;
	struct target target;
	struct rig rig;
	int n = 0;

	open_rig(&rig);
	ASSERT_EQ(rig_link_open(&rig, &link), 0);
	target_open(&rig, &target, MIB);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t len = sizes[i];
		uint8_t *buf = rig_map(NULL, len);
		struct ibv_mr *mr;

		ASSERT_NE(buf, NULL);
		memset(buf, OLD, len);
		mr = naive_lookup(naive, &n, rig.pd, buf, len);
		ASSERT_NE(mr, NULL);
		ASSERT_EQ(send_and_count(&link, &target, buf, mr->lkey, len, OLD), len);
		ASSERT_EQ(munmap(buf, len), 0);
		ASSERT_EQ(rig_map(buf, len), buf);
		memset(buf, NEW, len);
		mr = naive_lookup(naive, &n, rig.pd, buf, len);
		ASSERT_EQ(send_and_count(&link, &target, buf, mr->lkey, len, OLD), len);
		printf("# naive cache, %zu bytes: all %zu bytes delivered are stale\n", len, len);
		munmap(buf, len);
	}
	for (int i = 0; i < n; i++)
		ASSERT_EQ(ibv_dereg_mr(naive[i].mr), 0);
	target_close(&target);
	rig_link_close(&link);
	ASSERT_EQ(rig_close(&rig), 0);
}

/* Eight threads: each registers, writes, checks and releases, over buffers it remaps. */
#define THREADS 8
#define THREAD_BUF (64 * KIB)

struct worker {
	struct rig *rig;
	struct regcache *cache;
	int id, rounds;
	_Atomic int *failures;
	pthread_barrier_t *start;
};

static void *work(void *arg)
{
	struct worker *w = arg;
	struct rig_link link;
	struct ibv_mr *mr;
	uint8_t *buf, *dst;
	int failures = 0;

	if (rig_link_open(w->rig, &link))
		failures++;
	buf = rig_map(NULL, THREAD_BUF);
	dst = rig_map(NULL, THREAD_BUF);
	mr = ibv_reg_mr(w->rig->pd, dst, THREAD_BUF,
			IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	pthread_barrier_wait(w->start);
	for (int round = 0; !failures && mr && buf && round < w->rounds; round++) {
		const struct regcache_region *r;
		uint8_t byte = (uint8_t)('a' + (w->id * 7 + round) % 26);
		size_t len = THREAD_BUF >> (round % 4);

		if (round % 5 == 4) { /* new pages at the same address */
			munmap(buf, THREAD_BUF);
			if (rig_map(buf, THREAD_BUF) != buf) {
				buf = NULL;
				failures++;
				break;
			}
		}
		memset(buf, byte, len);
		memset(dst, 0, len);
		if (regcache_register(w->cache, buf, len, 0, &r)) {
			failures++;
			break;
		}
		if (rig_write(&link, buf, r->lkey, len, dst, mr->rkey) ||
		    rig_count(dst, len, byte) != len) {
			fprintf(stderr, "# thread %d round %d: wrong bytes\n", w->id, round);
			failures++;
		}
		if (regcache_release(w->cache, r))
			failures++;
	}
	if (mr)
		ibv_dereg_mr(mr);
	if (buf)
		munmap(buf, THREAD_BUF);
	munmap(dst, THREAD_BUF);
	rig_link_close(&link);
	*w->failures += failures;
	return NULL;
}

static void threads_in_mode(uint32_t mode)
{
	struct worker workers[THREADS];
	pthread_t threads[THREADS];
	pthread_barrier_t start;
	struct regcache_stats stats;
	struct regcache *cache;
	_Atomic int failures = 0;
	struct rig rig;

	open_rig(&rig);
	ASSERT_EQ(create_cache(&rig, mode, &cache), 0);
	pthread_barrier_init(&start, NULL, THREADS);
	for (int i = 0; i < THREADS; i++) {
		workers[i] = (struct worker){ &rig, cache, i, under_valgrind() ? 10 : 50,
					      &failures, &start };
		ASSERT_EQ(pthread_create(&threads[i], NULL, work, &workers[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(threads[i], NULL);
	pthread_barrier_destroy(&start);
	ASSERT_EQ(regcache_stats(cache, &stats), 0);
	printf("# %s, %d threads: %llu hits, %llu misses, %llu invalidations, %llu duplicate registrations\n",
	       regcache_policy(cache), THREADS, (unsigned long long)stats.hits,
	       (unsigned long long)stats.misses, (unsigned long long)stats.invalidations,
	       (unsigned long long)stats.duplicate_registrations);
	ASSERT_EQ(failures, 0);
	ASSERT_EQ(stats.handles, 0);
	ASSERT_GT(stats.hits, 0);
	/* Each discarded duplicate was made by a miss of its own. */
	ASSERT_LE(stats.duplicate_registrations, stats.misses);
	ASSERT_EQ(regcache_destroy(cache), 0);
	ASSERT_EQ(rig_close(&rig), 0);
}

TEST(eight_threads_pinned) { threads_in_mode(REGCACHE_MODE_PINNED); }

/* flush deregisters idle registrations only; stats count them. */
TEST(flush_keeps_held_registrations)
{
	const struct regcache_region *held, *idle;
	struct regcache_stats stats;
	struct regcache *cache;
	struct rig rig;
	uint8_t *a, *b;

	open_rig(&rig);
	ASSERT_EQ(create_cache(&rig, REGCACHE_MODE_PINNED, &cache), 0);
	a = rig_map(NULL, 4 * KIB);
	b = rig_map(NULL, 4 * KIB);
	ASSERT_EQ(regcache_register(cache, a, 4 * KIB, IBV_ACCESS_LOCAL_WRITE, &held), 0);
	ASSERT_EQ(regcache_register(cache, b, 4 * KIB, IBV_ACCESS_REMOTE_READ, &idle), 0);
	ASSERT_TRUE(held->access & IBV_ACCESS_LOCAL_WRITE);
	ASSERT_TRUE(idle->access & IBV_ACCESS_REMOTE_READ);
	ASSERT_EQ(regcache_release(cache, idle), 0);
	ASSERT_EQ(regcache_stats(cache, &stats), 0);
	ASSERT_EQ(stats.regions, 2);
	ASSERT_EQ(stats.handles, 1);
	ASSERT_EQ(regcache_flush(cache), 1);
	ASSERT_EQ(regcache_stats(cache, &stats), 0);
	ASSERT_EQ(stats.regions, 1);
	ASSERT_EQ(stats.regions_in_use, 1);
	ASSERT_EQ(regcache_release(cache, held), 0);
	ASSERT_EQ(regcache_destroy(cache), 0);
	munmap(a, 4 * KIB);
	munmap(b, 4 * KIB);
	ASSERT_EQ(rig_close(&rig), 0);
}

/* Every bad argument gets an error, never a crash. */
TEST(bad_arguments)
{
	const struct regcache_region *r = NULL, *other_r;
	struct regcache_config config;
	struct regcache_region fake = { 0 };
	struct regcache_stats stats;
	struct regcache *cache, *other;
	long fake_cache = 0;
	struct rig rig;
	uint8_t *buf, *hole;

	open_rig(&rig);
	/* config and create */
	ASSERT_EQ(regcache_config_init(NULL), -EINVAL);
	ASSERT_EQ(regcache_config_init(&config), 0);
	ASSERT_EQ(regcache_create(NULL, &config, &cache), -EINVAL);
	ASSERT_EQ(cache, NULL);
	ASSERT_EQ(regcache_create(rig.pd, &config, NULL), -EINVAL);
	config.mode = 4;
	ASSERT_EQ(regcache_create(rig.pd, &config, &cache), -EINVAL);
	ASSERT_NE(strstr(regcache_last_error(), "mode"), NULL);
	ASSERT_EQ(regcache_config_init(&config), 0);
	config.odp_probe_mtu = 1500;
	ASSERT_EQ(regcache_create(rig.pd, &config, &cache), -EINVAL);
	ASSERT_EQ(regcache_config_init(&config), 0);
	config.reserved[3] = 1;
	ASSERT_EQ(regcache_create(rig.pd, &config, &cache), -EINVAL);
	ASSERT_EQ(create_cache(&rig, REGCACHE_MODE_PINNED, &cache), 0);
	ASSERT_EQ(create_cache(&rig, REGCACHE_MODE_PINNED, &other), 0);

	/* register */
	buf = rig_map(NULL, 2 * 4 * KIB);
	ASSERT_NE(buf, NULL);
	hole = buf + 4 * KIB;
	ASSERT_EQ(munmap(hole, 4 * KIB), 0);
	ASSERT_EQ(regcache_register(NULL, buf, 64, 0, &r), -EINVAL);
	ASSERT_EQ(regcache_register((struct regcache *)&fake_cache, buf, 64, 0, &r), -EINVAL);
	ASSERT_EQ(regcache_register(cache, NULL, 64, 0, &r), -EINVAL);
	ASSERT_EQ(regcache_register(cache, buf, 0, 0, &r), -EINVAL);
	ASSERT_EQ(regcache_register(cache, buf, 64, IBV_ACCESS_MW_BIND, &r), -EINVAL);
	ASSERT_EQ(regcache_register(cache, buf, 64, 0, NULL), -EINVAL);
	ASSERT_EQ(regcache_register(cache, (void *)(UINTPTR_MAX - 64), 4096, 0, &r), -EINVAL);
	ASSERT_EQ(regcache_register(cache, hole, 64, 0, &r), -EFAULT);
	ASSERT_EQ(r, NULL);
	ASSERT_NE(strstr(regcache_last_error(), "regcache_register"), NULL);

	/* release */
	ASSERT_EQ(regcache_register(cache, buf, 64, 0, &r), 0);
	ASSERT_EQ(regcache_register(other, buf, 64, 0, &other_r), 0);
	ASSERT_EQ(regcache_release(NULL, r), -EINVAL);
	ASSERT_EQ(regcache_release(cache, NULL), -EINVAL);
	ASSERT_EQ(regcache_release(cache, &fake), -EINVAL);
	ASSERT_EQ(regcache_release(cache, other_r), -EINVAL);
	ASSERT_EQ(regcache_release(other, other_r), 0);
	ASSERT_EQ(regcache_release(other, other_r), -EINVAL); /* twice */

	/* flush, stats, names */
	ASSERT_EQ(regcache_flush(NULL), -EINVAL);
	ASSERT_EQ(regcache_stats(NULL, &stats), -EINVAL);
	ASSERT_EQ(regcache_stats(cache, NULL), -EINVAL);
	ASSERT_EQ(regcache_mode(NULL), NULL);
	ASSERT_EQ(regcache_policy((struct regcache *)&fake_cache), NULL);

	/* destroy: busy while a handle is live, then once only */
	ASSERT_EQ(regcache_destroy(cache), -EBUSY);
	ASSERT_EQ(regcache_stats(cache, &stats), 0); /* still usable */
	ASSERT_EQ(regcache_release(cache, r), 0);
	ASSERT_EQ(regcache_destroy(cache), 0);
	ASSERT_EQ(regcache_destroy(other), 0);
	ASSERT_EQ(regcache_destroy(other), -EINVAL);
	ASSERT_EQ(regcache_destroy(NULL), -EINVAL);
	ASSERT_EQ(regcache_register(other, buf, 64, 0, &r), -EINVAL);

	/* every code has a sentence */
	ASSERT_EQ(strcmp(regcache_strerror(0), "success"), 0);
	ASSERT_NE(strstr(regcache_strerror(-EBUSY), "handles"), NULL);
	ASSERT_NE(strstr(regcache_strerror(-REGCACHE_EPANIC), "internal"), NULL);
	ASSERT_NE(strstr(regcache_strerror(5), "unknown"), NULL);
	ASSERT_NE(strstr(regcache_strerror(-99999), "unknown"), NULL);
	munmap(buf, 4 * KIB);
	ASSERT_EQ(rig_close(&rig), 0);
}

TEST_HARNESS_MAIN
