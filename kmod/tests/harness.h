/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A small test harness in the style of the kernel's kselftest harness:
 * TEST(), FIXTURE()/FIXTURE_SETUP()/FIXTURE_TEARDOWN()/TEST_F(), ASSERT_*
 * (stop the test) and EXPECT_* (record a failure, go on), SKIP(), TH_LOG().
 * Each test runs in its own forked child with a timeout; results are
 * printed as TAP 13, the exit status is 1 if any test failed.
 *
 * Usage: ./test [-t name]...   run only the named tests.
 */
#ifndef REGWATCH_TEST_HARNESS_H
#define REGWATCH_TEST_HARNESS_H

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef TEST_TIMEOUT_SECONDS
#define TEST_TIMEOUT_SECONDS 120
#endif

struct th_test {
	const char *name;
	void (*run)(struct th_test *t);
	struct th_test *next;
};

/* Shared with the forked child: survives its exit. */
struct th_result {
	bool failed;
	bool skipped;
	char skip_reason[256];
};

static struct th_test *th_first, *th_last;
static struct th_result *th_result;

static inline void th_register(struct th_test *t)
{
	if (th_last)
		th_last->next = t;
	else
		th_first = t;
	th_last = t;
}

#define TH_LOG(fmt, ...) \
	fprintf(stderr, "# %s:%d: " fmt "\n", __FILE__, __LINE__, ##__VA_ARGS__)

#define TEST(test_name)							\
	static void th_run_##test_name(struct th_test *t);		\
	static struct th_test th_test_##test_name = {			\
		.name = #test_name, .run = th_run_##test_name,		\
	};								\
	static void __attribute__((constructor)) th_reg_##test_name(void) \
	{								\
		th_register(&th_test_##test_name);			\
	}								\
	static void th_run_##test_name(struct th_test *t __attribute__((unused)))

#define FIXTURE(fixture_name) struct th_fixture_##fixture_name

#define FIXTURE_SETUP(fixture_name) \
	static void th_setup_##fixture_name(struct th_fixture_##fixture_name *self)

#define FIXTURE_TEARDOWN(fixture_name) \
	static void th_teardown_##fixture_name(struct th_fixture_##fixture_name *self)

#define TEST_F(fixture_name, test_name)					\
	static void th_body_##fixture_name##_##test_name(		\
		struct th_fixture_##fixture_name *self);		\
	TEST(fixture_name##_##test_name)				\
	{								\
		struct th_fixture_##fixture_name self;			\
		memset(&self, 0, sizeof(self));				\
		th_setup_##fixture_name(&self);				\
		th_body_##fixture_name##_##test_name(&self);		\
		th_teardown_##fixture_name(&self);			\
	}								\
	static void th_body_##fixture_name##_##test_name(		\
		struct th_fixture_##fixture_name *self)

/* Stop the current test as skipped; the statement runs first (cleanup). */
#define SKIP(statement, fmt, ...) do {					\
	snprintf(th_result->skip_reason, sizeof(th_result->skip_reason), \
		 fmt, ##__VA_ARGS__);					\
	th_result->skipped = true;					\
	statement;							\
	_exit(0);							\
} while (0)

static inline void th_fail(bool fatal)
{
	th_result->failed = true;
	if (fatal)
		_exit(1);
}

#define TH_CMP(fatal, a, op, b) do {					\
	long long th_a = (long long)(a), th_b = (long long)(b);	\
	if (!(th_a op th_b)) {						\
		TH_LOG("expected %s (%lld) %s %s (%lld)", #a, th_a, #op, #b, th_b); \
		th_fail(fatal);						\
	}								\
} while (0)

#define ASSERT_EQ(a, b) TH_CMP(true, a, ==, b)
#define ASSERT_NE(a, b) TH_CMP(true, a, !=, b)
#define ASSERT_LT(a, b) TH_CMP(true, a, <, b)
#define ASSERT_LE(a, b) TH_CMP(true, a, <=, b)
#define ASSERT_GT(a, b) TH_CMP(true, a, >, b)
#define ASSERT_GE(a, b) TH_CMP(true, a, >=, b)
#define ASSERT_TRUE(a) TH_CMP(true, !!(a), ==, 1)
#define ASSERT_FALSE(a) TH_CMP(true, !!(a), ==, 0)
#define EXPECT_EQ(a, b) TH_CMP(false, a, ==, b)
#define EXPECT_NE(a, b) TH_CMP(false, a, !=, b)
#define EXPECT_TRUE(a) TH_CMP(false, !!(a), ==, 1)
#define EXPECT_FALSE(a) TH_CMP(false, !!(a), ==, 0)

/* Assert that a call returned -1 with errno set to err. */
#define ASSERT_ERRNO(call, err) do {					\
	errno = 0;							\
	long long th_ret = (long long)(call);				\
	int th_errno = errno;						\
	if (th_ret != -1 || th_errno != (err)) {			\
		TH_LOG("%s: expected -1/%s, got %lld/%s", #call,	\
		       strerror(err), th_ret, strerror(th_errno));	\
		th_fail(true);						\
	}								\
} while (0)

static inline bool th_selected(const char *name, int argc, char **argv)
{
	bool any = false;

	for (int i = 1; i + 1 < argc; i++) {
		if (strcmp(argv[i], "-t"))
			continue;
		any = true;
		if (!strcmp(argv[++i], name))
			return true;
	}
	return !any;
}

static inline int th_run_one(struct th_test *t)
{
	int status;
	pid_t pid;

	memset(th_result, 0, sizeof(*th_result));
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		perror("fork");
		return 1;
	}
	if (!pid) {
		alarm(TEST_TIMEOUT_SECONDS);
		t->run(t);
		_exit(th_result->failed);
	}
	if (waitpid(pid, &status, 0) != pid)
		return 1;
	if (WIFSIGNALED(status)) {
		TH_LOG("%s: killed by signal %d%s", t->name, WTERMSIG(status),
		       WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
		return 1;
	}
	return th_result->failed || WEXITSTATUS(status);
}

static inline int th_main(int argc, char **argv)
{
	int n = 0, idx = 0, pass = 0, fail = 0, skip = 0;
	struct th_test *t;

	th_result = mmap(NULL, sizeof(*th_result), PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (th_result == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (t = th_first; t; t = t->next)
		n += th_selected(t->name, argc, argv);
	printf("TAP version 13\n1..%d\n", n);
	for (t = th_first; t; t = t->next) {
		if (!th_selected(t->name, argc, argv))
			continue;
		idx++;
		printf("# RUN %s\n", t->name);
		if (th_run_one(t)) {
			fail++;
			printf("not ok %d %s\n", idx, t->name);
		} else if (th_result->skipped) {
			skip++;
			printf("ok %d %s # SKIP %s\n", idx, t->name,
			       th_result->skip_reason);
		} else {
			pass++;
			printf("ok %d %s\n", idx, t->name);
		}
	}
	printf("# Totals: pass:%d fail:%d xfail:0 xpass:0 skip:%d error:0\n",
	       pass, fail, skip);
	printf("%s: %d passed, %d failed, %d skipped\n",
	       program_invocation_short_name, pass, fail, skip);
	return fail ? 1 : 0;
}

#define TEST_HARNESS_MAIN \
	int main(int argc, char **argv) { return th_main(argc, argv); }

#endif /* REGWATCH_TEST_HARNESS_H */
