// SPDX-License-Identifier: GPL-2.0
/*
 * Unprivileged users and memory cgroups: nobody can use /dev/regwatch, the
 * kernel memory of an fd is charged to the caller's memory cgroup and
 * follows the watches in use (not the capacity), a memory cgroup of a few
 * MiB gets ENOMEM (never an OOM kill), and one user's watches are limited by
 * max_user_watches (ENOSPC) without touching another user's.
 */
#include <grp.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include "regwatch_util.h"

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

#define CG_ROOT "/sys/fs/cgroup"
#define NOBODY 65534
#define SLOTS 200000
#define WATCHES 20000

static bool write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	bool ok;

	if (!f)
		return false;
	ok = fputs(text, f) >= 0;
	return (fclose(f) == 0) && ok;
}

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/* The value of @key in a flat-keyed cgroup file such as memory.events. */
static long read_key(const char *path, const char *key)
{
	FILE *f = fopen(path, "r");
	char name[64];
	long v, found = -1;

	if (!f)
		return -1;
	while (fscanf(f, "%63s %ld", name, &v) == 2)
		if (!strcmp(name, key))
			found = v;
	fclose(f);
	return found;
}

/* cgroup v2 at CG_ROOT with the memory controller for children, or skip. */
static void require_memcg(void)
{
	struct statfs sfs;

	if (geteuid() != 0)
		SKIP(, "needs root to create a cgroup and drop to nobody");
	if (statfs(CG_ROOT, &sfs) || sfs.f_type != CGROUP2_SUPER_MAGIC) {
		if (mount("cgroup2", CG_ROOT, "cgroup2", 0, NULL))
			SKIP(, "cannot mount cgroup2 at " CG_ROOT ": %s",
			     strerror(errno));
	}
	if (!write_file(CG_ROOT "/cgroup.subtree_control", "+memory"))
		SKIP(, "memory controller unavailable: %s", strerror(errno));
}

/* A new memory cgroup for this test, limited to @max ("max": no limit). */
static void make_cgroup(char *cg, size_t len, const char *test,
			const char *max)
{
	char path[192];

	require_memcg();
	snprintf(cg, len, CG_ROOT "/regwatch-%s-%d", test, getpid());
	ASSERT_EQ(mkdir(cg, 0755), 0);
	snprintf(path, sizeof(path), "%s/memory.max", cg);
	ASSERT_TRUE(write_file(path, max));
	snprintf(path, sizeof(path), "%s/memory.swap.max", cg);
	write_file(path, "0");	/* absent without swap accounting: fine */
}

/* Moves the calling process into @cg: its new allocations are charged there. */
static void join_cgroup(const char *cg)
{
	char path[192], pid[32];

	snprintf(path, sizeof(path), "%s/cgroup.procs", cg);
	snprintf(pid, sizeof(pid), "%d\n", getpid());
	ASSERT_TRUE(write_file(path, pid));
}

static long cgroup_value(const char *cg, const char *file)
{
	char path[192];

	snprintf(path, sizeof(path), "%s/%s", cg, file);
	return read_long(path);
}

static void drop_to(uid_t uid)
{
	ASSERT_EQ(setgroups(0, NULL), 0);
	ASSERT_EQ(setgid(uid), 0);
	ASSERT_EQ(setuid(uid), 0);
	ASSERT_EQ(geteuid(), uid);
}

/* Waits for a test's child: whether it exited with 0. */
static bool child_passed(pid_t pid)
{
	int status;

	if (waitpid(pid, &status, 0) != pid)
		return false;
	if (WIFSIGNALED(status))
		TH_LOG("child killed by signal %d", WTERMSIG(status));
	return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static void wait_child(pid_t pid)
{
	ASSERT_TRUE(child_passed(pid));
}

TEST(nobody_uses_it_and_is_charged)
{
	char cg[128];
	pid_t pid;

	rw_require_device();
	make_cgroup(cg, sizeof(cg), "unpriv", "max");
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		long before, after;
		char *p;
		int fd;

		join_cgroup(cg);
		drop_to(NOBODY);
		p = rw_map_pages(16);
		fd = rw_open(O_NONBLOCK);
		before = cgroup_value(cg, "memory.current");
		ASSERT_GE(before, 0);
		rw_set_capacity(fd, SLOTS);
		rw_map_status(fd, SLOTS);
		for (int i = 0; i < WATCHES; i++)
			rw_watch(fd, p + (i % 16) * rw_page(), rw_page(), i);
		after = cgroup_value(cg, "memory.current");
		printf("# nobody: memory.current +%ld bytes for %d watches, capacity %d (%.1f/watch)\n",
		       after - before, WATCHES, SLOTS,
		       (double)(after - before) / WATCHES);
		/* the watches' storage is charged (112 bytes each at least) */
		ASSERT_GE(after - before, (long)WATCHES * 112);
		/* ... and only theirs: 128 bytes each and a chunk's slack */
		ASSERT_LE(after - before, (long)WATCHES * 128 + 128 * 1024);
		ASSERT_EQ(munmap(p, 16 * rw_page()), 0);
		{
			struct regwatch_record rec[16];

			ASSERT_EQ(rw_drain(fd, rec, 16), 16);
		}
		close(fd);
		_exit(0);
	}
	wait_child(pid);
	rmdir(cg);
}

/* An fd at its default capacity with one watch costs kilobytes, not MBs. */
TEST(fd_memory_follows_watches_not_capacity)
{
	enum { fds = 32 };
	char cg[128];
	pid_t pid;

	rw_require_device();
	make_cgroup(cg, sizeof(cg), "perfd", "max");
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		long slots = rw_module_counter("default_slots"), before, after;
		char *p = rw_map_pages(1);
		int fd[fds];

		join_cgroup(cg);
		before = cgroup_value(cg, "memory.current");
		for (int i = 0; i < fds; i++) {
			fd[i] = rw_open(0);
			rw_map_status(fd[i], slots);
			rw_watch(fd[i], p, 1, i);
		}
		after = cgroup_value(cg, "memory.current");
		printf("# %d fds with %ld slots and one watch each: %.0f bytes/fd\n",
		       fds, slots, (double)(after - before) / fds);
		ASSERT_LE((after - before) / fds, 96 * 1024);
		for (int i = 0; i < fds; i++)
			close(fd[i]);
		_exit(0);
	}
	wait_child(pid);
	rmdir(cg);
}

/*
 * In a 4 MiB memory cgroup the largest capacity, the watches until memory
 * runs out and a new fd's first watch get ENOMEM, and nothing is killed.
 * A page fault at the limit would be an OOM kill, as for any process, so
 * the child needs no page it does not have until it closed the fds: its
 * stack and the status mappings are touched beforehand, and every page it
 * has (its program text above all) is faulted in and locked before it
 * joins the cgroup. Without that lock, the reclaim that the module's
 * charges run at the limit evicts the program's own text pages (read in
 * after joining, so charged to the cgroup), and the next instruction
 * fetch faults them back in with GFP_HIGHUSER_MOVABLE: the memcg OOM kill
 * of issue 13, whose report on 7.3.4 named filemap_fault, not the module.
 */
TEST(small_memcg_gets_enomem_not_oom_kill)
{
	char cg[128];
	pid_t pid;

	rw_require_device();
	make_cgroup(cg, sizeof(cg), "enomem", "4M");
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		uint64_t max = rw_module_counter("max_slots");
		volatile char stack[64 * 1024];
		struct regwatch_status *st, *st2;
		struct regwatch_watch w;
		long watched = 0;
		int fd, fd2, err;

		memset((char *)stack, 1, sizeof(stack));
		ASSERT_EQ(mlockall(MCL_CURRENT), 0);
		join_cgroup(cg);
		fd = rw_open(0);
		fd2 = rw_open(0);
		rw_set_capacity(fd, max);
		st = rw_map_status(fd, max);
		st2 = rw_map_status(fd2, rw_module_counter("default_slots"));
		/* their page tables now: a fault at the limit is an OOM kill */
		ASSERT_EQ(st->total_watched + st2->total_watched, 0);
		for (;;) {
			if (rw_try_watch(fd, (void *)((watched + 1) << 20), 1,
					 watched, &w))
				break;
			watched++;
		}
		err = errno;
		/* a fresh fd's first watch needs a chunk: no room either */
		ASSERT_ERRNO(rw_try_watch(fd2, (void *)(1UL << 20), 1, 1, &w),
			     ENOMEM);
		ASSERT_EQ(st2->total_watched, 0);
		ASSERT_EQ(st->total_watched, watched);
		close(fd);
		close(fd2);
		printf("# 4 MiB memcg: %ld watches, then %s\n", watched,
		       strerror(err));
		ASSERT_EQ(err, ENOMEM);
		ASSERT_GT(watched, 1000);
		_exit(0);
	}
	wait_child(pid);
	{
		char path[192];

		snprintf(path, sizeof(path), "%s/memory.events", cg);
		EXPECT_EQ(read_key(path, "oom_kill"), 0);
	}
	rmdir(cg);
}

/*
 * With max_user_watches at 100, nobody's 101st watch over two fds gets
 * ENOSPC and changes nothing; root's watches are counted apart; closing an
 * fd gives its watches back.
 */
TEST(user_limit_gives_enospc)
{
	enum { limit = 100 };
	int to_parent[2], to_child[2];
	bool passed;
	long old_limit;
	pid_t pid;
	char go;

	rw_require_device();
	if (geteuid() != 0)
		SKIP(, "needs root to set max_user_watches and drop to nobody");
	old_limit = rw_set_module_param("max_user_watches", limit);
	ASSERT_EQ(pipe(to_parent), 0);
	ASSERT_EQ(pipe(to_child), 0);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		struct regwatch_api api = { .api = REGWATCH_API };
		struct regwatch_status *st1, *st2;
		struct regwatch_watch w, last;
		int fd1, fd2;
		char *p;

		drop_to(NOBODY);
		p = rw_map_pages(1);
		fd1 = rw_open(0);
		fd2 = rw_open(0);
		rw_set_capacity(fd1, limit);
		rw_set_capacity(fd2, limit);
		st1 = rw_map_status(fd1, limit);
		st2 = rw_map_status(fd2, limit);
		ASSERT_EQ(ioctl(fd1, REGWATCH_IOC_API, &api), 0);
		ASSERT_EQ(api.max_user_watches, limit);
		ASSERT_EQ(api.user_watches, 0);
		for (int i = 0; i < 60; i++)
			rw_watch(fd1, p, 1, i);
		for (int i = 0; i < 40; i++)
			last = rw_watch(fd2, p, 1, i);
		ASSERT_ERRNO(rw_try_watch(fd1, p, 1, 99, &w), ENOSPC);
		ASSERT_ERRNO(rw_try_watch(fd2, p, 1, 99, &w), ENOSPC);
		EXPECT_EQ(st1->total_watched, 60);
		EXPECT_EQ(st2->total_watched, 40);
		ASSERT_EQ(ioctl(fd2, REGWATCH_IOC_API, &api), 0);
		ASSERT_EQ(api.user_watches, limit);

		/* root watches while nobody is at the limit */
		ASSERT_EQ(write(to_parent[1], "x", 1), 1);
		ASSERT_EQ(read(to_child[0], &go, 1), 1);

		ASSERT_EQ(rw_unwatch(fd2, last.slot, last.cookie), 0);
		w = rw_watch(fd1, p, 1, 60);
		EXPECT_EQ(w.slot, 60);
		EXPECT_EQ(w.seq, 2 * 61);
		/* the mapping holds the file: the watches go with both */
		ASSERT_EQ(munmap(st2, REGWATCH_STATUS_SIZE(limit, rw_page())), 0);
		close(fd2);
		ASSERT_EQ(ioctl(fd1, REGWATCH_IOC_API, &api), 0);
		EXPECT_EQ(api.user_watches, 61);
		close(fd1);
		_exit(0);
	}
	if (read(to_parent[0], &go, 1) == 1) {
		int fd = rw_open(0);
		struct regwatch_api api = { .api = REGWATCH_API };
		char *p = rw_map_pages(1);

		for (int i = 0; i < limit / 2; i++)
			rw_watch(fd, p, 1, i);
		ASSERT_EQ(ioctl(fd, REGWATCH_IOC_API, &api), 0);
		EXPECT_EQ(api.user_watches, limit / 2);
		close(fd);
		ASSERT_EQ(write(to_child[1], "x", 1), 1);
	}
	passed = child_passed(pid);
	rw_set_module_param("max_user_watches", old_limit);
	ASSERT_TRUE(passed);
}

TEST_HARNESS_MAIN
