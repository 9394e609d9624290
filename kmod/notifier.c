// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: the interval-notifier callback that turns watches dirty.
 *
 * The callback may run where it must not sleep (the OOM reaper, reclaim),
 * so it only takes ctx->lock, allocates nothing and always returns true;
 * mmu_notifier_range_blockable() is therefore never needed.
 */
#include <linux/poll.h>

#include "regwatch_internal.h"

/*
 * Events that only change protection keep every page where it is:
 * mprotect() (PROTECTION_VMA), the write-protect pass of fork() over the
 * parent's copy-on-write areas, userfaultfd-wp and page_mkclean
 * (PROTECTION_PAGE), and soft-dirty clearing (SOFT_DIRTY). The parent's
 * later write that breaks COW replaces the page and arrives as CLEAR. The
 * same enum values exist on 6.1, 6.12 and 7.x.
 */
static bool regwatch_event_is_protection_only(enum mmu_notifier_event event)
{
	switch (event) {
	case MMU_NOTIFY_PROTECTION_VMA:
	case MMU_NOTIFY_PROTECTION_PAGE:
	case MMU_NOTIFY_SOFT_DIRTY:
		return true;
	default:
		return false;
	}
}

static u8 regwatch_event_reason(enum mmu_notifier_event event)
{
	switch (event) {
	case MMU_NOTIFY_UNMAP:
		return REGWATCH_REASON_UNMAP;
	case MMU_NOTIFY_CLEAR:
		return REGWATCH_REASON_CLEAR;
	case MMU_NOTIFY_PROTECTION_VMA:
	case MMU_NOTIFY_PROTECTION_PAGE:
	case MMU_NOTIFY_SOFT_DIRTY:
		return REGWATCH_REASON_PROTECTION;
	case MMU_NOTIFY_RELEASE:
		return REGWATCH_REASON_RELEASE;
	case MMU_NOTIFY_MIGRATE:
		return REGWATCH_REASON_MIGRATE;
	case MMU_NOTIFY_EXCLUSIVE:
		return REGWATCH_REASON_EXCLUSIVE;
	default:
		return REGWATCH_REASON_OTHER;
	}
}

static bool regwatch_invalidate(struct mmu_interval_notifier *notifier,
				const struct mmu_notifier_range *range,
				unsigned long cur_seq)
{
	struct regwatch_ctx *ctx =
		container_of(notifier->ops, struct regwatch_ctx, notifier_ops);
	struct regwatch_slot *slot =
		container_of(notifier, struct regwatch_slot, notifier);
	bool turned_dirty = false;

	spin_lock(&ctx->lock);
	/*
	 * Every invocation bumps the notifier's sequence, so that the watch
	 * ioctl's mmu_interval_read_begin() waits out an invalidation that was
	 * running while the notifier went in.
	 */
	mmu_interval_set_seq(notifier, cur_seq);
	if (READ_ONCE(ctx->strict) ||
	    !regwatch_event_is_protection_only(range->event))
		turned_dirty = regwatch_mark_dirty(ctx, slot,
					regwatch_event_reason(range->event));
	spin_unlock(&ctx->lock);

	if (turned_dirty)
		wake_up_interruptible_poll(&ctx->read_wait, EPOLLIN | EPOLLRDNORM);
	return true;
}

/**
 * regwatch_notifier_init_ops() - fill an fd's notifier ops
 * @ops: the ops embedded in the fd's struct regwatch_ctx
 */
void regwatch_notifier_init_ops(struct mmu_interval_notifier_ops *ops)
{
	ops->invalidate = regwatch_invalidate;
}
