// SPDX-License-Identifier: GPL-2.0
/*
 * A million watches on one fd (REGWATCH_SCALE_WATCHES overrides): kernel
 * bytes per watch from /proc/meminfo Slab + VmallocUsed, ns per watch,
 * per dirtying munmap, per record read and per unwatch. Every watch must
 * be reported exactly once after one munmap of the whole area.
 */
#include "regwatch_util.h"

/* The design's budget: slab + vmalloc per watch. */
#define MAX_BYTES_PER_WATCH 128

TEST(million_watches)
{
	const char *env = getenv("REGWATCH_SCALE_WATCHES");
	uint64_t n = env ? strtoull(env, NULL, 0) : 1000000;
	struct regwatch_record *rec;
	struct regwatch_status *st;
	uint64_t t0, t_watch, t_unmap, t_read, t_unwatch, reported = 0;
	long page = rw_page(), kb0, kb1, watches0;
	uint8_t *seen;
	char *area;
	int fd;

	fd = rw_open(O_NONBLOCK);
	if ((uint64_t)rw_module_counter("max_slots") < n)
		SKIP(, "max_slots below %llu", (unsigned long long)n);
	rw_allow_user_watches(n);
	watches0 = rw_module_counter("live_watches");
	area = mmap(NULL, n * page, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT_NE(area, MAP_FAILED);
	seen = calloc(n, 1);
	rec = calloc(4096, sizeof(*rec));
	ASSERT_TRUE(seen && rec);

	kb0 = rw_kernel_kb();
	rw_set_capacity(fd, n);
	st = rw_map_status(fd, n);
	t0 = rw_now_ns();
	for (uint64_t i = 0; i < n; i++) {
		struct regwatch_watch w;

		ASSERT_EQ(rw_try_watch(fd, area + i * page, page, i, &w), 0);
		ASSERT_EQ(w.slot, i);
	}
	t_watch = rw_now_ns() - t0;
	kb1 = rw_kernel_kb();
	ASSERT_EQ(rw_module_counter("live_watches"), watches0 + (long)n);

	t0 = rw_now_ns();
	ASSERT_EQ(munmap(area, n * page), 0);
	t_unmap = rw_now_ns() - t0;
	ASSERT_EQ(st->dirty_unread, n);
	ASSERT_EQ(st->generation, n);

	t0 = rw_now_ns();
	for (;;) {
		ssize_t r = read(fd, rec, 4096 * sizeof(*rec));

		if (r < 0) {
			ASSERT_EQ(errno, EAGAIN);
			break;
		}
		for (ssize_t i = 0; i < r / (ssize_t)sizeof(*rec); i++) {
			ASSERT_LT(rec[i].cookie, n);
			ASSERT_EQ(seen[rec[i].cookie], 0);
			ASSERT_EQ(rec[i].reason, REGWATCH_REASON_UNMAP);
			seen[rec[i].cookie] = 1;
			reported++;
		}
	}
	t_read = rw_now_ns() - t0;
	ASSERT_EQ(reported, n);

	t0 = rw_now_ns();
	for (uint64_t i = 0; i < n; i++)
		ASSERT_EQ(rw_unwatch(fd, i, i), 0);
	t_unwatch = rw_now_ns() - t0;
	ASSERT_EQ(rw_module_counter("live_watches"), watches0);

	printf("# %llu watches: %.1f kernel bytes/watch (Slab+VmallocUsed +%ld kB)\n",
	       (unsigned long long)n, (kb1 - kb0) * 1024.0 / n, kb1 - kb0);
	printf("# ns/watch %.0f, ns/watch dirtied by munmap %.0f, ns/record read %.0f, ns/unwatch %.0f\n",
	       (double)t_watch / n, (double)t_unmap / n, (double)t_read / n,
	       (double)t_unwatch / n);
	close(fd);
	ASSERT_LE((kb1 - kb0) * 1024 / (long)n, MAX_BYTES_PER_WATCH);
}

/* close() with a million live watches must free them all. */
TEST(million_watches_freed_by_close)
{
	const char *env = getenv("REGWATCH_SCALE_WATCHES");
	uint64_t n = env ? strtoull(env, NULL, 0) : 1000000;
	long page = rw_page(), kb0, watches0;
	uint64_t t0;
	char *area;
	int fd;

	fd = rw_open(0);
	if ((uint64_t)rw_module_counter("max_slots") < n)
		SKIP(, "max_slots below %llu", (unsigned long long)n);
	rw_allow_user_watches(n);
	watches0 = rw_module_counter("live_watches");
	area = mmap(NULL, n * page, PROT_NONE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT_NE(area, MAP_FAILED);
	kb0 = rw_kernel_kb();
	rw_set_capacity(fd, n);
	for (uint64_t i = 0; i < n; i++) {
		struct regwatch_watch w;

		ASSERT_EQ(rw_try_watch(fd, area + i * page, page, i, &w), 0);
	}
	t0 = rw_now_ns();
	close(fd);
	ASSERT_EQ(rw_wait_counter("live_watches", watches0), watches0);
	printf("# close() with %llu watches: %.0f ns/watch; kernel kB left: %ld\n",
	       (unsigned long long)n, (double)(rw_now_ns() - t0) / n,
	       rw_kernel_kb() - kb0);
	/* a few MB of slack: unrelated slab activity during the test */
	ASSERT_LT((rw_kernel_kb() - kb0) * 1024 / (long)n, 8);
}

TEST_HARNESS_MAIN
