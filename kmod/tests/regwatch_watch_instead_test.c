// SPDX-License-Identifier: GPL-2.0
/*
 * REGWATCH_IOC_WATCH with REGWATCH_WATCH_UNWATCH: one call unwatches a
 * victim and watches a range in its slot. Success is exactly an unwatch
 * followed by a watch (counters, seq, records); any failure leaves the fd
 * as it was.
 */
#include <errno.h>
#include <pthread.h>

#include "regwatch_util.h"

#define SLOTS 4

struct instead_fd {
	int fd;
	struct regwatch_status *st;
};

static struct instead_fd instead_open(void)
{
	struct instead_fd f = { .fd = rw_open(O_NONBLOCK) };

	rw_set_capacity(f.fd, SLOTS);
	f.st = rw_map_status(f.fd, SLOTS);
	return f;
}

static uint64_t user_watches(int fd)
{
	struct regwatch_api api = { .api = REGWATCH_API };

	ASSERT_EQ(ioctl(fd, REGWATCH_IOC_API, &api), 0);
	return api.user_watches;
}

/* Dirties every watch of @p's page without unmapping it. */
static void dirty_page(char *p)
{
	ASSERT_EQ(madvise(p, rw_page(), MADV_DONTNEED), 0);
}

/*
 * A victim of another range, dirty and not yet read: its slot word goes to
 * the new seq, its record is never read, the old range is no longer
 * watched and the new one is.
 */
TEST(watch_instead_other_range_drops_the_victims_record)
{
	struct instead_fd f = instead_open();
	char *p = rw_map_pages(3);
	struct regwatch_record rec[4];
	struct regwatch_watch a, b, n;
	uint64_t users;

	a = rw_watch(f.fd, p, 1, 1);
	b = rw_watch(f.fd, p + rw_page(), 1, 2);
	users = user_watches(f.fd);
	dirty_page(p);
	ASSERT_EQ(f.st->dirty_unread, 1);
	ASSERT_EQ(rw_instead(f.fd, a.slot, 1, p + 2 * rw_page(), 1, 3, &n), 0);
	EXPECT_EQ(n.slot, a.slot);
	EXPECT_EQ(n.seq, b.seq + 2);
	EXPECT_EQ(rw_word(f.st, n.slot), n.seq);
	EXPECT_EQ(rw_word(f.st, b.slot), b.seq);
	EXPECT_EQ(f.st->dirty_unread, 0);
	EXPECT_EQ(f.st->total_watched, 3);
	EXPECT_EQ(f.st->total_unwatched, 1);
	EXPECT_EQ(user_watches(f.fd), users);
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 0);
	/* the victim's range is free, the new one watched */
	dirty_page(p);
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 0);
	dirty_page(p + 2 * rw_page());
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 1);
	EXPECT_EQ(rec[0].cookie, 3);
	EXPECT_EQ(rec[0].seq, n.seq);
	EXPECT_EQ(rec[0].slot, n.slot);
	EXPECT_EQ(rec[0].start, (uintptr_t)p + 2 * rw_page());
	/* the victim's pair is gone for good, the new watch unwatches */
	ASSERT_ERRNO(rw_unwatch(f.fd, a.slot, 1), EINVAL);
	ASSERT_EQ(rw_unwatch(f.fd, n.slot, 3), 0);
	close(f.fd);
}

/*
 * A victim of the same range, pending or already read: the new watch
 * starts clean with its own seq, and only its own events are reported.
 */
TEST(watch_instead_same_range_starts_clean)
{
	struct instead_fd f = instead_open();
	char *p = rw_map_pages(1);
	struct regwatch_record rec[4];
	struct regwatch_watch a, n, m;

	a = rw_watch(f.fd, p, 1, 1);
	dirty_page(p);
	ASSERT_EQ(rw_instead(f.fd, a.slot, 1, p, rw_page(), 2, &n), 0);
	EXPECT_EQ(n.slot, a.slot);
	EXPECT_EQ(n.seq, a.seq + 2);
	EXPECT_EQ(rw_word(f.st, n.slot), n.seq);
	EXPECT_EQ(f.st->dirty_unread, 0);
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 0);
	dirty_page(p);
	ASSERT_EQ(rw_word(f.st, n.slot), n.seq | REGWATCH_SEQ_DIRTY);
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 1);
	EXPECT_EQ(rec[0].cookie, 2);
	EXPECT_EQ(rec[0].seq, n.seq);
	/* a victim already reported */
	ASSERT_EQ(rw_instead(f.fd, n.slot, 2, p, 1, 3, &m), 0);
	EXPECT_EQ(rw_word(f.st, m.slot), m.seq);
	dirty_page(p);
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 1);
	EXPECT_EQ(rec[0].cookie, 3);
	EXPECT_EQ(rec[0].seq, m.seq);
	EXPECT_EQ(f.st->total_watched, 3);
	EXPECT_EQ(f.st->total_unwatched, 2);
	EXPECT_EQ(f.st->total_dirtied, 3);
	close(f.fd);
}

/*
 * Strict mode applies to the new watch, whichever way it was made: a
 * protection change of the new range dirties it, of the victim's range
 * (no longer watched) nothing.
 */
TEST(watch_instead_keeps_strict_mode)
{
	struct regwatch_api api = { .api = REGWATCH_API,
				    .features = REGWATCH_FEATURE_STRICT };
	struct instead_fd f = instead_open();
	char *p = rw_map_pages(2);
	struct regwatch_record rec[4];
	struct regwatch_watch a, n, m;

	ASSERT_EQ(ioctl(f.fd, REGWATCH_IOC_API, &api), 0);
	a = rw_watch(f.fd, p, 1, 1);
	ASSERT_EQ(rw_instead(f.fd, a.slot, 1, p + rw_page(), 1, 2, &n), 0);
	ASSERT_EQ(mprotect(p, rw_page(), PROT_READ), 0);
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 0);
	ASSERT_EQ(mprotect(p + rw_page(), rw_page(), PROT_READ), 0);
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 1);
	EXPECT_EQ(rec[0].cookie, 2);
	EXPECT_EQ(rec[0].reason, REGWATCH_REASON_PROTECTION);
	/* the same range, handed over */
	ASSERT_EQ(rw_instead(f.fd, n.slot, 2, p + rw_page(), 1, 3, &m), 0);
	ASSERT_EQ(mprotect(p + rw_page(), rw_page(), PROT_READ | PROT_WRITE),
		  0);
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 1);
	EXPECT_EQ(rec[0].cookie, 3);
	EXPECT_EQ(rec[0].seq, m.seq);
	EXPECT_EQ(rec[0].reason, REGWATCH_REASON_PROTECTION);
	close(f.fd);
}

/* Every slot in use: the new watch takes the victim's. */
TEST(watch_instead_works_on_a_full_table)
{
	struct instead_fd f = instead_open();
	char *p = rw_map_pages(SLOTS + 1);
	struct regwatch_watch w[SLOTS], n;

	for (int i = 0; i < SLOTS; i++)
		w[i] = rw_watch(f.fd, p + i * rw_page(), 1, i);
	ASSERT_ERRNO(rw_try_watch(f.fd, p + SLOTS * rw_page(), 1, 9, &n),
		     ENOSPC);
	ASSERT_EQ(rw_instead(f.fd, w[1].slot, 1, p + SLOTS * rw_page(), 1, 9,
			     &n), 0);
	EXPECT_EQ(n.slot, w[1].slot);
	EXPECT_EQ(rw_word(f.st, n.slot), n.seq);
	close(f.fd);
}

/* A user at max_user_watches can still evict: the victim's place passes on. */
TEST(watch_instead_works_at_the_user_limit)
{
	struct instead_fd f;
	struct regwatch_watch w, n;
	long old_limit;
	char *p;

	rw_require_device();
	if (geteuid() != 0)
		SKIP(, "needs root to set max_user_watches");
	f = instead_open();
	p = rw_map_pages(2);
	w = rw_watch(f.fd, p, 1, 1);
	old_limit = rw_set_module_param("max_user_watches",
					user_watches(f.fd));
	ASSERT_ERRNO(rw_try_watch(f.fd, p + rw_page(), 1, 2, &n), ENOSPC);
	ASSERT_EQ(rw_instead(f.fd, w.slot, 1, p + rw_page(), 1, 2, &n), 0);
	EXPECT_EQ(rw_word(f.st, n.slot), n.seq);
	rw_set_module_param("max_user_watches", old_limit);
	close(f.fd);
}

/*
 * A victim that is not a live watch with that cookie, or bad input: EINVAL,
 * and nothing changed: the victim is still watched, the new range is not,
 * no counter or seq moved.
 */
TEST(watch_instead_bad_victim_changes_nothing)
{
	struct instead_fd f = instead_open();
	char *p = rw_map_pages(2);
	struct regwatch_record rec[4];
	struct regwatch_watch a, gone, n;
	char *q = p + rw_page();

	a = rw_watch(f.fd, p, 1, 1);
	gone = rw_watch(f.fd, q, 1, 2);
	ASSERT_EQ(rw_unwatch(f.fd, gone.slot, 2), 0);	/* parked */
	ASSERT_ERRNO(rw_instead(f.fd, a.slot, 7, q, 1, 3, &n), EINVAL);
	ASSERT_ERRNO(rw_instead(f.fd, gone.slot, 2, q, 1, 3, &n), EINVAL);
	ASSERT_ERRNO(rw_instead(f.fd, 2, 1, q, 1, 3, &n), EINVAL);
	ASSERT_ERRNO(rw_instead(f.fd, SLOTS, 1, q, 1, 3, &n), EINVAL);
	ASSERT_ERRNO(rw_instead(f.fd, 1ULL << 32, 1, q, 1, 3, &n), EINVAL);
	ASSERT_ERRNO(rw_instead(f.fd, a.slot, 1, q, 0, 3, &n), EINVAL);
	ASSERT_ERRNO(rw_instead(f.fd, a.slot, 1,
				(void *)0xffff800000000000ULL, 4096, 3, &n),
		     EINVAL);
	/* a victim's cookie without the flag */
	memset(&n, 0, sizeof(n));
	n.start = (uintptr_t)q;
	n.length = 1;
	n.slot = a.slot;
	n.unwatch_cookie = 1;
	ASSERT_ERRNO(ioctl(f.fd, REGWATCH_IOC_WATCH, &n), EINVAL);
	n.flags = REGWATCH_WATCH_UNWATCH;
	n.reserved[0] = 1;
	ASSERT_ERRNO(ioctl(f.fd, REGWATCH_IOC_WATCH, &n), EINVAL);
	EXPECT_EQ(rw_word(f.st, a.slot), a.seq);
	EXPECT_EQ(f.st->total_watched, 2);
	EXPECT_EQ(f.st->total_unwatched, 1);
	dirty_page(q);
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 0);
	dirty_page(p);
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 1);
	EXPECT_EQ(rec[0].cookie, 1);
	/* no seq was consumed */
	n = rw_watch(f.fd, q, 1, 4);
	EXPECT_EQ(n.seq, gone.seq + 2);
	close(f.fd);
}

/* A read-only argument: EFAULT before anything changed. */
TEST(watch_instead_read_only_argument_changes_nothing)
{
	struct instead_fd f = instead_open();
	char *p = rw_map_pages(2);
	struct regwatch_watch a, *ro;

	a = rw_watch(f.fd, p, 1, 1);
	ro = mmap(NULL, rw_page(), PROT_READ | PROT_WRITE,
		  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(ro, MAP_FAILED);
	ro->start = (uintptr_t)p + rw_page();
	ro->length = 1;
	ro->cookie = 2;
	ro->flags = REGWATCH_WATCH_UNWATCH;
	ro->slot = a.slot;
	ro->unwatch_cookie = 1;
	ASSERT_EQ(mprotect(ro, rw_page(), PROT_READ), 0);
	ASSERT_ERRNO(ioctl(f.fd, REGWATCH_IOC_WATCH, ro), EFAULT);
	EXPECT_EQ(rw_word(f.st, a.slot), a.seq);
	EXPECT_EQ(f.st->total_watched, 1);
	EXPECT_EQ(f.st->total_unwatched, 0);
	ASSERT_EQ(rw_unwatch(f.fd, a.slot, 1), 0);
	close(f.fd);
}

struct race {
	int fd;
	pthread_barrier_t start;
	uint64_t slot, cookie;
	int ret, err;
};

static void *unwatch_racer(void *arg)
{
	struct race *r = arg;

	pthread_barrier_wait(&r->start);
	r->ret = rw_unwatch(r->fd, r->slot, r->cookie);
	r->err = errno;
	return NULL;
}

/*
 * Another thread unwatching the victim at the same time: exactly one of
 * the two calls wins; when the unwatch wins, the watch instead failed and the
 * new range is not watched. The counters add up either way.
 */
TEST(watch_instead_races_an_unwatch_of_the_victim)
{
	enum { rounds = 2000 };
	struct instead_fd f = instead_open();
	char *p = rw_map_pages(2);
	struct regwatch_record rec[4];
	int instead_won = 0, unwatched = 0;
	uint64_t cookie = 1;

	for (int i = 0; i < rounds; i++) {
		struct race r = { .fd = f.fd };
		struct regwatch_watch v, n;
		pthread_t thr;
		int ret;

		v = rw_watch(f.fd, p, 1, cookie);
		r.slot = v.slot;
		r.cookie = cookie++;
		ASSERT_EQ(pthread_barrier_init(&r.start, NULL, 2), 0);
		ASSERT_EQ(pthread_create(&thr, NULL, unwatch_racer, &r), 0);
		pthread_barrier_wait(&r.start);
		/* the same range and another one, in turn */
		ret = rw_instead(f.fd, v.slot, r.cookie,
				 p + (i & 1) * rw_page(), 1, cookie, &n);
		pthread_join(thr, NULL);
		pthread_barrier_destroy(&r.start);
		if (ret == 0) {
			ASSERT_EQ(r.ret, -1);
			ASSERT_EQ(r.err, EINVAL);
			instead_won++;
			ASSERT_EQ(rw_unwatch(f.fd, n.slot, cookie), 0);
		} else {
			ASSERT_EQ(errno, EINVAL);
			ASSERT_EQ(r.ret, 0);
			unwatched++;
			ASSERT_ERRNO(rw_unwatch(f.fd, v.slot, cookie), EINVAL);
		}
		cookie++;
	}
	TH_LOG("%d watches instead won, %d unwatches won", instead_won, unwatched);
	EXPECT_EQ(f.st->total_watched, rounds + instead_won);
	EXPECT_EQ(f.st->total_unwatched, rounds + instead_won);
	/* nothing is watched any more */
	dirty_page(p);
	dirty_page(p + rw_page());
	ASSERT_EQ(rw_drain(f.fd, rec, 4), 0);
	close(f.fd);
	EXPECT_EQ(rw_wait_counter("live_watches", 0), 0);
}

TEST_HARNESS_MAIN
