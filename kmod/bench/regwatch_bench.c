// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch micro-benchmarks. Under an emulated CPU absolute times mean
 * little, so each figure is printed beside the ratio it is judged by,
 * against a baseline measured in the same run, interleaved with it batch
 * by batch (the median of the per-batch ratios):
 *  - a watch+unwatch pair on an empty table against the cheapest ioctl of
 *    the device (the API handshake) and against getppid(), the cheapest
 *    system call (issue 10: at most 6.5x); beside it the floor of any pair
 *    of calls (two ioctls the device rejects with ENOTTY) and the same
 *    work in one call (REGWATCH_WATCH_UNWATCH, a cache's eviction), of the
 *    same range and of another range each time, each against getppid();
 *  - munmap of a page no watch covers, in a process without watches and
 *    in one with a million unrelated ones: what watching costs everybody
 *    else; the kernel bytes per watch of that million, and one munmap
 *    dirtying all of them;
 *  - draining 10,000 dirty watches with read(), per record against
 *    getppid() (issue 10: at most 0.2x).
 * Sizes can be lowered with REGWATCH_BENCH_WATCHES / REGWATCH_BENCH_ITERS.
 */
#include <sys/syscall.h>
#include <sys/wait.h>

/* A million watches under TCG on a busy host take minutes, not seconds. */
#define TEST_TIMEOUT_SECONDS 900

#include "../tests/regwatch_util.h"

static uint64_t env_or(const char *name, uint64_t fallback)
{
	const char *value = getenv(name);

	return value ? strtoull(value, NULL, 0) : fallback;
}

/*
 * Median of a few batches: robust against the emulator's hiccups. Ratios
 * against a baseline are taken per batch, the baseline's batch run right
 * before or after the measured one (alternately, so neither always runs
 * first), so that host load moving between batches moves both alike.
 */
#define BATCHES 15

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *values, int count)
{
	qsort(values, count, sizeof(*values), cmp_double);
	return values[count / 2];
}

/* ns per getppid(), through syscall(2): glibc could not cache it anyway. */
static double getppid_ns(uint64_t iters)
{
	uint64_t t0 = rw_now_ns();

	for (uint64_t i = 0; i < iters; i++)
		ASSERT_GT(syscall(SYS_getppid), 0);
	return (double)(rw_now_ns() - t0) / iters;
}

/* ns per API handshake ioctl, the device's cheapest call. */
static double api_ioctl_ns(int fd, uint64_t iters)
{
	uint64_t t0 = rw_now_ns();

	for (uint64_t i = 0; i < iters; i++) {
		struct regwatch_api api = { .api = REGWATCH_API };

		ASSERT_EQ(ioctl(fd, REGWATCH_IOC_API, &api), 0);
	}
	return (double)(rw_now_ns() - t0) / iters;
}

/*
 * ns per two ioctls the device rejects (ENOTTY) after its dispatch: the
 * system calls' own cost (fd lookup, security hooks, do_vfs_ioctl), the
 * floor of any pair of calls.
 */
static double unknown_ioctl_pair_ns(int fd, uint64_t iters)
{
	uint64_t t0 = rw_now_ns();

	for (uint64_t i = 0; i < iters; i++) {
		ASSERT_ERRNO(ioctl(fd, _IO(REGWATCH_IOC_MAGIC, 0x7f), 0), ENOTTY);
		ASSERT_ERRNO(ioctl(fd, _IO(REGWATCH_IOC_MAGIC, 0x7f), 0), ENOTTY);
	}
	return (double)(rw_now_ns() - t0) / iters;
}

/* ns per watch+unwatch pair of one page on an otherwise empty table. */
static double watch_unwatch_ns(int fd, char *page, uint64_t iters)
{
	uint64_t t0 = rw_now_ns();

	for (uint64_t i = 0; i < iters; i++) {
		struct regwatch_watch w = rw_watch(fd, page, rw_page(), i);

		ASSERT_EQ(rw_unwatch(fd, w.slot, i), 0);
	}
	return (double)(rw_now_ns() - t0) / iters;
}

/*
 * ns per watch+unwatch in one call (REGWATCH_WATCH_UNWATCH): iteration i
 * watches page i % @ranges of @pages with cookie i in place of the watch
 * of cookie i - 1, so the table holds one watch throughout, as in the pair
 * above. With one range the victim hands its notifier over; with two,
 * each call removes the victim's notifier and inserts one for the other
 * page.
 */
static double fused_watch_unwatch_ns(int fd, char *pages, int ranges,
				     uint64_t iters)
{
	struct regwatch_watch w = rw_watch(fd, pages, rw_page(), 0);
	uint64_t t0 = rw_now_ns();
	double ns;

	for (uint64_t i = 1; i <= iters; i++)
		ASSERT_EQ(rw_instead(fd, w.slot, i - 1,
				     pages + (i % ranges) * rw_page(),
				     rw_page(), i, &w),
			  0);
	ns = (double)(rw_now_ns() - t0) / iters;
	ASSERT_EQ(rw_unwatch(fd, w.slot, iters), 0);
	return ns;
}

/* ns per munmap alone of a fresh, populated page, far from every watch. */
static double munmap_ns(uint64_t iters)
{
	uint64_t spent = 0;

	for (uint64_t i = 0; i < iters; i++) {
		char *p = rw_map_pages(1);
		uint64_t t0 = rw_now_ns();

		ASSERT_EQ(munmap(p, rw_page()), 0);
		spent += rw_now_ns() - t0;
	}
	return (double)spent / iters;
}

/*
 * A process that times a batch of munmap_ns(@iters) in its own address
 * space, which no watch ever covers, each time a byte arrives on @go; the
 * figure goes back on @result. Ends when @go is closed.
 */
static pid_t start_unwatched_munmapper(int go[2], int result[2],
				       uint64_t iters)
{
	pid_t pid;
	char byte;

	ASSERT_EQ(pipe(go), 0);
	ASSERT_EQ(pipe(result), 0);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (pid)
		return pid;
	close(go[1]);
	close(result[0]);
	while (read(go[0], &byte, 1) == 1) {
		double ns = munmap_ns(iters);

		if (write(result[1], &ns, sizeof(ns)) != sizeof(ns))
			_exit(1);
	}
	_exit(0);
}

static double unwatched_munmap_ns(int go[2], int result[2])
{
	double ns;

	ASSERT_EQ(write(go[1], "b", 1), 1);
	ASSERT_EQ(read(result[0], &ns, sizeof(ns)), (ssize_t)sizeof(ns));
	return ns;
}

/*
 * Each batch times getppid(), the API ioctl, two unknown ioctls, the pair
 * and the fused pair of the same range and of alternating ranges back to
 * back, in an order that rotates from batch to batch.
 */
TEST(watch_unwatch_against_api_ioctl_and_getppid)
{
	enum { GETPPID, API, UNKNOWN_PAIR, PAIR, FUSED, FUSED_MOVING, KINDS };
	uint64_t iters = env_or("REGWATCH_BENCH_ITERS", 20000) / 10;
	int fd = rw_open(0);
	char *page = rw_map_pages(2);
	double ns[KINDS][BATCHES], to_api[BATCHES], to_ppid[KINDS][BATCHES];

	for (int b = 0; b < BATCHES; b++) {
		for (int k = 0; k < KINDS; k++) {
			int kind = (b + k) % KINDS;
			double *at = &ns[kind][b];

			switch (kind) {
			case GETPPID:
				*at = getppid_ns(iters);
				break;
			case API:
				*at = api_ioctl_ns(fd, iters);
				break;
			case UNKNOWN_PAIR:
				*at = unknown_ioctl_pair_ns(fd, iters);
				break;
			case PAIR:
				*at = watch_unwatch_ns(fd, page, iters);
				break;
			case FUSED:
				*at = fused_watch_unwatch_ns(fd, page, 1, iters);
				break;
			default:
				*at = fused_watch_unwatch_ns(fd, page, 2, iters);
			}
		}
		to_api[b] = ns[PAIR][b] / ns[API][b];
		for (int kind = 0; kind < KINDS; kind++)
			to_ppid[kind][b] = ns[kind][b] / ns[GETPPID][b];
	}
	printf("regwatch-bench: %d batches of %llu, medians: getppid %.0f ns; API ioctl %.0f ns; two unknown ioctls (the floor of any pair of calls) %.0f ns; watch+unwatch pair on an empty table %.0f ns; watch+unwatch in one call (REGWATCH_WATCH_UNWATCH) %.0f ns, of another range each time %.0f ns; per-batch ratio of the pair to API %.2f (target <= 3); per-batch ratios to getppid: floor %.2f, pair %.2f (target <= 6.5), one call %.2f, of another range %.2f\n",
	       BATCHES, (unsigned long long)iters, median(ns[GETPPID], BATCHES),
	       median(ns[API], BATCHES), median(ns[UNKNOWN_PAIR], BATCHES),
	       median(ns[PAIR], BATCHES), median(ns[FUSED], BATCHES),
	       median(ns[FUSED_MOVING], BATCHES), median(to_api, BATCHES),
	       median(to_ppid[UNKNOWN_PAIR], BATCHES),
	       median(to_ppid[PAIR], BATCHES), median(to_ppid[FUSED], BATCHES),
	       median(to_ppid[FUSED_MOVING], BATCHES));
	close(fd);
}

/*
 * What a million watches cost munmaps they do not cover: batches of
 * munmaps in this process (the watches' address space) alternate with
 * batches in a child forked before any watch (an address space without
 * any), and the figure is the median of the per-batch ratios.
 */
TEST(munmap_with_unrelated_watches)
{
	uint64_t iters = env_or("REGWATCH_BENCH_ITERS", 20000) / 10;
	uint64_t watches = env_or("REGWATCH_BENCH_WATCHES", 1000000);
	double without[BATCHES], with[BATCHES], ratio[BATCHES];
	long page = rw_page(), kb0, kb1;
	int go[2], result[2], status;
	uint64_t t0, dirtying_ns;
	char *reserved;
	pid_t child;
	int fd;

	child = start_unwatched_munmapper(go, result, iters);
	close(go[0]);
	close(result[1]);
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
	for (int b = 0; b < BATCHES; b++) {
		if (b % 2) {
			with[b] = munmap_ns(iters);
			without[b] = unwatched_munmap_ns(go, result);
		} else {
			without[b] = unwatched_munmap_ns(go, result);
			with[b] = munmap_ns(iters);
		}
		ratio[b] = with[b] / without[b];
	}
	close(go[1]);
	ASSERT_EQ(waitpid(child, &status, 0), child);
	ASSERT_EQ(status, 0);
	t0 = rw_now_ns();
	ASSERT_EQ(munmap(reserved, watches * page), 0);
	dirtying_ns = rw_now_ns() - t0;
	close(fd);
	printf("regwatch-bench: %llu watches: %.1f kernel bytes per watch (Slab+VmallocUsed)\n",
	       (unsigned long long)watches, (kb1 - kb0) * 1024.0 / watches);
	printf("regwatch-bench: munmap of an unwatched page, %d batches of %llu, medians: %.0f ns in a process without watches, %.0f ns beside %llu unrelated watches; per-batch ratio %.3f (target <= 1.05)\n",
	       BATCHES, (unsigned long long)iters, median(without, BATCHES),
	       median(with, BATCHES), (unsigned long long)watches,
	       median(ratio, BATCHES));
	printf("regwatch-bench: one munmap dirtying %llu watches: %.3f s\n",
	       (unsigned long long)watches, dirtying_ns / 1e9);
}

/* A fresh fd with @watches dirty watches, one page each. */
static int dirty_fd(uint64_t watches)
{
	int fd = rw_open(O_NONBLOCK);
	char *area = rw_map_pages(watches);

	for (uint64_t i = 0; i < watches; i++)
		rw_watch(fd, area + i * rw_page(), rw_page(), i);
	ASSERT_EQ(munmap(area, watches * rw_page()), 0);
	return fd;
}

/* ns per record to drain @watches dirty watches of @fd into @records. */
static double drain_ns(int fd, struct regwatch_record *records,
		       uint64_t watches)
{
	uint64_t t0 = rw_now_ns();

	ASSERT_EQ(rw_drain(fd, records, watches), (int)watches);
	return (double)(rw_now_ns() - t0) / watches;
}

/*
 * The records land in a buffer that is already faulted in, as a client's
 * reused drain buffer is: the figure is the module's, not first-touch page
 * faults of the buffer. Each batch is one fresh fd drained beside a batch
 * of getppid() calls, in alternating order.
 */
TEST(drain_ten_thousand_dirty_watches)
{
	const uint64_t watches = 10000;
	uint64_t iters = env_or("REGWATCH_BENCH_ITERS", 20000) / 10;
	struct regwatch_record *records = calloc(watches, sizeof(*records));
	double ppid[BATCHES], per_record[BATCHES], ratio[BATCHES];

	ASSERT_TRUE(records != NULL);
	memset(records, 0xff, watches * sizeof(*records));
	for (int b = 0; b < BATCHES; b++) {
		int fd = dirty_fd(watches);

		if (b % 2) {
			per_record[b] = drain_ns(fd, records, watches);
			ppid[b] = getppid_ns(iters);
		} else {
			ppid[b] = getppid_ns(iters);
			per_record[b] = drain_ns(fd, records, watches);
		}
		ratio[b] = per_record[b] / ppid[b];
		close(fd);
	}
	printf("regwatch-bench: %d batches of %llu dirty watches, medians: %.0f ns per record; getppid %.0f ns; per-batch ratio to getppid %.3f (target <= 0.2)\n",
	       BATCHES, (unsigned long long)watches, median(per_record, BATCHES),
	       median(ppid, BATCHES), median(ratio, BATCHES));
	free(records);
}

TEST_HARNESS_MAIN
