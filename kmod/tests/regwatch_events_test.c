// SPDX-License-Identifier: GPL-2.0
/*
 * Which address-space changes dirty a watch, with which reason, exactly
 * once; and which changes must not dirty it.
 */
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/syscall.h>

#include "regwatch_util.h"

#define SLOTS 64

#ifndef MPOL_MF_MOVE
#define MPOL_MF_MOVE (1 << 1)
#endif
#ifndef MADV_SOFT_OFFLINE
#define MADV_SOFT_OFFLINE 101
#endif

FIXTURE(ev) {
	int fd;
	struct regwatch_status *st;
	long page;
};

FIXTURE_SETUP(ev)
{
	self->fd = rw_open(O_NONBLOCK);
	rw_set_capacity(self->fd, SLOTS);
	self->st = rw_map_status(self->fd, SLOTS);
	self->page = rw_page();
}

FIXTURE_TEARDOWN(ev)
{
	munmap(self->st, REGWATCH_STATUS_SIZE(SLOTS, self->page));
	close(self->fd);
}

/*
 * Exactly @w turned dirty with @reason, is reported exactly once with the
 * right fields, and the generation moved exactly once since @gen0.
 */
static void expect_dirty_once(struct th_fixture_ev *self,
			      const struct regwatch_watch *w, uint32_t reason,
			      uint64_t gen0)
{
	struct regwatch_record rec[SLOTS];
	int n;

	ASSERT_EQ(rw_word(self->st, w->slot), w->seq | REGWATCH_SEQ_DIRTY);
	ASSERT_EQ(rw_gen(self->st), gen0 + 1);
	ASSERT_EQ(self->st->dirty_unread, 1);
	n = rw_drain(self->fd, rec, SLOTS);
	ASSERT_EQ(n, 1);
	EXPECT_EQ(rec[0].cookie, w->cookie);
	EXPECT_EQ(rec[0].slot, w->slot);
	EXPECT_EQ(rec[0].seq, w->seq);
	EXPECT_EQ(rec[0].start, w->start & ~(uint64_t)(self->page - 1));
	EXPECT_EQ(rec[0].end, (w->start + w->length + self->page - 1) &
			      ~(uint64_t)(self->page - 1));
	EXPECT_EQ(rec[0].reserved, 0);
	ASSERT_EQ(rec[0].reason, reason);
	ASSERT_EQ(self->st->dirty_unread, 0);
	/* still dirty, never reported twice */
	ASSERT_EQ(rw_drain(self->fd, rec, SLOTS), 0);
	ASSERT_EQ(rw_word(self->st, w->slot), w->seq | REGWATCH_SEQ_DIRTY);
}

static void expect_clean(struct th_fixture_ev *self,
			 const struct regwatch_watch *w, uint64_t gen0)
{
	struct regwatch_record rec[SLOTS];

	ASSERT_EQ(rw_word(self->st, w->slot), w->seq);
	ASSERT_EQ(rw_gen(self->st), gen0);
	ASSERT_EQ(rw_drain(self->fd, rec, SLOTS), 0);
}

TEST_F(ev, munmap_whole)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch w = rw_watch(self->fd, p, 4 * self->page, 1);
	uint64_t gen0 = rw_gen(self->st);

	ASSERT_EQ(munmap(p, 4 * self->page), 0);
	expect_dirty_once(self, &w, REGWATCH_REASON_UNMAP, gen0);
}

TEST_F(ev, munmap_partial)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch w = rw_watch(self->fd, p + 10, 4 * self->page - 20, 2);
	uint64_t gen0 = rw_gen(self->st);

	ASSERT_EQ(munmap(p + 2 * self->page, self->page), 0);
	expect_dirty_once(self, &w, REGWATCH_REASON_UNMAP, gen0);
}

TEST_F(ev, munmap_neighbour_page_not_dirty)
{
	char *p = rw_map_pages(4);
	/* watch pages 1..2; the byte range ends exactly at page 3 */
	struct regwatch_watch w = rw_watch(self->fd, p + self->page,
					   2 * self->page, 3);
	uint64_t gen0 = rw_gen(self->st);

	ASSERT_EQ(munmap(p, self->page), 0);
	ASSERT_EQ(munmap(p + 3 * self->page, self->page), 0);
	expect_clean(self, &w, gen0);
}

TEST_F(ev, mremap_move)
{
	char *p = rw_map_pages(4);
	char *dst = mmap(NULL, 4 * self->page, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct regwatch_watch w = rw_watch(self->fd, p, 4 * self->page, 4);
	uint64_t gen0 = rw_gen(self->st);

	ASSERT_NE(dst, MAP_FAILED);
	ASSERT_EQ(mremap(p, 4 * self->page, 4 * self->page,
			 MREMAP_MAYMOVE | MREMAP_FIXED, dst), dst);
	expect_dirty_once(self, &w, REGWATCH_REASON_UNMAP, gen0);
}

TEST_F(ev, mremap_shrink)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch head = rw_watch(self->fd, p, 2 * self->page, 5);
	struct regwatch_watch tail = rw_watch(self->fd, p + 3 * self->page,
					      self->page, 6);
	uint64_t gen0 = rw_gen(self->st);

	ASSERT_EQ(mremap(p, 4 * self->page, 2 * self->page, 0), p);
	ASSERT_EQ(rw_word(self->st, head.slot), head.seq);
	expect_dirty_once(self, &tail, REGWATCH_REASON_UNMAP, gen0);
}

TEST_F(ev, map_fixed_over)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch w = rw_watch(self->fd, p + self->page, self->page, 7);
	uint64_t gen0 = rw_gen(self->st);

	ASSERT_EQ(mmap(p, 4 * self->page, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0), p);
	expect_dirty_once(self, &w, REGWATCH_REASON_UNMAP, gen0);
}

TEST_F(ev, madvise_dontneed)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch w = rw_watch(self->fd, p, 4 * self->page, 8);
	uint64_t gen0 = rw_gen(self->st);

	ASSERT_EQ(madvise(p + self->page, self->page, MADV_DONTNEED), 0);
	expect_dirty_once(self, &w, REGWATCH_REASON_CLEAR, gen0);
}

/*
 * An unwatched range stays quiet, and watched again it reports changes as
 * a new watch, however the module keeps its notifier in between.
 */
TEST_F(ev, rewatch_of_an_unwatched_range)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch a, b, c;
	struct regwatch_record rec[SLOTS];
	uint64_t gen0;

	a = rw_watch(self->fd, p, 2 * self->page, 20);
	ASSERT_EQ(madvise(p, self->page, MADV_DONTNEED), 0);
	ASSERT_EQ(self->st->dirty_unread, 1);
	ASSERT_EQ(rw_unwatch(self->fd, a.slot, a.cookie), 0);
	ASSERT_EQ(self->st->dirty_unread, 0);
	gen0 = rw_gen(self->st);
	p[0] = 1;
	ASSERT_EQ(madvise(p, 2 * self->page, MADV_DONTNEED), 0);
	ASSERT_EQ(rw_gen(self->st), gen0);
	ASSERT_EQ(rw_drain(self->fd, rec, SLOTS), 0);

	b = rw_watch(self->fd, p, 2 * self->page, 21);
	ASSERT_GT(b.seq, a.seq);
	expect_clean(self, &b, gen0);
	p[self->page] = 1;
	ASSERT_EQ(madvise(p + self->page, self->page, MADV_DONTNEED), 0);
	expect_dirty_once(self, &b, REGWATCH_REASON_CLEAR, gen0);

	ASSERT_EQ(rw_unwatch(self->fd, b.slot, b.cookie), 0);
	c = rw_watch(self->fd, p + 2 * self->page, self->page, 22);
	gen0 = rw_gen(self->st);
	ASSERT_EQ(munmap(p, 2 * self->page), 0);
	expect_clean(self, &c, gen0);
	ASSERT_EQ(munmap(p + 2 * self->page, 2 * self->page), 0);
	expect_dirty_once(self, &c, REGWATCH_REASON_UNMAP, gen0);
}

/* A full table takes the slot of an unwatched range for another range. */
TEST(full_table_reuses_an_unwatched_slot)
{
	int fd = rw_open(O_NONBLOCK);
	char *p = rw_map_pages(2);
	struct regwatch_record rec[2];
	struct regwatch_status *st;
	struct regwatch_watch a, b;

	rw_set_capacity(fd, 1);
	st = rw_map_status(fd, 1);
	a = rw_watch(fd, p, rw_page(), 30);
	ASSERT_EQ(rw_unwatch(fd, a.slot, a.cookie), 0);
	b = rw_watch(fd, p + rw_page(), rw_page(), 31);
	ASSERT_EQ(b.slot, a.slot);
	ASSERT_EQ(munmap(p, rw_page()), 0);
	ASSERT_EQ(rw_word(st, b.slot), b.seq);
	ASSERT_EQ(rw_drain(fd, rec, 2), 0);
	ASSERT_EQ(munmap(p + rw_page(), rw_page()), 0);
	ASSERT_EQ(rw_drain(fd, rec, 2), 1);
	EXPECT_EQ(rec[0].cookie, 31);
	EXPECT_EQ(rec[0].seq, b.seq);
	EXPECT_EQ(rec[0].reason, REGWATCH_REASON_UNMAP);
	close(fd);
}

TEST_F(ev, madvise_free)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch w = rw_watch(self->fd, p, 4 * self->page, 9);
	uint64_t gen0 = rw_gen(self->st);

	ASSERT_EQ(madvise(p, 4 * self->page, MADV_FREE), 0);
	expect_dirty_once(self, &w, REGWATCH_REASON_CLEAR, gen0);
}

TEST_F(ev, madvise_remove_memfd)
{
	int mfd = memfd_create("regwatch", 0);
	struct regwatch_watch w;
	uint64_t gen0;
	char *p;

	ASSERT_GE(mfd, 0);
	ASSERT_EQ(ftruncate(mfd, 4 * self->page), 0);
	p = mmap(NULL, 4 * self->page, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	ASSERT_NE(p, MAP_FAILED);
	memset(p, 1, 4 * self->page);
	w = rw_watch(self->fd, p + 2 * self->page, 2 * self->page, 10);
	gen0 = rw_gen(self->st);
	ASSERT_EQ(madvise(p + 2 * self->page, self->page, MADV_REMOVE), 0);
	expect_dirty_once(self, &w, REGWATCH_REASON_CLEAR, gen0);
	close(mfd);
}

TEST_F(ev, brk_shrink)
{
	uintptr_t cur = (uintptr_t)sbrk(0);
	uintptr_t base = (cur + self->page - 1) & ~(uintptr_t)(self->page - 1);
	struct regwatch_watch low, high;
	uint64_t gen0;

	ASSERT_NE(sbrk(base - cur + 4 * self->page), (void *)-1);
	memset((void *)base, 3, 4 * self->page);
	low = rw_watch(self->fd, (void *)base, self->page, 11);
	high = rw_watch(self->fd, (void *)(base + 2 * self->page), 2 * self->page, 12);
	gen0 = rw_gen(self->st);
	ASSERT_NE(sbrk(-2 * self->page), (void *)-1);
	ASSERT_EQ(rw_word(self->st, low.slot), low.seq);
	expect_dirty_once(self, &high, REGWATCH_REASON_UNMAP, gen0);
}

TEST_F(ev, shmdt)
{
	int id = shmget(IPC_PRIVATE, 4 * self->page, IPC_CREAT | 0600);
	struct regwatch_watch w;
	uint64_t gen0;
	char *p;

	ASSERT_GE(id, 0);
	p = shmat(id, NULL, 0);
	shmctl(id, IPC_RMID, NULL);
	ASSERT_NE(p, (char *)-1);
	memset(p, 4, 4 * self->page);
	w = rw_watch(self->fd, p, 4 * self->page, 13);
	gen0 = rw_gen(self->st);
	ASSERT_EQ(shmdt(p), 0);
	expect_dirty_once(self, &w, REGWATCH_REASON_UNMAP, gen0);
}

static int online_nodes(void)
{
	char buf[64] = "";
	FILE *f = fopen("/sys/devices/system/node/online", "r");
	int lo = 0, hi = 0;

	if (!f)
		return 1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	if (sscanf(buf, "%d-%d", &lo, &hi) == 2)
		return hi - lo + 1;
	return 1;
}

/* With two NUMA nodes: move_pages(2) to the other node. */
TEST_F(ev, migrate_move_pages)
{
	char *p = rw_map_pages(2);
	struct regwatch_watch w;
	int node = -1, status = -1, target;
	void *pages[1] = { p };
	uint64_t gen0;

	if (online_nodes() < 2)
		SKIP(, "one NUMA node (boot the VM with two: vng --numa ...); "
		     "migrate_soft_offline covers migration");
	ASSERT_EQ(syscall(SYS_move_pages, 0, 1, pages, NULL, &node, 0), 0);
	target = node == 0 ? 1 : 0;
	w = rw_watch(self->fd, p, 2 * self->page, 14);
	gen0 = rw_gen(self->st);
	ASSERT_EQ(syscall(SYS_move_pages, 0, 1, pages, &target, &status,
			  MPOL_MF_MOVE), 0);
	ASSERT_EQ(status, target);
	expect_dirty_once(self, &w, REGWATCH_REASON_CLEAR, gen0);
}

/*
 * Migration on a single node: soft-offlining a page migrates its contents
 * to a new page (root only; poisons the old frame, fine in a test VM).
 */
TEST_F(ev, migrate_soft_offline)
{
	char *p = rw_map_pages(2);
	struct regwatch_watch w;
	uint64_t gen0;

	if (geteuid() != 0 || !rw_in_vm())
		SKIP(, "needs root inside the test VM (poisons a page frame)");
	w = rw_watch(self->fd, p, 2 * self->page, 15);
	gen0 = rw_gen(self->st);
	ASSERT_EQ(madvise(p, self->page, MADV_SOFT_OFFLINE), 0);
	ASSERT_EQ(p[0], 0x5a);
	expect_dirty_once(self, &w, REGWATCH_REASON_CLEAR, gen0);
}

TEST_F(ev, mprotect_not_dirty)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch w = rw_watch(self->fd, p, 4 * self->page, 16);
	uint64_t gen0 = rw_gen(self->st);

	ASSERT_EQ(mprotect(p, 4 * self->page, PROT_READ), 0);
	ASSERT_EQ(mprotect(p + self->page, self->page, PROT_NONE), 0);
	ASSERT_EQ(mprotect(p, 4 * self->page, PROT_READ | PROT_WRITE), 0);
	p[0] = 1;
	expect_clean(self, &w, gen0);
}

/*
 * The kernel over-invalidates, and a watch must follow it: splitting a VMA
 * that spans a whole 2 MiB-aligned range at an unaligned address sends
 * MMU_NOTIFY_CLEAR for that whole range before looking for a huge page to
 * split (vma_adjust_trans_huge()), so an mprotect of one page dirties a
 * watch 1 MiB away whose pages never changed. Seen on 6.12 and 7.3.4; a
 * kernel that stops doing it fails here, and the stress test's note on
 * shared mappings can go.
 */
TEST_F(ev, vma_split_clears_its_whole_pmd_range)
{
	const size_t huge = 2UL << 20;
	char *area = mmap(NULL, 2 * huge, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *base, *far;
	struct regwatch_watch w;
	uint64_t gen0;

	ASSERT_NE(area, MAP_FAILED);
	base = (char *)(((uintptr_t)area + huge - 1) & ~(uintptr_t)(huge - 1));
	/* no huge page anywhere: the invalidation is for nothing */
	ASSERT_EQ(madvise(area, 2 * huge, MADV_NOHUGEPAGE), 0);
	far = base + huge / 2;
	memset(far, 0x5a, 2 * self->page);
	w = rw_watch(self->fd, far, 2 * self->page, 19);
	gen0 = rw_gen(self->st);

	ASSERT_EQ(mprotect(base + self->page, self->page, PROT_READ), 0);
	expect_dirty_once(self, &w, REGWATCH_REASON_CLEAR, gen0);
	ASSERT_EQ(far[0], 0x5a);
	ASSERT_EQ(munmap(area, 2 * huge), 0);
}

TEST_F(ev, strict_mode_mprotect_dirty)
{
	struct regwatch_api api = { .api = REGWATCH_API,
				    .features = REGWATCH_FEATURE_STRICT };
	char *p = rw_map_pages(4);
	struct regwatch_watch w;
	uint64_t gen0;

	ASSERT_EQ(ioctl(self->fd, REGWATCH_IOC_API, &api), 0);
	ASSERT_EQ(api.features, REGWATCH_FEATURE_STRICT);
	w = rw_watch(self->fd, p, 4 * self->page, 17);
	gen0 = rw_gen(self->st);
	ASSERT_EQ(mprotect(p, self->page, PROT_READ), 0);
	expect_dirty_once(self, &w, REGWATCH_REASON_PROTECTION, gen0);
}

TEST_F(ev, reads_and_writes_not_dirty)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch w = rw_watch(self->fd, p, 4 * self->page, 18);
	uint64_t gen0 = rw_gen(self->st);
	volatile char sum = 0;

	for (long i = 0; i < 4 * self->page; i++) {
		sum += p[i];
		p[i] = (char)i;
	}
	(void)sum;
	expect_clean(self, &w, gen0);
}

/* A read-faulted page maps the shared zero page; writing replaces it. */
TEST_F(ev, write_after_zero_page_read_dirty)
{
	volatile char *p = mmap(NULL, self->page, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct regwatch_watch w;
	uint64_t gen0;

	ASSERT_NE(p, MAP_FAILED);
	madvise((void *)p, self->page, MADV_NOHUGEPAGE);
	ASSERT_EQ(p[0], 0);
	w = rw_watch(self->fd, (void *)p, self->page, 19);
	gen0 = rw_gen(self->st);
	p[0] = 1;
	expect_dirty_once(self, &w, REGWATCH_REASON_CLEAR, gen0);
}

static pid_t fork_child_that_waits(int *release_fd, char *touch, long len)
{
	int go[2];
	pid_t pid;
	char c;

	ASSERT_EQ(pipe(go), 0);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		close(go[1]);
		if (touch)
			memset(touch, 0x77, len);
		if (read(go[0], &c, 1) < 0)
			_exit(2);
		_exit(0);
	}
	close(go[0]);
	*release_fd = go[1];
	return pid;
}

static void release_child(int release_fd, pid_t pid)
{
	int status;

	close(release_fd);
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST_F(ev, fork_not_dirty)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch w = rw_watch(self->fd, p, 4 * self->page, 20);
	uint64_t gen0 = rw_gen(self->st);
	int release;
	pid_t pid = fork_child_that_waits(&release, NULL, 0);

	/* the parent reads while the child shares every page */
	ASSERT_EQ(p[self->page], 0x5a);
	expect_clean(self, &w, gen0);
	release_child(release, pid);
	expect_clean(self, &w, gen0);
}

TEST_F(ev, child_writes_after_fork_not_dirty)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch w = rw_watch(self->fd, p, 4 * self->page, 21);
	uint64_t gen0 = rw_gen(self->st);
	int release;
	pid_t pid = fork_child_that_waits(&release, p, 4 * self->page);

	release_child(release, pid);
	ASSERT_EQ(p[0], 0x5a);
	expect_clean(self, &w, gen0);
}

TEST_F(ev, parent_cow_break_after_fork_dirty)
{
	char *p = rw_map_pages(4);
	struct regwatch_watch w = rw_watch(self->fd, p, 4 * self->page, 22);
	uint64_t gen0 = rw_gen(self->st);
	int release;
	pid_t pid = fork_child_that_waits(&release, NULL, 0);

	expect_clean(self, &w, gen0);
	p[2 * self->page] = 1;	/* the child still shares this page */
	expect_dirty_once(self, &w, REGWATCH_REASON_CLEAR, gen0);
	release_child(release, pid);
}

TEST_HARNESS_MAIN
