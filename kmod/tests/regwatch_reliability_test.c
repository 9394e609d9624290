// SPDX-License-Identifier: GPL-2.0
/*
 * Failed calls change nothing, the status area can be neither emptied nor
 * handed to a fork child, and readv() returns what is pending.
 */
#include <setjmp.h>
#include <sys/uio.h>

#include "regwatch_util.h"

/* A zeroed page that the test fills and then makes read-only. */
static void *rw_page_buffer(void)
{
	void *p = mmap(NULL, rw_page(), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(p, MAP_FAILED);
	return p;
}

static void rw_make_read_only(void *p)
{
	ASSERT_EQ(mprotect(p, rw_page(), PROT_READ), 0);
}

TEST(watch_with_read_only_argument_changes_nothing)
{
	int fd = rw_open(O_NONBLOCK);
	char *p = rw_map_pages(1);
	struct regwatch_watch *w = rw_page_buffer();
	struct regwatch_status *st;
	long watches0 = rw_module_counter("live_watches");
	struct regwatch_watch good;

	rw_set_capacity(fd, 4);
	st = rw_map_status(fd, 4);
	w->start = (uintptr_t)p;
	w->length = rw_page();
	w->cookie = 7;
	rw_make_read_only(w);
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_WATCH, w), EFAULT);
	EXPECT_EQ(st->total_watched, 0);
	EXPECT_EQ(st->total_unwatched, 0);
	EXPECT_EQ(rw_word(st, 0), 0);
	EXPECT_EQ(rw_module_counter("live_watches"), watches0);
	/* no slot and no seq were consumed */
	good = rw_watch(fd, p, rw_page(), 8);
	EXPECT_EQ(good.slot, 0);
	EXPECT_EQ(good.seq, 2);
	EXPECT_EQ(st->total_watched, 1);
	EXPECT_EQ(st->total_unwatched, 0);
	close(fd);
}

TEST(set_capacity_with_read_only_argument_fixes_nothing)
{
	int fd = rw_open(0);
	struct regwatch_capacity *cap = rw_page_buffer();
	struct regwatch_status *st;

	cap->slots = 3;
	rw_make_read_only(cap);
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_SET_CAPACITY, cap), EFAULT);
	/* still free to choose */
	rw_set_capacity(fd, 5);
	st = rw_map_status(fd, 5);
	EXPECT_EQ(st->nslots, 5);
	close(fd);
}

TEST(api_with_read_only_argument_enables_nothing)
{
	int fd = rw_open(0);
	struct regwatch_api *api = rw_page_buffer();
	struct regwatch_api plain = { .api = REGWATCH_API };

	if (rw_module_strict())
		SKIP(close(fd), "module parameter strict=1 forces strict mode");
	api->api = REGWATCH_API;
	api->features = REGWATCH_FEATURE_STRICT;
	rw_make_read_only(api);
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_API, api), EFAULT);
	ASSERT_EQ(ioctl(fd, REGWATCH_IOC_API, &plain), 0);
	EXPECT_EQ(plain.features, 0);
	close(fd);
}

TEST(refused_mmap_fixes_no_capacity)
{
	int fd = rw_open(0);
	uint64_t size = REGWATCH_STATUS_SIZE(rw_module_counter("default_slots"),
					     rw_page());
	struct regwatch_status *st;

	ASSERT_ERRNO((long)mmap(NULL, size + rw_page(), PROT_READ, MAP_SHARED,
				fd, 0), EINVAL);
	ASSERT_ERRNO((long)mmap(NULL, size, PROT_READ, MAP_SHARED, fd,
				rw_page()), EINVAL);
	ASSERT_ERRNO((long)mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0),
		     EINVAL);
	ASSERT_ERRNO((long)mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED,
				fd, 0), EPERM);
	rw_set_capacity(fd, 7);
	st = rw_map_status(fd, 7);
	EXPECT_EQ(st->nslots, 7);
	close(fd);
}

static sigjmp_buf fault_jmp;

static void on_fault(int sig)
{
	siglongjmp(fault_jmp, sig);
}

/* Loads every word of the area; a signal fails the test. */
static uint64_t sum_status(const struct regwatch_status *st, uint64_t size)
{
	const volatile uint64_t *word = (const volatile uint64_t *)st;
	uint64_t sum = 0;
	int sig;

	signal(SIGBUS, on_fault);
	signal(SIGSEGV, on_fault);
	sig = sigsetjmp(fault_jmp, 1);
	if (sig) {
		TH_LOG("reading the status area raised signal %d", sig);
		th_fail(true);
	}
	for (uint64_t i = 0; i < size / sizeof(*word); i++)
		sum += word[i];
	signal(SIGBUS, SIG_DFL);
	signal(SIGSEGV, SIG_DFL);
	return sum;
}

/* Refused or harmless: after any advice, every word still reads right. */
TEST(status_area_survives_every_madvise)
{
	static const int advice[] = {
		MADV_DONTNEED, MADV_FREE, MADV_REMOVE, MADV_COLD,
		MADV_PAGEOUT, MADV_DONTNEED_LOCKED, MADV_WILLNEED,
	};
	enum { slots = 2000 };	/* words on four pages */
	int fd = rw_open(0);
	uint64_t size = rw_set_capacity(fd, slots), before;
	char *p = rw_map_pages(1);
	struct regwatch_status *st = rw_map_status(fd, slots);
	static struct regwatch_watch w[slots];

	for (uint64_t i = 0; i < slots; i++)
		w[i] = rw_watch(fd, p, 1, i);
	before = sum_status(st, size);
	for (unsigned int i = 0; i < sizeof(advice) / sizeof(advice[0]); i++) {
		int ret = madvise(st, size, advice[i]);

		TH_LOG("madvise(status, %d): %s", advice[i],
		       ret ? strerror(errno) : "accepted");
		EXPECT_EQ(sum_status(st, size), before);
		EXPECT_EQ(st->nslots, slots);
		EXPECT_EQ(rw_word(st, slots - 1), w[slots - 1].seq);
	}
	/* the mapping still follows the watches */
	ASSERT_EQ(munmap(p, rw_page()), 0);
	EXPECT_EQ(rw_word(st, slots - 1), w[slots - 1].seq | REGWATCH_SEQ_DIRTY);
	EXPECT_EQ(st->dirty_unread, slots);
	close(fd);
}

/* Whatever MADV_DOFORK answers, a fork child has no status area. */
TEST(status_area_never_reaches_a_fork_child)
{
	int fd = rw_open(0), status;
	uint64_t size = rw_set_capacity(fd, 600);
	struct regwatch_status *st = rw_map_status(fd, 600);
	pid_t pid;
	int ret;

	rw_watch(fd, rw_map_pages(1), 1, 1);
	ret = madvise(st, size, MADV_DOFORK);
	TH_LOG("madvise(status, MADV_DOFORK): %s",
	       ret ? strerror(errno) : "accepted");
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		volatile uint64_t word;

		signal(SIGSEGV, on_fault);
		signal(SIGBUS, on_fault);
		if (sigsetjmp(fault_jmp, 1))
			_exit(0);
		word = st->abi_version;
		word += rw_word(st, 0);
		(void)word;
		_exit(3);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
		TH_LOG("the fork child read the parent's status area");
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(fd);
}

static void on_alarm(int sig)
{
	(void)sig;
}

/* A blocking readv() with room for two records and one pending. */
TEST(readv_returns_what_is_pending)
{
	int fd = rw_open(0);
	struct regwatch_record rec[3];
	char *p = rw_map_pages(3);
	struct iovec iov[2];
	struct sigaction sa = { .sa_handler = on_alarm };
	char bytes[3 * sizeof(rec[0])];
	ssize_t got;

	rw_set_capacity(fd, 8);
	for (int i = 0; i < 3; i++)
		rw_watch(fd, p + i * rw_page(), 1, 40 + i);
	ASSERT_EQ(munmap(p, rw_page()), 0);
	/* a blocked read ends with EINTR instead of hanging the test */
	ASSERT_EQ(sigaction(SIGALRM, &sa, NULL), 0);
	alarm(10);
	iov[0] = (struct iovec){ &rec[0], sizeof(rec[0]) };
	iov[1] = (struct iovec){ &rec[1], sizeof(rec[0]) };
	got = readv(fd, iov, 2);
	alarm(0);
	if (got < 0)
		TH_LOG("readv: %s", strerror(errno));
	ASSERT_EQ(got, sizeof(rec[0]));
	EXPECT_EQ(rec[0].cookie, 40);

	/* records run on across iovecs, whatever their sizes */
	ASSERT_EQ(munmap(p + rw_page(), 2 * rw_page()), 0);
	iov[0] = (struct iovec){ bytes, 30 };
	iov[1] = (struct iovec){ bytes + 30, sizeof(bytes) - 30 };
	ASSERT_EQ(readv(fd, iov, 2), 2 * sizeof(rec[0]));
	memcpy(rec, bytes, 2 * sizeof(rec[0]));
	EXPECT_EQ(rec[0].cookie, 41);
	EXPECT_EQ(rec[1].cookie, 42);

	/* less than one record in all iovecs together */
	iov[0] = (struct iovec){ bytes, 20 };
	iov[1] = (struct iovec){ bytes + 20, 20 };
	ASSERT_ERRNO(readv(fd, iov, 2), EINVAL);
	close(fd);
}

TEST_HARNESS_MAIN
