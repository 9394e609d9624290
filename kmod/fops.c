// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: file operations of /dev/regwatch.
 *
 * An fd is bound to its opener's mm. Every operation but release checks
 * that the caller runs in that mm and fails with EIO otherwise, before
 * touching anything.
 */
#include <linux/fs.h>
#include <linux/poll.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/uio.h>

#include "regwatch_internal.h"

/*
 * Records written per hold of ctx->lock: bounds how long a read() keeps
 * the invalidate callback waiting.
 */
#define REGWATCH_READ_BATCH	128

static bool regwatch_caller_owns(struct regwatch_ctx *ctx)
{
	return current->mm == ctx->mm;
}

static int regwatch_open(struct inode *inode, struct file *file)
{
	struct regwatch_ctx *ctx;

	if (!current->mm)
		return -EINVAL;
	ctx = kzalloc(sizeof(*ctx), REGWATCH_GFP);
	if (!ctx)
		return -ENOMEM;
	ctx->user = regwatch_user_get();
	if (!ctx->user) {
		kfree(ctx);
		return -ENOMEM;
	}
	regwatch_notifier_init_ops(&ctx->notifier_ops);
	mmgrab(current->mm);
	ctx->mm = current->mm;
	ctx->mapping = file->f_mapping;
	ctx->strict = regwatch_strict_default();
	mutex_init(&ctx->setup_lock);
	spin_lock_init(&ctx->lock);
	ctx->free_head = REGWATCH_NO_SLOT;
	ctx->dirty_head = REGWATCH_NO_SLOT;
	ctx->dirty_tail = REGWATCH_NO_SLOT;
	ctx->parked = REGWATCH_NO_SLOT;
	ctx->next_seq = 2;
	init_waitqueue_head(&ctx->read_wait);
	file->private_data = ctx;
	regwatch_fd_opened();
	return stream_open(inode, file);
}

static int regwatch_release(struct inode *inode, struct file *file)
{
	struct regwatch_ctx *ctx = file->private_data;

	if (smp_load_acquire(&ctx->nslots))
		regwatch_teardown(ctx);
	regwatch_user_put(ctx->user);
	mmdrop(ctx->mm);
	mutex_destroy(&ctx->setup_lock);
	kfree(ctx);
	regwatch_fd_closed();
	return 0;
}

static long regwatch_ioctl_api(struct regwatch_ctx *ctx,
			       struct regwatch_api __user *uarg)
{
	struct regwatch_api api;
	bool enable_strict;

	if (copy_from_user(&api, uarg, sizeof(api)))
		return -EFAULT;
	if (api.api != REGWATCH_API || api.features & ~REGWATCH_FEATURES ||
	    memchr_inv(api.reserved, 0, sizeof(api.reserved)))
		return -EINVAL;
	enable_strict = api.features & REGWATCH_FEATURE_STRICT;

	api.features = enable_strict || READ_ONCE(ctx->strict) ?
		       REGWATCH_FEATURE_STRICT : 0;
	api.supported_features = REGWATCH_FEATURES;
	api.ioctls = BIT_ULL(_IOC_NR(REGWATCH_IOC_API)) |
		     BIT_ULL(_IOC_NR(REGWATCH_IOC_SET_CAPACITY)) |
		     BIT_ULL(_IOC_NR(REGWATCH_IOC_WATCH)) |
		     BIT_ULL(_IOC_NR(REGWATCH_IOC_UNWATCH));
	api.max_slots = regwatch_max_slots();
	api.default_slots = regwatch_default_slots();
	api.record_size = sizeof(struct regwatch_record);
	api.max_user_watches = regwatch_max_user_watches();
	api.user_watches = atomic_long_read(&ctx->user->watches);
	/* the answer goes out first: a call that fails enables nothing */
	if (copy_to_user(uarg, &api, sizeof(api)))
		return -EFAULT;
	if (enable_strict)
		WRITE_ONCE(ctx->strict, true);
	return 0;
}

static long regwatch_ioctl_set_capacity(struct regwatch_ctx *ctx,
					struct regwatch_capacity __user *uarg)
{
	struct regwatch_capacity cap;

	if (copy_from_user(&cap, uarg, sizeof(cap)))
		return -EFAULT;
	if (!cap.slots || cap.slots > regwatch_max_slots() ||
	    memchr_inv(cap.reserved, 0, sizeof(cap.reserved)))
		return -EINVAL;
	/* the answer goes out first: a call that fails fixes nothing */
	cap.status_size = REGWATCH_STATUS_SIZE(cap.slots, PAGE_SIZE);
	if (copy_to_user(uarg, &cap, sizeof(cap)))
		return -EFAULT;
	return regwatch_fix_capacity(ctx, cap.slots);
}

/* Writes the out fields of struct regwatch_watch: 0 or -EFAULT. */
static int regwatch_put_watch_out(struct regwatch_watch __user *uarg,
				  u64 slot, u64 seq)
{
	if (!user_write_access_begin(&uarg->slot, 2 * sizeof(u64)))
		return -EFAULT;
	unsafe_put_user(slot, &uarg->slot, err_access_end);
	unsafe_put_user(seq, &uarg->seq, err_access_end);
	user_write_access_end();
	return 0;

err_access_end:
	user_write_access_end();
	return -EFAULT;
}

/*
 * The hottest ioctl moves its argument field by field into scalars, in one
 * window of user access: a copy_from_user() of the 64-byte struct is a
 * byte-wise string move on CPUs with ERMS, a struct on the stack is
 * cleared first on kernels built to zero stack variables, and every
 * window costs a switch of the CPU's access mode; all of them are dear
 * where the CPU is emulated.
 */
static long regwatch_ioctl_watch(struct regwatch_ctx *ctx,
				 struct regwatch_watch __user *uarg)
{
	u64 start, length, cookie, flags, slot_in, seq_in, unwatch_cookie;
	u64 reserved;
	u32 slot;
	u64 seq;
	int ret;

	BUILD_BUG_ON(sizeof(*uarg) != 8 * sizeof(u64));
	if (!user_access_begin(uarg, sizeof(*uarg)))
		return -EFAULT;
	unsafe_get_user(start, &uarg->start, err_access_end);
	unsafe_get_user(length, &uarg->length, err_access_end);
	unsafe_get_user(cookie, &uarg->cookie, err_access_end);
	unsafe_get_user(flags, &uarg->flags, err_access_end);
	unsafe_get_user(slot_in, &uarg->slot, err_access_end);
	unsafe_get_user(seq_in, &uarg->seq, err_access_end);
	unsafe_get_user(unwatch_cookie, &uarg->unwatch_cookie, err_access_end);
	unsafe_get_user(reserved, &uarg->reserved[0], err_access_end);
	/*
	 * The result must be deliverable before anything changes: the out
	 * fields are written back as they came in.
	 */
	unsafe_put_user(slot_in, &uarg->slot, err_access_end);
	unsafe_put_user(seq_in, &uarg->seq, err_access_end);
	user_access_end();
	if (flags & ~REGWATCH_WATCH_FLAGS || reserved)
		return -EINVAL;
	if (flags & REGWATCH_WATCH_UNWATCH)
		ret = regwatch_watch_instead(ctx, slot_in, unwatch_cookie,
					     start, length, cookie, &slot,
					     &seq);
	else if (unwatch_cookie)
		ret = -EINVAL;
	else
		ret = regwatch_watch(ctx, start, length, cookie, &slot, &seq);
	if (ret)
		return ret;
	if (regwatch_put_watch_out(uarg, slot, seq)) {
		/*
		 * made read-only meanwhile by another thread; a victim
		 * unwatched by REGWATCH_WATCH_UNWATCH stays unwatched
		 */
		regwatch_watch_cancel(ctx, slot, cookie, seq);
		return -EFAULT;
	}
	return 0;

err_access_end:
	user_access_end();
	return -EFAULT;
}

/* Reads its argument into scalars in one window, as the watch ioctl does. */
static long regwatch_ioctl_unwatch(struct regwatch_ctx *ctx,
				   struct regwatch_unwatch __user *uarg)
{
	u64 slot, cookie, reserved0, reserved1;

	BUILD_BUG_ON(sizeof(*uarg) != 4 * sizeof(u64));
	if (!user_read_access_begin(uarg, sizeof(*uarg)))
		return -EFAULT;
	unsafe_get_user(slot, &uarg->slot, err_access_end);
	unsafe_get_user(cookie, &uarg->cookie, err_access_end);
	unsafe_get_user(reserved0, &uarg->reserved[0], err_access_end);
	unsafe_get_user(reserved1, &uarg->reserved[1], err_access_end);
	user_read_access_end();
	if (reserved0 || reserved1)
		return -EINVAL;
	return regwatch_unwatch(ctx, slot, cookie);

err_access_end:
	user_read_access_end();
	return -EFAULT;
}

static long regwatch_ioctl(struct file *file, unsigned int cmd,
			   unsigned long arg)
{
	struct regwatch_ctx *ctx = file->private_data;
	void __user *uarg = (void __user *)arg;

	if (!regwatch_caller_owns(ctx))
		return -EIO;
	switch (cmd) {
	case REGWATCH_IOC_API:
		return regwatch_ioctl_api(ctx, uarg);
	case REGWATCH_IOC_SET_CAPACITY:
		return regwatch_ioctl_set_capacity(ctx, uarg);
	case REGWATCH_IOC_WATCH:
		return regwatch_ioctl_watch(ctx, uarg);
	case REGWATCH_IOC_UNWATCH:
		return regwatch_ioctl_unwatch(ctx, uarg);
	default:
		return -ENOTTY;
	}
}

/*
 * read(), readv() and friends: whole records into the caller's buffers as
 * one byte stream (a record may straddle two iovecs). Blocks only while
 * nothing was copied, so a readv() of more room than there are records
 * returns what is pending.
 */
static ssize_t regwatch_read_iter(struct kiocb *iocb, struct iov_iter *to)
{
	struct regwatch_ctx *ctx = iocb->ki_filp->private_data;
	bool nonblock = (iocb->ki_filp->f_flags & O_NONBLOCK) ||
			(iocb->ki_flags & IOCB_NOWAIT);
	const size_t size = sizeof(struct regwatch_record);
	ssize_t copied = 0;

	if (!regwatch_caller_owns(ctx))
		return -EIO;
	if (iov_iter_count(to) < size)
		return -EINVAL;
	while (iov_iter_count(to) >= size) {
		unsigned int want = min_t(size_t, REGWATCH_READ_BATCH,
					  iov_iter_count(to) / size);
		unsigned int got;
		int ret;

		if (!regwatch_has_pending(ctx)) {
			if (copied)
				break;
			if (nonblock) {
				copied = -EAGAIN;
				break;
			}
			ret = wait_event_interruptible(ctx->read_wait,
						       regwatch_has_pending(ctx));
			if (ret) {
				copied = ret;
				break;
			}
		}
		got = regwatch_take_records(ctx, to, want);
		copied += got * size;
		if (got)
			continue;
		/*
		 * Nothing written although a record may be pending: the
		 * destination is not present (or another reader took the
		 * records). Fault it in outside ctx->lock and try again.
		 */
		if (regwatch_has_pending(ctx) &&
		    fault_in_iov_iter_writeable(to, size)) {
			if (!copied)
				copied = -EFAULT;
			break;
		}
	}
	return copied;
}

static __poll_t regwatch_poll(struct file *file, poll_table *wait)
{
	struct regwatch_ctx *ctx = file->private_data;

	if (!regwatch_caller_owns(ctx))
		return EPOLLERR;
	poll_wait(file, &ctx->read_wait, wait);
	if (regwatch_has_pending(ctx))
		return EPOLLIN | EPOLLRDNORM;
	return 0;
}

static int regwatch_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct regwatch_ctx *ctx = file->private_data;
	u32 nslots;
	int ret;

	if (!regwatch_caller_owns(ctx))
		return -EIO;
	mutex_lock(&ctx->setup_lock);
	/* checked against the capacity it will have before that is fixed */
	nslots = ctx->nslots ? ctx->nslots : regwatch_default_slots();
	ret = regwatch_status_mmap(ctx, vma, nslots);
	if (!ret && !ctx->nslots)
		ret = regwatch_fix_capacity_locked(ctx, nslots);
	mutex_unlock(&ctx->setup_lock);
	return ret;
}

const struct file_operations regwatch_fops = {
	.owner = THIS_MODULE,
	.open = regwatch_open,
	.release = regwatch_release,
	.unlocked_ioctl = regwatch_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.read_iter = regwatch_read_iter,
	.poll = regwatch_poll,
	.mmap = regwatch_mmap,
	.llseek = noop_llseek,
};
