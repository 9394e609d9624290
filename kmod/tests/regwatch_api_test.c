// SPDX-License-Identifier: GPL-2.0
/*
 * The ioctl/read/poll/mmap contract of /dev/regwatch: handshake, capacity,
 * every errno of the design, exactly-once reporting, seq and generation.
 */
#include <poll.h>
#include <setjmp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/wait.h>

#include "regwatch_util.h"

#define ALL_IOCTLS ((1ULL << 0) | (1ULL << 1) | (1ULL << 2) | (1ULL << 3))

TEST(api_handshake)
{
	int fd = rw_open(0);
	struct regwatch_api api = { .api = REGWATCH_API };

	ASSERT_EQ(ioctl(fd, REGWATCH_IOC_API, &api), 0);
	EXPECT_EQ(api.api, REGWATCH_API);
	EXPECT_EQ(api.supported_features, REGWATCH_FEATURE_STRICT);
	EXPECT_EQ(api.ioctls, ALL_IOCTLS);
	EXPECT_EQ(api.record_size, sizeof(struct regwatch_record));
	EXPECT_EQ(api.max_slots, rw_module_counter("max_slots"));
	EXPECT_EQ(api.default_slots, rw_module_counter("default_slots"));
	EXPECT_EQ(api.features, rw_module_strict() ? REGWATCH_FEATURE_STRICT : 0);
	EXPECT_EQ(api.max_user_watches, rw_module_counter("max_user_watches"));
	/* callable again */
	ASSERT_EQ(ioctl(fd, REGWATCH_IOC_API, &api), 0);
	close(fd);
}

TEST(api_bad_input)
{
	int fd = rw_open(0);
	struct regwatch_api api;

	memset(&api, 0, sizeof(api));
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_API, &api), EINVAL);	/* zero */
	api.api = REGWATCH_API + 1;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_API, &api), EINVAL);
	api.api = REGWATCH_API;
	api.features = 1ULL << 63;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_API, &api), EINVAL);
	api.features = REGWATCH_FEATURE_STRICT | (1ULL << 5);
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_API, &api), EINVAL);
	api.features = 0;
	api.reserved[6] = 1;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_API, &api), EINVAL);
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_API, (void *)16), EFAULT);
	ASSERT_ERRNO(ioctl(fd, _IO(REGWATCH_IOC_MAGIC, 0x42)), ENOTTY);
	ASSERT_ERRNO(ioctl(fd, TCGETS), ENOTTY);
	/* the failed strict request enabled nothing */
	memset(&api, 0, sizeof(api));
	api.api = REGWATCH_API;
	ASSERT_EQ(ioctl(fd, REGWATCH_IOC_API, &api), 0);
	EXPECT_EQ(api.features, rw_module_strict() ? REGWATCH_FEATURE_STRICT : 0);
	close(fd);
}

TEST(capacity)
{
	int fd = rw_open(0), fd2, fd3;
	struct regwatch_capacity cap = { 0 };
	char *p = rw_map_pages(1);
	uint64_t max = rw_module_counter("max_slots");
	struct regwatch_status *st;

	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_SET_CAPACITY, &cap), EINVAL);
	cap.slots = max + 1;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_SET_CAPACITY, &cap), EINVAL);
	cap.slots = 1ULL << 40;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_SET_CAPACITY, &cap), EINVAL);
	cap.slots = 3;
	cap.reserved[1] = 1;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_SET_CAPACITY, &cap), EINVAL);
	rw_set_capacity(fd, 3);
	cap.reserved[1] = 0;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_SET_CAPACITY, &cap), EBUSY);
	cap.slots = 5;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_SET_CAPACITY, &cap), EBUSY);
	st = rw_map_status(fd, 3);
	EXPECT_EQ(st->nslots, 3);

	/* the first watch fixes the default capacity */
	fd2 = rw_open(0);
	rw_watch(fd2, p, 1, 1);
	cap.slots = 5;
	ASSERT_ERRNO(ioctl(fd2, REGWATCH_IOC_SET_CAPACITY, &cap), EBUSY);
	st = rw_map_status(fd2, rw_module_counter("default_slots"));
	EXPECT_EQ(st->nslots, rw_module_counter("default_slots"));

	/* so does the first mmap */
	fd3 = rw_open(0);
	rw_map_status(fd3, rw_module_counter("default_slots"));
	ASSERT_ERRNO(ioctl(fd3, REGWATCH_IOC_SET_CAPACITY, &cap), EBUSY);
	close(fd);
	close(fd2);
	close(fd3);
}

TEST(watch_bad_input_changes_nothing)
{
	int fd = rw_open(0);
	char *p = rw_map_pages(2);
	struct regwatch_status *st;
	struct regwatch_watch w;

	rw_set_capacity(fd, 4);
	st = rw_map_status(fd, 4);
	ASSERT_ERRNO(rw_try_watch(fd, p, 0, 1, &w), EINVAL);
	ASSERT_ERRNO(rw_try_watch(fd, (void *)(UINT64_MAX - 100), 200, 1, &w),
		     EINVAL);
	/* past the largest user address space (57-bit with 5-level paging) */
	ASSERT_ERRNO(rw_try_watch(fd, (void *)0xfffffffffff000ULL, 0x2000, 1, &w),
		     EINVAL);
	ASSERT_ERRNO(rw_try_watch(fd, (void *)0xffff800000000000ULL, 4096, 1, &w),
		     EINVAL);
	ASSERT_ERRNO(rw_try_watch(fd, (void *)0x1000, UINT64_MAX - 0x1000, 1,
				  &w), EINVAL);
	memset(&w, 0, sizeof(w));
	w.start = (uintptr_t)p;
	w.length = 1;
	w.flags = REGWATCH_WATCH_FLAGS + 1;	/* the lowest unknown bit */
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_WATCH, &w), EINVAL);
	w.flags = 1ULL << 63;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_WATCH, &w), EINVAL);
	w.flags = 0;
	w.reserved[0] = 7;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_WATCH, &w), EINVAL);
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_WATCH, (void *)8), EFAULT);
	/* nothing was consumed: the first good watch gets slot 0, seq 2 */
	EXPECT_EQ(st->total_watched, 0);
	w = rw_watch(fd, p, 1, 9);
	EXPECT_EQ(w.slot, 0);
	EXPECT_EQ(w.seq, 2);
	EXPECT_EQ(st->total_watched, 1);
	/* unmapped memory may be watched: it can still change */
	w = rw_watch(fd, (void *)0x10000, 4096, 10);
	EXPECT_EQ(w.slot, 1);
	close(fd);
}

TEST(enospc_and_slot_reuse)
{
	int fd = rw_open(0);
	char *p = rw_map_pages(3);
	struct regwatch_status *st;
	struct regwatch_watch a, b, c;

	rw_set_capacity(fd, 2);
	st = rw_map_status(fd, 2);
	a = rw_watch(fd, p, 1, 100);
	b = rw_watch(fd, p + rw_page(), 1, 101);
	ASSERT_ERRNO(rw_try_watch(fd, p + 2 * rw_page(), 1, 102, &c), ENOSPC);
	ASSERT_EQ(rw_unwatch(fd, a.slot, a.cookie), 0);
	EXPECT_EQ(rw_word(st, a.slot), 0);
	c = rw_watch(fd, p + 2 * rw_page(), 1, 102);
	/* same slot, new seq: the stale {slot, seq} can never look valid */
	ASSERT_EQ(c.slot, a.slot);
	ASSERT_GT(c.seq, b.seq);
	ASSERT_NE(rw_word(st, a.slot), a.seq);
	ASSERT_EQ(rw_word(st, c.slot), c.seq);
	ASSERT_EQ(rw_word(st, b.slot), b.seq);
	/* the stale pair cannot unwatch the new watch */
	ASSERT_ERRNO(rw_unwatch(fd, a.slot, a.cookie), EINVAL);
	ASSERT_EQ(rw_word(st, c.slot), c.seq);
	close(fd);
}

TEST(unwatch_bad_input)
{
	int fd = rw_open(0);
	char *p = rw_map_pages(1);
	struct regwatch_unwatch u = { 0 };
	struct regwatch_status *st;
	struct regwatch_watch w;

	ASSERT_ERRNO(rw_unwatch(fd, 0, 0), EINVAL);	/* no capacity yet */
	rw_set_capacity(fd, 4);
	st = rw_map_status(fd, 4);
	w = rw_watch(fd, p, 1, 55);
	ASSERT_ERRNO(rw_unwatch(fd, w.slot, 56), EINVAL);
	ASSERT_ERRNO(rw_unwatch(fd, 1, 55), EINVAL);	/* never used */
	ASSERT_ERRNO(rw_unwatch(fd, 4, 55), EINVAL);
	ASSERT_ERRNO(rw_unwatch(fd, 1ULL << 32, 55), EINVAL);
	u.slot = w.slot;
	u.cookie = 55;
	u.reserved[1] = 1;
	ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_UNWATCH, &u), EINVAL);
	ASSERT_EQ(rw_word(st, w.slot), w.seq);
	EXPECT_EQ(st->total_unwatched, 0);
	ASSERT_EQ(rw_unwatch(fd, w.slot, 55), 0);
	ASSERT_ERRNO(rw_unwatch(fd, w.slot, 55), EINVAL);
	EXPECT_EQ(st->total_unwatched, 1);
	close(fd);
}

TEST(mmap_rules)
{
	int fd = rw_open(0);
	long pg = rw_page();
	uint64_t size = rw_set_capacity(fd, 1000);
	struct regwatch_status *st;
	void *p;

	ASSERT_EQ(size, 2 * pg);	/* 128 + 8000 bytes */
	ASSERT_ERRNO((long)mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED,
				fd, 0), EPERM);
	ASSERT_ERRNO((long)mmap(NULL, size, PROT_READ | PROT_EXEC, MAP_SHARED,
				fd, 0), EPERM);
	ASSERT_ERRNO((long)mmap(NULL, size - pg, PROT_READ, MAP_SHARED, fd, 0),
		     EINVAL);
	ASSERT_ERRNO((long)mmap(NULL, size + pg, PROT_READ, MAP_SHARED, fd, 0),
		     EINVAL);
	ASSERT_ERRNO((long)mmap(NULL, size, PROT_READ, MAP_SHARED, fd, pg),
		     EINVAL);
	ASSERT_ERRNO((long)mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0),
		     EINVAL);
	st = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT_NE(st, MAP_FAILED);
	EXPECT_EQ(st->abi_version, REGWATCH_API);
	EXPECT_EQ(st->header_size, sizeof(struct regwatch_status));
	EXPECT_EQ(st->nslots, 1000);
	EXPECT_EQ(st->generation, 0);
	for (int i = 0; i < 7; i++)
		EXPECT_EQ(st->reserved[i], 0);
	ASSERT_ERRNO(mprotect(st, size, PROT_READ | PROT_WRITE), EACCES);
	/* a second read-only mapping shows the same words */
	p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	ASSERT_NE(p, MAP_FAILED);
	ASSERT_EQ(memcmp(p, st, size), 0);
	close(fd);
	/* the mapping outlives the fd */
	EXPECT_EQ(st->nslots, 1000);
}

static sigjmp_buf segv_jmp;

static void on_segv(int sig)
{
	siglongjmp(segv_jmp, sig);
}

/* Neither a store nor a forced write through /proc/self/mem gets in. */
TEST(status_area_is_read_only)
{
	int fd = rw_open(0), mem;
	struct regwatch_status *st;
	volatile __u64 *gen;
	uint64_t junk = 12345;

	rw_set_capacity(fd, 8);
	st = rw_map_status(fd, 8);
	gen = &st->generation;
	signal(SIGSEGV, on_segv);
	if (!sigsetjmp(segv_jmp, 1)) {
		*gen = 1;
		TH_LOG("store to the status area did not fault");
		th_fail(true);
	}
	signal(SIGSEGV, SIG_DFL);
	mem = open("/proc/self/mem", O_RDWR);
	ASSERT_GE(mem, 0);
	ASSERT_EQ(pwrite(mem, &junk, sizeof(junk), (uintptr_t)&st->generation),
		  -1);
	close(mem);
	ASSERT_EQ(st->generation, 0);
	close(fd);
}

TEST(read_rules)
{
	int fd = rw_open(O_NONBLOCK);
	struct regwatch_record rec[4];
	struct regwatch_status *st;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char *p;

	ASSERT_ERRNO(read(fd, rec, sizeof(rec[0]) - 1), EINVAL);
	ASSERT_ERRNO(read(fd, rec, 0), EINVAL);
	ASSERT_ERRNO(read(fd, rec, sizeof(rec)), EAGAIN);	/* no capacity */
	rw_set_capacity(fd, 8);
	st = rw_map_status(fd, 8);
	ASSERT_ERRNO(read(fd, rec, sizeof(rec)), EAGAIN);
	ASSERT_EQ(poll(&pfd, 1, 0), 0);
	p = rw_map_pages(1);
	rw_watch(fd, p, 1, 1);
	ASSERT_EQ(munmap(p, rw_page()), 0);
	ASSERT_EQ(poll(&pfd, 1, 0), 1);
	ASSERT_EQ(pfd.revents, POLLIN);
	pfd.events = POLLRDNORM;
	ASSERT_EQ(poll(&pfd, 1, 0), 1);
	ASSERT_EQ(pfd.revents, POLLRDNORM);
	ASSERT_ERRNO(read(fd, rec, sizeof(rec[0]) - 1), EINVAL);
	ASSERT_EQ(st->dirty_unread, 1);
	ASSERT_EQ(read(fd, rec, sizeof(rec[0]) + 5), sizeof(rec[0]));
	ASSERT_EQ(poll(&pfd, 1, 0), 0);
	close(fd);
}

/* Records that could not be copied stay pending. */
TEST(read_fault_keeps_records)
{
	int fd = rw_open(O_NONBLOCK);
	long pg = rw_page();
	struct regwatch_record rec[4];
	struct regwatch_status *st;
	char *p = rw_map_pages(3);
	char *buf = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct regwatch_watch w[3];

	ASSERT_NE(buf, MAP_FAILED);
	rw_set_capacity(fd, 8);
	st = rw_map_status(fd, 8);
	for (int i = 0; i < 3; i++)
		w[i] = rw_watch(fd, p + i * pg, 1, 200 + i);
	ASSERT_EQ(munmap(p, 3 * pg), 0);
	ASSERT_EQ(st->dirty_unread, 3);
	ASSERT_EQ(mprotect(buf + pg, pg, PROT_NONE), 0);
	ASSERT_ERRNO(read(fd, buf + pg, sizeof(rec)), EFAULT);
	ASSERT_EQ(st->dirty_unread, 3);
	/* room for exactly one record before the hole */
	ASSERT_EQ(read(fd, buf + pg - sizeof(rec[0]), sizeof(rec)),
		  sizeof(rec[0]));
	memcpy(rec, buf + pg - sizeof(rec[0]), sizeof(rec[0]));
	EXPECT_EQ(rec[0].cookie, 200);
	ASSERT_EQ(st->dirty_unread, 2);
	ASSERT_EQ(rw_drain(fd, rec, 4), 2);
	EXPECT_EQ(rec[0].cookie, 201);
	EXPECT_EQ(rec[1].cookie, 202);
	EXPECT_EQ(st->total_reported, 3);
	(void)w;
	close(fd);
}

/*
 * read() writes records into the caller's memory with page faults off and
 * faults the destination in between tries: a buffer whose pages were never
 * touched, and one write-protected for copy-on-write by a fork, both get
 * every record, each once and in order.
 */
TEST(read_faults_the_buffer_in)
{
	const int watches = 300;
	size_t bytes = watches * sizeof(struct regwatch_record);
	int fd = rw_open(O_NONBLOCK);
	long pg = rw_page();
	struct regwatch_status *st;
	struct regwatch_record *rec;
	char *p = rw_map_pages(watches);
	int status;
	pid_t pid;

	rw_set_capacity(fd, watches);
	st = rw_map_status(fd, watches);
	for (int round = 0; round < 2; round++) {
		/* a fresh mapping: no page of it is present yet */
		rec = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		ASSERT_NE(rec, MAP_FAILED);
		if (round == 1) {
			/* present, but the fork leaves them read-only (COW) */
			memset(rec, 0xff, bytes);
			pid = fork();
			ASSERT_GE(pid, 0);
			if (!pid)
				_exit(0);
			ASSERT_EQ(waitpid(pid, &status, 0), pid);
		}
		for (int i = 0; i < watches; i++)
			rw_watch(fd, p + i * pg, 1, round * watches + i);
		ASSERT_EQ(munmap(p, watches * pg), 0);
		ASSERT_EQ(read(fd, rec, bytes), (ssize_t)bytes);
		for (int i = 0; i < watches; i++) {
			ASSERT_EQ(rec[i].cookie, (uint64_t)(round * watches + i));
			ASSERT_EQ(rec[i].start, (uint64_t)(uintptr_t)(p + i * pg));
			ASSERT_EQ(rec[i].reserved, 0);
			ASSERT_EQ(rw_unwatch(fd, rec[i].slot, rec[i].cookie), 0);
		}
		ASSERT_EQ(st->dirty_unread, 0);
		ASSERT_ERRNO(read(fd, rec, bytes), EAGAIN);
		ASSERT_EQ(munmap(rec, bytes), 0);
		p = rw_map_pages(watches);
	}
	EXPECT_EQ(st->total_reported, 2 * watches);
	close(fd);
}

struct delayed_unmap {
	char *p;
	long len;
};

static void *unmap_later(void *arg)
{
	struct delayed_unmap *d = arg;

	usleep(200000);
	munmap(d->p, d->len);
	return NULL;
}

TEST(blocking_read_and_epoll)
{
	int fd = rw_open(0), ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN };
	struct regwatch_record rec[2];
	struct delayed_unmap d;
	struct regwatch_watch w;
	pthread_t thr;

	ASSERT_GE(ep, 0);
	ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);
	d.len = rw_page();
	d.p = rw_map_pages(1);
	w = rw_watch(fd, d.p, 1, 77);
	ASSERT_EQ(epoll_wait(ep, &ev, 1, 0), 0);
	ASSERT_EQ(pthread_create(&thr, NULL, unmap_later, &d), 0);
	ASSERT_EQ(epoll_wait(ep, &ev, 1, 10000), 1);
	ASSERT_TRUE(ev.events & EPOLLIN);
	pthread_join(thr, NULL);

	d.p = rw_map_pages(1);
	rw_watch(fd, d.p, 1, 78);
	ASSERT_EQ(read(fd, rec, sizeof(rec)), sizeof(rec[0]));	/* no block */
	EXPECT_EQ(rec[0].cookie, 77);
	EXPECT_EQ(rec[0].slot, w.slot);
	ASSERT_EQ(pthread_create(&thr, NULL, unmap_later, &d), 0);
	ASSERT_EQ(read(fd, rec, sizeof(rec)), sizeof(rec[0]));	/* blocks */
	EXPECT_EQ(rec[0].cookie, 78);
	pthread_join(thr, NULL);
	close(ep);
	close(fd);
}

TEST(exactly_once_and_generation)
{
	int fd = rw_open(O_NONBLOCK);
	long pg = rw_page();
	char *p = rw_map_pages(4);
	struct regwatch_record rec[8];
	struct regwatch_status *st;
	struct regwatch_watch w[4];
	uint64_t gen;

	rw_set_capacity(fd, 8);
	st = rw_map_status(fd, 8);
	for (int i = 0; i < 4; i++)
		w[i] = rw_watch(fd, p + i * pg, pg, 300 + i);
	/* a watch spanning pages 1..2 */
	struct regwatch_watch span = rw_watch(fd, p + pg, 2 * pg, 310);

	gen = rw_gen(st);
	ASSERT_EQ(munmap(p + pg, pg), 0);	/* dirties w[1] and span */
	ASSERT_EQ(rw_gen(st), gen + 2);
	ASSERT_EQ(st->dirty_unread, 2);
	ASSERT_EQ(munmap(p + 2 * pg, pg), 0);	/* w[2]; span already dirty */
	ASSERT_EQ(rw_gen(st), gen + 3);
	ASSERT_EQ(rw_drain(fd, rec, 8), 3);
	EXPECT_EQ(rec[0].cookie, 301);
	EXPECT_EQ(rec[1].cookie, 310);
	EXPECT_EQ(rec[2].cookie, 302);
	EXPECT_EQ(rec[1].start, (uintptr_t)p + pg);
	EXPECT_EQ(rec[1].end, (uintptr_t)p + 3 * pg);
	ASSERT_EQ(rw_word(st, w[0].slot), w[0].seq);
	ASSERT_EQ(rw_word(st, w[3].slot), w[3].seq);
	ASSERT_EQ(rw_word(st, span.slot), span.seq | REGWATCH_SEQ_DIRTY);
	EXPECT_EQ(st->total_dirtied, 3);
	EXPECT_EQ(st->total_reported, 3);
	EXPECT_EQ(st->dirty_unread, 0);
	/* a reported watch never comes back */
	ASSERT_EQ(munmap(p, 4 * pg), 0);
	ASSERT_EQ(rw_drain(fd, rec, 8), 2);
	EXPECT_EQ(rec[0].cookie, 300);
	EXPECT_EQ(rec[1].cookie, 303);
	ASSERT_EQ(rw_gen(st), gen + 5);
	ASSERT_EQ(rw_drain(fd, rec, 8), 0);
	close(fd);
}

TEST(unwatch_drops_pending_event)
{
	int fd = rw_open(O_NONBLOCK);
	char *p = rw_map_pages(2);
	struct regwatch_record rec[4];
	struct regwatch_status *st;
	struct regwatch_watch a, b;

	rw_set_capacity(fd, 4);
	st = rw_map_status(fd, 4);
	a = rw_watch(fd, p, 1, 1);
	b = rw_watch(fd, p + rw_page(), 1, 2);
	ASSERT_EQ(munmap(p, 2 * rw_page()), 0);
	ASSERT_EQ(st->dirty_unread, 2);
	ASSERT_EQ(rw_unwatch(fd, a.slot, a.cookie), 0);
	ASSERT_EQ(st->dirty_unread, 1);
	ASSERT_EQ(rw_word(st, a.slot), 0);
	ASSERT_EQ(rw_drain(fd, rec, 4), 1);
	EXPECT_EQ(rec[0].cookie, 2);
	ASSERT_EQ(rw_unwatch(fd, b.slot, b.cookie), 0);	/* reported: fine */
	EXPECT_EQ(st->total_unwatched, 2);
	EXPECT_EQ(st->total_reported, 1);
	close(fd);
}

/* Every call from another mm fails with EIO and changes nothing. */
TEST(fork_child_gets_eio)
{
	int fd = rw_open(O_NONBLOCK);
	char *p = rw_map_pages(1);
	struct regwatch_status *st;
	struct regwatch_watch w;
	int status;
	pid_t pid;

	rw_set_capacity(fd, 4);
	st = rw_map_status(fd, 4);
	w = rw_watch(fd, p, 1, 5);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		struct regwatch_api api = { .api = REGWATCH_API };
		struct regwatch_capacity cap = { .slots = 2 };
		struct regwatch_watch w2;
		struct regwatch_record rec;
		struct pollfd pfd = { .fd = fd, .events = POLLIN };

		ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_API, &api), EIO);
		ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_SET_CAPACITY, &cap), EIO);
		ASSERT_ERRNO(rw_try_watch(fd, p, 1, 6, &w2), EIO);
		ASSERT_ERRNO(rw_unwatch(fd, w.slot, w.cookie), EIO);
		ASSERT_ERRNO(ioctl(fd, _IO(REGWATCH_IOC_MAGIC, 0x42)), EIO);
		ASSERT_ERRNO(read(fd, &rec, sizeof(rec)), EIO);
		ASSERT_ERRNO((long)mmap(NULL, REGWATCH_STATUS_SIZE(4, rw_page()),
					PROT_READ, MAP_SHARED, fd, 0), EIO);
		ASSERT_EQ(poll(&pfd, 1, 0), 1);
		ASSERT_EQ(pfd.revents, POLLERR);
		/* the child's own munmap is another mm: nothing for the parent */
		munmap(p, rw_page());
		_exit(0);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT_EQ(rw_word(st, w.slot), w.seq);
	EXPECT_EQ(st->total_watched, 1);
	EXPECT_EQ(st->total_unwatched, 0);
	EXPECT_EQ(st->generation, 0);
	ASSERT_EQ(rw_unwatch(fd, w.slot, w.cookie), 0);
	close(fd);
}

TEST_HARNESS_MAIN
