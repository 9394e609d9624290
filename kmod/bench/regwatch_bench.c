// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch micro-benchmarks. Under an emulated CPU absolute times mean
 * little, so each figure is printed beside the ratio it is judged by,
 * against a baseline measured in the same run:
 *  - a watch+unwatch pair on an empty table against the cheapest ioctl of
 *    the device (the API handshake) and against getppid(), the cheapest
 *    system call (issue 10: at most 6.5x);
 *  - munmap of a page no watch covers, without watches and with a million
 *    unrelated ones: what watching costs everybody else; the kernel bytes
 *    per watch of that million, and one munmap dirtying all of them;
 *  - draining 10,000 dirty watches with read(), per record against
 *    getppid() (issue 10: at most 0.2x).
 * Sizes can be lowered with REGWATCH_BENCH_WATCHES / REGWATCH_BENCH_ITERS.
 */
#include <sys/syscall.h>

/* A million watches under TCG on a busy host take minutes, not seconds. */
#define TEST_TIMEOUT_SECONDS 900

#include "../tests/regwatch_util.h"

static uint64_t env_or(const char *name, uint64_t fallback)
{
	const char *value = getenv(name);

	return value ? strtoull(value, NULL, 0) : fallback;
}

/* Median of a few batches: robust against the emulator's hiccups. */
#define BATCHES 7

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double median_ns(uint64_t *batch_ns, uint64_t per_batch)
{
	qsort(batch_ns, BATCHES, sizeof(*batch_ns), cmp_u64);
	return (double)batch_ns[BATCHES / 2] / per_batch;
}

/* getppid() through syscall(2): glibc could not cache it anyway. */
static double getppid_ns(uint64_t iters)
{
	uint64_t batch_ns[BATCHES];

	for (int b = 0; b < BATCHES; b++) {
		uint64_t t0 = rw_now_ns();

		for (uint64_t i = 0; i < iters; i++)
			ASSERT_GT(syscall(SYS_getppid), 0);
		batch_ns[b] = rw_now_ns() - t0;
	}
	return median_ns(batch_ns, iters);
}

static double api_ioctl_ns(int fd, uint64_t iters)
{
	uint64_t batch_ns[BATCHES];

	for (int b = 0; b < BATCHES; b++) {
		uint64_t t0 = rw_now_ns();

		for (uint64_t i = 0; i < iters; i++) {
			struct regwatch_api api = { .api = REGWATCH_API };

			ASSERT_EQ(ioctl(fd, REGWATCH_IOC_API, &api), 0);
		}
		batch_ns[b] = rw_now_ns() - t0;
	}
	return median_ns(batch_ns, iters);
}

static double watch_unwatch_ns(int fd, char *page, uint64_t iters)
{
	uint64_t batch_ns[BATCHES];

	for (int b = 0; b < BATCHES; b++) {
		uint64_t t0 = rw_now_ns();

		for (uint64_t i = 0; i < iters; i++) {
			struct regwatch_watch w = rw_watch(fd, page, rw_page(), i);

			ASSERT_EQ(rw_unwatch(fd, w.slot, i), 0);
		}
		batch_ns[b] = rw_now_ns() - t0;
	}
	return median_ns(batch_ns, iters);
}

/* Time munmap alone of a fresh, populated page, far from every watch. */
static double munmap_ns(uint64_t iters)
{
	uint64_t batch_ns[BATCHES];

	for (int b = 0; b < BATCHES; b++) {
		uint64_t spent = 0;

		for (uint64_t i = 0; i < iters; i++) {
			char *p = rw_map_pages(1);
			uint64_t t0 = rw_now_ns();

			ASSERT_EQ(munmap(p, rw_page()), 0);
			spent += rw_now_ns() - t0;
		}
		batch_ns[b] = spent;
	}
	return median_ns(batch_ns, iters);
}

TEST(watch_unwatch_against_api_ioctl_and_getppid)
{
	uint64_t iters = env_or("REGWATCH_BENCH_ITERS", 20000);
	int fd = rw_open(0);
	char *page = rw_map_pages(1);
	double ppid = getppid_ns(iters);
	double api = api_ioctl_ns(fd, iters);
	double pair = watch_unwatch_ns(fd, page, iters);

	printf("regwatch-bench: getppid %.0f ns; API ioctl %.0f ns; watch+unwatch pair on an empty table %.0f ns; ratio to API %.2f (target <= 3); ratio to getppid %.2f (target <= 6.5)\n",
	       ppid, api, pair, pair / api, pair / ppid);
	close(fd);
}

TEST(munmap_with_unrelated_watches)
{
	uint64_t iters = env_or("REGWATCH_BENCH_ITERS", 20000) / 4;
	uint64_t watches = env_or("REGWATCH_BENCH_WATCHES", 1000000);
	long page = rw_page(), kb0, kb1;
	double before, with, after;
	uint64_t t0, dirtying_ns;
	char *reserved;
	int fd;

	before = munmap_ns(iters);
	fd = rw_open(0);
	rw_allow_user_watches(watches);
	reserved = mmap(NULL, watches * page, PROT_NONE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT_NE(reserved, MAP_FAILED);
	kb0 = rw_kernel_kb();
	rw_set_capacity(fd, watches);
	for (uint64_t i = 0; i < watches; i++)
		rw_watch(fd, reserved + i * page, page, i);
	kb1 = rw_kernel_kb();
	with = munmap_ns(iters);
	t0 = rw_now_ns();
	ASSERT_EQ(munmap(reserved, watches * page), 0);
	dirtying_ns = rw_now_ns() - t0;
	close(fd);
	after = munmap_ns(iters);
	printf("regwatch-bench: %llu watches: %.1f kernel bytes per watch (Slab+VmallocUsed)\n",
	       (unsigned long long)watches, (kb1 - kb0) * 1024.0 / watches);
	printf("regwatch-bench: munmap of an unwatched page: %.0f ns before, %.0f ns with %llu unrelated watches, %.0f ns after; ratio %.3f (target <= 1.05)\n",
	       before, with, (unsigned long long)watches, after,
	       with / ((before + after) / 2));
	printf("regwatch-bench: one munmap dirtying %llu watches: %.3f s\n",
	       (unsigned long long)watches, dirtying_ns / 1e9);
}

/* ns to drain @watches dirty watches of a fresh fd into @records. */
static uint64_t drain_once(struct regwatch_record *records, uint64_t watches)
{
	int fd = rw_open(O_NONBLOCK);
	char *area = rw_map_pages(watches);
	uint64_t t0;
	int drained;

	for (uint64_t i = 0; i < watches; i++)
		rw_watch(fd, area + i * rw_page(), rw_page(), i);
	ASSERT_EQ(munmap(area, watches * rw_page()), 0);
	t0 = rw_now_ns();
	drained = rw_drain(fd, records, watches);
	t0 = rw_now_ns() - t0;
	ASSERT_EQ(drained, (int)watches);
	close(fd);
	return t0;
}

/*
 * The records land in a buffer that is already faulted in, as a client's
 * reused drain buffer is: the figure is the module's, not first-touch page
 * faults of the buffer.
 */
TEST(drain_ten_thousand_dirty_watches)
{
	const uint64_t watches = 10000;
	uint64_t iters = env_or("REGWATCH_BENCH_ITERS", 20000);
	struct regwatch_record *records = calloc(watches, sizeof(*records));
	uint64_t batch_ns[BATCHES];
	double ppid, per_record;

	ASSERT_TRUE(records != NULL);
	memset(records, 0xff, watches * sizeof(*records));
	ppid = getppid_ns(iters);
	for (int b = 0; b < BATCHES; b++)
		batch_ns[b] = drain_once(records, watches);
	per_record = median_ns(batch_ns, watches);
	printf("regwatch-bench: drained %llu dirty watches in %.0f us: %.0f ns per record; getppid %.0f ns; ratio to getppid %.3f (target <= 0.2)\n",
	       (unsigned long long)watches, per_record * watches / 1e3,
	       per_record, ppid, per_record / ppid);
	free(records);
}

TEST_HARNESS_MAIN
