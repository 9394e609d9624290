// SPDX-License-Identifier: GPL-2.0
/*
 * close() and exit remove everything; an fd that outlives its mm (passed
 * over a unix socket) only fails with EIO and frees everything on close.
 * Leaks are measured with the module's live_fds/live_watches counters.
 */
#include <poll.h>
#include <sys/socket.h>

#include "regwatch_util.h"

static void watch_many(int fd, char *p, int count)
{
	for (int i = 0; i < count; i++)
		rw_watch(fd, p + (i % 16) * rw_page(), rw_page(), i);
}

TEST(close_with_live_watches_frees_everything)
{
	long fds0, watches0;
	char *p = rw_map_pages(16);
	int fd;

	rw_require_device();
	fds0 = rw_module_counter("live_fds");
	watches0 = rw_module_counter("live_watches");
	fd = rw_open(0);
	rw_set_capacity(fd, 1000);
	watch_many(fd, p, 1000);
	ASSERT_EQ(rw_module_counter("live_fds"), fds0 + 1);
	ASSERT_EQ(rw_module_counter("live_watches"), watches0 + 1000);
	munmap(p, 8 * rw_page());	/* half of them dirty and unread */
	close(fd);
	ASSERT_EQ(rw_wait_counter("live_fds", fds0), fds0);
	ASSERT_EQ(rw_wait_counter("live_watches", watches0), watches0);
}

TEST(exit_with_fd_open_frees_everything)
{
	long fds0, watches0;
	int status;
	pid_t pid;

	rw_require_device();
	fds0 = rw_module_counter("live_fds");
	watches0 = rw_module_counter("live_watches");
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		int fd = rw_open(0);

		rw_set_capacity(fd, 500);
		rw_map_status(fd, 500);
		watch_many(fd, rw_map_pages(16), 500);
		_exit(0);	/* fd, mapping and watches still alive */
	}
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	ASSERT_EQ(rw_wait_counter("live_fds", fds0), fds0);
	ASSERT_EQ(rw_wait_counter("live_watches", watches0), watches0);
}

/* The mm exits first; the last close happens in another process. */
TEST(fd_outlives_its_mm_over_unix_socket)
{
	long fds0, watches0;
	int sv[2], fd = -1, status;
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct regwatch_record rec;
	struct iovec iov;
	struct msghdr msg;
	struct cmsghdr *cm;
	char byte = 0;
	pid_t pid;

	rw_require_device();
	fds0 = rw_module_counter("live_fds");
	watches0 = rw_module_counter("live_watches");
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pid = fork();
	ASSERT_GE(pid, 0);
	if (!pid) {
		int cfd = rw_open(0);

		rw_set_capacity(cfd, 64);
		watch_many(cfd, rw_map_pages(16), 64);
		memset(&msg, 0, sizeof(msg));
		iov.iov_base = &byte;
		iov.iov_len = 1;
		msg.msg_iov = &iov;
		msg.msg_iovlen = 1;
		msg.msg_control = cbuf;
		msg.msg_controllen = sizeof(cbuf);
		cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &cfd, sizeof(int));
		ASSERT_EQ(sendmsg(sv[1], &msg, 0), 1);
		_exit(0);
	}
	memset(&msg, 0, sizeof(msg));
	iov.iov_base = &byte;
	iov.iov_len = 1;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cbuf;
	msg.msg_controllen = sizeof(cbuf);
	ASSERT_EQ(recvmsg(sv[0], &msg, 0), 1);
	cm = CMSG_FIRSTHDR(&msg);
	ASSERT_TRUE(cm && cm->cmsg_type == SCM_RIGHTS);
	memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	/* the child's mm is gone, its fd and watches are not */
	ASSERT_EQ(rw_module_counter("live_fds"), fds0 + 1);
	ASSERT_EQ(rw_module_counter("live_watches"), watches0 + 64);
	{
		struct regwatch_api api = { .api = REGWATCH_API };
		struct pollfd pfd = { .fd = fd, .events = POLLIN };

		ASSERT_ERRNO(ioctl(fd, REGWATCH_IOC_API, &api), EIO);
		ASSERT_ERRNO(rw_unwatch(fd, 0, 0), EIO);
		ASSERT_ERRNO(read(fd, &rec, sizeof(rec)), EIO);
		ASSERT_ERRNO((long)mmap(NULL, REGWATCH_STATUS_SIZE(64, rw_page()),
					PROT_READ, MAP_SHARED, fd, 0), EIO);
		ASSERT_EQ(poll(&pfd, 1, 0), 1);
		ASSERT_EQ(pfd.revents, POLLERR);
	}
	ASSERT_EQ(rw_module_counter("live_watches"), watches0 + 64);
	close(fd);
	ASSERT_EQ(rw_wait_counter("live_fds", fds0), fds0);
	ASSERT_EQ(rw_wait_counter("live_watches", watches0), watches0);
}

/* Many short-lived fds, some closed by exit, some by close. */
TEST(open_close_churn_no_leak)
{
	long fds0, watches0;

	rw_require_device();
	fds0 = rw_module_counter("live_fds");
	watches0 = rw_module_counter("live_watches");
	for (int i = 0; i < 50; i++) {
		pid_t pid = fork();
		int status;

		ASSERT_GE(pid, 0);
		if (!pid) {
			int fd = rw_open(0);
			char *p = rw_map_pages(4);

			rw_set_capacity(fd, 16);
			watch_many(fd, p, 16);
			if (i & 1)
				munmap(p, 4 * rw_page());
			if (i & 2)
				close(fd);
			_exit(0);
		}
		ASSERT_EQ(waitpid(pid, &status, 0), pid);
		ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	ASSERT_EQ(rw_wait_counter("live_fds", fds0), fds0);
	ASSERT_EQ(rw_wait_counter("live_watches", watches0), watches0);
}

TEST_HARNESS_MAIN
