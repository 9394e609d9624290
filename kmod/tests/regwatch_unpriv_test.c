// SPDX-License-Identifier: GPL-2.0
/*
 * An unprivileged user (nobody) can use /dev/regwatch, and the kernel
 * memory of its fd is charged to the memory cgroup it runs in.
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

TEST(nobody_uses_it_and_is_charged)
{
	char cg[128], path[192], pidbuf[32];
	int status;
	pid_t pid;

	rw_require_device();
	require_memcg();
	snprintf(cg, sizeof(cg), CG_ROOT "/regwatch-unpriv-%d", getpid());
	ASSERT_EQ(mkdir(cg, 0755), 0);

	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		long before, after;
		char *p;
		int fd;

		snprintf(path, sizeof(path), "%s/cgroup.procs", cg);
		snprintf(pidbuf, sizeof(pidbuf), "%d\n", getpid());
		ASSERT_TRUE(write_file(path, pidbuf));
		ASSERT_EQ(setgroups(0, NULL), 0);
		ASSERT_EQ(setgid(NOBODY), 0);
		ASSERT_EQ(setuid(NOBODY), 0);
		ASSERT_EQ(geteuid(), NOBODY);

		snprintf(path, sizeof(path), "%s/memory.current", cg);
		p = rw_map_pages(16);
		fd = rw_open(O_NONBLOCK);
		before = read_long(path);
		ASSERT_GE(before, 0);
		rw_set_capacity(fd, SLOTS);
		rw_map_status(fd, SLOTS);
		for (int i = 0; i < 1000; i++)
			rw_watch(fd, p + (i % 16) * rw_page(), rw_page(), i);
		after = read_long(path);
		printf("# nobody: memory.current +%ld bytes for %d slots (%.1f/slot)\n",
		       after - before, SLOTS, (double)(after - before) / SLOTS);
		/* the per-slot watch array and status words: 120 bytes/slot */
		ASSERT_GE(after - before, (long)SLOTS * 120 * 9 / 10);
		ASSERT_EQ(munmap(p, 16 * rw_page()), 0);
		{
			struct regwatch_record rec[16];

			ASSERT_EQ(rw_drain(fd, rec, 16), 16);
		}
		close(fd);
		_exit(0);
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	rmdir(cg);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST_HARNESS_MAIN
