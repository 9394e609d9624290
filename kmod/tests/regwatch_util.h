/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the regwatch tests.
 */
#ifndef REGWATCH_TEST_UTIL_H
#define REGWATCH_TEST_UTIL_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <linux/regwatch.h>

#include "harness.h"

#define RW_DEV "/dev/regwatch"

static inline long rw_page(void)
{
	return sysconf(_SC_PAGESIZE);
}

static inline bool rw_in_vm(void)
{
	const char *vm = getenv("REGCACHE_VM");

	return vm && !strcmp(vm, "1");
}

/* Skip on a host without the module; inside the test VM that is a failure. */
static inline void rw_require_device(void)
{
	if (access(RW_DEV, F_OK) == 0)
		return;
	if (rw_in_vm()) {
		TH_LOG(RW_DEV " missing inside the VM (REGCACHE_VM=1)");
		th_fail(true);
	}
	SKIP(, RW_DEV " not present (module not loaded on this machine)");
}

static inline int rw_open(int flags)
{
	int fd;

	rw_require_device();
	fd = open(RW_DEV, O_RDWR | O_CLOEXEC | flags);
	if (fd < 0) {
		TH_LOG("open " RW_DEV ": %s", strerror(errno));
		th_fail(true);
	}
	return fd;
}

static inline uint64_t rw_set_capacity(int fd, uint64_t slots)
{
	struct regwatch_capacity cap = { .slots = slots };

	ASSERT_EQ(ioctl(fd, REGWATCH_IOC_SET_CAPACITY, &cap), 0);
	ASSERT_EQ(cap.status_size, REGWATCH_STATUS_SIZE(slots, rw_page()));
	return cap.status_size;
}

static inline struct regwatch_status *rw_map_status(int fd, uint64_t slots)
{
	void *p = mmap(NULL, REGWATCH_STATUS_SIZE(slots, rw_page()), PROT_READ,
		       MAP_SHARED, fd, 0);

	if (p == MAP_FAILED) {
		TH_LOG("mmap status: %s", strerror(errno));
		th_fail(true);
	}
	return p;
}

static inline int rw_try_watch(int fd, const void *start, uint64_t length,
			       uint64_t cookie, struct regwatch_watch *w)
{
	memset(w, 0, sizeof(*w));
	w->start = (uintptr_t)start;
	w->length = length;
	w->cookie = cookie;
	return ioctl(fd, REGWATCH_IOC_WATCH, w);
}

static inline struct regwatch_watch rw_watch(int fd, const void *start,
					     uint64_t length, uint64_t cookie)
{
	struct regwatch_watch w;

	ASSERT_EQ(rw_try_watch(fd, start, length, cookie, &w), 0);
	ASSERT_EQ(w.seq & REGWATCH_SEQ_DIRTY, 0);
	ASSERT_NE(w.seq, 0);
	return w;
}

/* REGWATCH_WATCH_UNWATCH: watch [start, +length) in place of {slot, cookie}. */
static inline int rw_instead(int fd, uint64_t victim_slot,
			     uint64_t victim_cookie, const void *start,
			     uint64_t length, uint64_t cookie,
			     struct regwatch_watch *w)
{
	memset(w, 0, sizeof(*w));
	w->start = (uintptr_t)start;
	w->length = length;
	w->cookie = cookie;
	w->flags = REGWATCH_WATCH_UNWATCH;
	w->slot = victim_slot;
	w->unwatch_cookie = victim_cookie;
	return ioctl(fd, REGWATCH_IOC_WATCH, w);
}

static inline int rw_unwatch(int fd, uint64_t slot, uint64_t cookie)
{
	struct regwatch_unwatch u = { .slot = slot, .cookie = cookie };

	return ioctl(fd, REGWATCH_IOC_UNWATCH, &u);
}

static inline uint64_t rw_word(const struct regwatch_status *st, uint64_t slot)
{
	return __atomic_load_n(&REGWATCH_STATUS_SEQ(st)[slot], __ATOMIC_ACQUIRE);
}

static inline uint64_t rw_gen(const struct regwatch_status *st)
{
	return __atomic_load_n(&st->generation, __ATOMIC_ACQUIRE);
}

/* Read every pending record of a non-blocking fd; ends on EAGAIN. */
static inline int rw_drain(int fd, struct regwatch_record *rec, int max)
{
	int n = 0;

	for (;;) {
		ssize_t r = read(fd, rec + n, (max - n) * sizeof(*rec));

		if (r < 0) {
			ASSERT_EQ(errno, EAGAIN);
			return n;
		}
		ASSERT_EQ(r % sizeof(*rec), 0);
		ASSERT_GT(r, 0);
		n += r / sizeof(*rec);
		if (n == max)
			return n;
	}
}

/* Whether the module parameter strict=1 forces strict mode on every fd. */
static inline bool rw_module_strict(void)
{
	FILE *f = fopen("/sys/module/regwatch/parameters/strict", "r");
	int c;

	ASSERT_TRUE(f != NULL);
	c = fgetc(f);
	fclose(f);
	return c == 'Y';
}

/* A module-wide counter from /sys/module/regwatch/parameters/. */
static inline long rw_module_counter(const char *name)
{
	char path[128];
	long val = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/regwatch/parameters/%s", name);
	f = fopen(path, "r");
	if (!f) {
		TH_LOG("%s: %s", path, strerror(errno));
		th_fail(true);
	}
	if (fscanf(f, "%ld", &val) != 1) {
		TH_LOG("%s: not a number", path);
		th_fail(true);
	}
	fclose(f);
	return val;
}

/* Set a writable module parameter (root only); returns its old value. */
static inline long rw_set_module_param(const char *name, long value)
{
	long old = rw_module_counter(name);
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/regwatch/parameters/%s", name);
	f = fopen(path, "w");
	if (!f || fprintf(f, "%ld\n", value) < 0 || fclose(f)) {
		TH_LOG("%s: cannot write %ld: %s", path, value, strerror(errno));
		th_fail(true);
	}
	return old;
}

/* Let this (root) test have at least @watches watches alive. */
static inline void rw_allow_user_watches(long watches)
{
	if (rw_module_counter("max_user_watches") < watches)
		rw_set_module_param("max_user_watches", watches);
}

/* Wait up to 5 s for a module counter to reach a value (deferred fput). */
static inline long rw_wait_counter(const char *name, long want)
{
	long val = rw_module_counter(name);

	for (int i = 0; i < 500 && val != want; i++) {
		usleep(10000);
		val = rw_module_counter(name);
	}
	return val;
}

static inline uint64_t rw_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* A field of /proc/meminfo, in kB. */
static inline long rw_meminfo_kb(const char *key)
{
	char line[256];
	long val = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	ASSERT_TRUE(f != NULL);
	while (fgets(line, sizeof(line), f)) {
		size_t n = strlen(key);

		if (!strncmp(line, key, n) && line[n] == ':') {
			val = atol(line + n + 1);
			break;
		}
	}
	fclose(f);
	ASSERT_GE(val, 0);
	return val;
}

/* Kernel memory in use: slab and vmalloc, in kB. */
static inline long rw_kernel_kb(void)
{
	return rw_meminfo_kb("Slab") + rw_meminfo_kb("VmallocUsed");
}

/* Anonymous private read-write pages, written once so they are present. */
static inline char *rw_map_pages(size_t pages)
{
	size_t len = pages * rw_page();
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(p, MAP_FAILED);
	memset(p, 0x5a, len);
	return p;
}

#endif /* REGWATCH_TEST_UTIL_H */
