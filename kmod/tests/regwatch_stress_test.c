// SPDX-License-Identifier: GPL-2.0
/*
 * 64 threads race watch/unwatch/munmap/mremap/mprotect on one fd for a
 * bounded time (REGWATCH_STRESS_SECONDS, default 3) while a reader drains
 * records. Checked: munmap/mremap dirty synchronously, mprotect never does,
 * a stale {slot, seq} never looks valid, every record is delivered at most
 * once and only for watches that saw an unmap, an unwatch racing a munmap
 * from another thread of the same mm is safe, and every counter adds up.
 *
 * The regions are shared anonymous mappings, each its own VMA that never
 * merges with a neighbour. Private ones merge into large VMAs, and splitting
 * a VMA that spans a whole 2 MiB-aligned range (another thread's mprotect or
 * munmap) makes the kernel send MMU_NOTIFY_CLEAR for that whole range before
 * it checks for a huge page (__split_huge_pmd() from vma_adjust_trans_huge(),
 * seen on 7.3.4): a legitimate over-invalidation that dirties any watch
 * there, which this test's exact accounting cannot tell from a module bug.
 * regwatch_events_test shows it on its own.
 */
#include <poll.h>
#include <pthread.h>

#include "regwatch_util.h"

#define WORKERS		64
#define SLOTS		1024
#define MAX_ITERS	(1 << 16)

struct pair {
	pthread_barrier_t barrier;
	/*
	 * The leader's decision for iteration it is in stop[it & 1]: it may
	 * write the next iteration's before its partner has read this one's.
	 */
	bool stop[2];
	char *victim;
};

struct worker {
	int id;
	struct pair *pair;
	long iters;
	long unmapped;	/* actions whose watch must have turned dirty */
	long raced;	/* cross-thread unwatch-vs-munmap races */
	long watches;
};

static int fd;
static struct regwatch_status *st;
static uint64_t deadline_ns;
static long page;
static volatile bool readers_stop;
static uint8_t seen[WORKERS][MAX_ITERS];
static long records_read;

static uint64_t cookie_of(int id, long it)
{
	return ((uint64_t)id << 32) | (uint64_t)it;
}

static char *map_region(void)
{
	char *p = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(p, MAP_FAILED);
	memset(p, 1, 2 * page);
	return p;
}

static void unwatch_ok(const struct regwatch_watch *w)
{
	ASSERT_EQ(rw_unwatch(fd, w->slot, w->cookie), 0);
	ASSERT_NE(rw_word(st, w->slot), w->seq);
	ASSERT_NE(rw_word(st, w->slot), w->seq | REGWATCH_SEQ_DIRTY);
	ASSERT_ERRNO(rw_unwatch(fd, w->slot, w->cookie), EINVAL);
}

static void solo_action(struct worker *wk, long it)
{
	char *p = map_region(), *dst;
	struct regwatch_watch w = rw_watch(fd, p, 2 * page, cookie_of(wk->id, it));

	wk->watches++;
	switch (it % 4) {
	case 0:
		ASSERT_EQ(munmap(p, 2 * page), 0);
		ASSERT_EQ(rw_word(st, w.slot), w.seq | REGWATCH_SEQ_DIRTY);
		wk->unmapped++;
		unwatch_ok(&w);
		break;
	case 1:
		dst = mmap(NULL, 2 * page, PROT_NONE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ASSERT_NE(dst, MAP_FAILED);
		ASSERT_EQ(mremap(p, 2 * page, 2 * page,
				 MREMAP_MAYMOVE | MREMAP_FIXED, dst), dst);
		ASSERT_EQ(rw_word(st, w.slot), w.seq | REGWATCH_SEQ_DIRTY);
		wk->unmapped++;
		unwatch_ok(&w);
		munmap(dst, 2 * page);
		break;
	case 2:
		ASSERT_EQ(mprotect(p, 2 * page, PROT_READ), 0);
		ASSERT_EQ(mprotect(p, 2 * page, PROT_READ | PROT_WRITE), 0);
		p[page] = 2;
		ASSERT_EQ(rw_word(st, w.slot), w.seq);
		unwatch_ok(&w);
		munmap(p, 2 * page);
		break;
	}
}

/* Leader unwatches while its partner thread unmaps the same range. */
static void paired_action(struct worker *wk, long it, bool leader)
{
	struct regwatch_watch w = { 0 };

	if (leader) {
		wk->pair->victim = map_region();
		w = rw_watch(fd, wk->pair->victim, 2 * page, cookie_of(wk->id, it));
		wk->watches++;
	}
	pthread_barrier_wait(&wk->pair->barrier);
	if (leader) {
		unwatch_ok(&w);
		wk->raced++;
	} else {
		ASSERT_EQ(munmap(wk->pair->victim, 2 * page), 0);
	}
	pthread_barrier_wait(&wk->pair->barrier);
}

static void *worker_main(void *arg)
{
	struct worker *wk = arg;
	bool leader = !(wk->id & 1);

	for (long it = 0; it < MAX_ITERS; it++) {
		if (leader)
			wk->pair->stop[it & 1] = rw_now_ns() > deadline_ns;
		pthread_barrier_wait(&wk->pair->barrier);
		if (wk->pair->stop[it & 1])
			break;
		if (it % 4 == 3)
			paired_action(wk, it, leader);
		else
			solo_action(wk, it);
		wk->iters++;
	}
	return NULL;
}

static void check_record(const struct regwatch_record *r)
{
	uint32_t id = r->cookie >> 32;
	uint32_t it = (uint32_t)r->cookie;

	ASSERT_LT(id, WORKERS);
	ASSERT_LT(it, MAX_ITERS);
	/* only unmaps (solo 0/1 and the paired race) may dirty */
	ASSERT_NE(it % 4, 2);
	ASSERT_EQ(r->reason, REGWATCH_REASON_UNMAP);
	ASSERT_EQ(r->end - r->start, 2 * page);
	ASSERT_EQ(seen[id][it], 0);
	seen[id][it] = 1;
	records_read++;
}

/* Returns false once nothing is pending. */
static bool drain_once(void)
{
	struct regwatch_record rec[64];
	ssize_t r = read(fd, rec, sizeof(rec));

	if (r < 0) {
		ASSERT_EQ(errno, EAGAIN);
		return false;
	}
	for (ssize_t i = 0; i < r / (ssize_t)sizeof(rec[0]); i++)
		check_record(&rec[i]);
	return true;
}

static void *reader_main(void *arg)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	(void)arg;
	while (!readers_stop) {
		poll(&pfd, 1, 10);
		drain_once();
	}
	return NULL;
}

TEST(race_watch_unwatch_munmap_mremap)
{
	static struct worker workers[WORKERS];
	static struct pair pairs[WORKERS / 2];
	pthread_t thr[WORKERS], reader;
	long iters = 0, unmapped = 0, raced = 0, watches = 0, watches0;
	const char *secs = getenv("REGWATCH_STRESS_SECONDS");

	page = rw_page();
	fd = rw_open(O_NONBLOCK);
	watches0 = rw_module_counter("live_watches");
	rw_set_capacity(fd, SLOTS);
	st = rw_map_status(fd, SLOTS);
	deadline_ns = rw_now_ns() + (secs ? atol(secs) : 3) * 1000000000ULL;

	for (int i = 0; i < WORKERS / 2; i++)
		pthread_barrier_init(&pairs[i].barrier, NULL, 2);
	ASSERT_EQ(pthread_create(&reader, NULL, reader_main, NULL), 0);
	for (int i = 0; i < WORKERS; i++) {
		workers[i].id = i;
		workers[i].pair = &pairs[i / 2];
		ASSERT_EQ(pthread_create(&thr[i], NULL, worker_main, &workers[i]), 0);
	}
	for (int i = 0; i < WORKERS; i++) {
		pthread_join(thr[i], NULL);
		iters += workers[i].iters;
		unmapped += workers[i].unmapped;
		raced += workers[i].raced;
		watches += workers[i].watches;
	}
	readers_stop = true;
	pthread_join(reader, NULL);
	while (drain_once())
		;

	TH_LOG("%ld iterations, %ld unmaps, %ld unwatch/munmap races, %ld records",
	       iters, unmapped, raced, records_read);
	ASSERT_GT(iters, WORKERS);
	ASSERT_EQ(st->total_watched, watches);
	ASSERT_EQ(st->total_unwatched, st->total_watched);
	ASSERT_GE(st->total_dirtied, unmapped);
	ASSERT_LE(st->total_dirtied, unmapped + raced);
	ASSERT_EQ(st->total_reported, records_read);
	ASSERT_EQ(st->dirty_unread, 0);
	ASSERT_EQ(rw_module_counter("live_watches"), watches0);
	close(fd);
}

TEST_HARNESS_MAIN
