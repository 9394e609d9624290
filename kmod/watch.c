// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: the per-fd watch table, its free list and its dirty list.
 *
 * Watches live in one vmalloc'ed array indexed by slot. Both lists link
 * slots by u32 index through regwatch_slot.next/prev, which keeps a watch
 * at 112 bytes; a slot is on at most one list at a time (free list while
 * FREE, dirty list while PENDING).
 */
#include <linux/overflow.h>
#include <linux/poll.h>
#include <linux/sched/mm.h>
#include <linux/vmalloc.h>

#include "regwatch_internal.h"

static void regwatch_dirty_link_tail(struct regwatch_ctx *ctx, u32 idx)
{
	struct regwatch_slot *slot = &ctx->slots[idx];

	lockdep_assert_held(&ctx->lock);
	slot->next = REGWATCH_NO_SLOT;
	slot->prev = ctx->dirty_tail;
	if (ctx->dirty_tail == REGWATCH_NO_SLOT)
		WRITE_ONCE(ctx->dirty_head, idx);
	else
		ctx->slots[ctx->dirty_tail].next = idx;
	ctx->dirty_tail = idx;
}

static void regwatch_dirty_link_head(struct regwatch_ctx *ctx, u32 idx)
{
	struct regwatch_slot *slot = &ctx->slots[idx];

	lockdep_assert_held(&ctx->lock);
	slot->prev = REGWATCH_NO_SLOT;
	slot->next = ctx->dirty_head;
	if (ctx->dirty_head == REGWATCH_NO_SLOT)
		ctx->dirty_tail = idx;
	else
		ctx->slots[ctx->dirty_head].prev = idx;
	WRITE_ONCE(ctx->dirty_head, idx);
}

static void regwatch_dirty_unlink(struct regwatch_ctx *ctx, u32 idx)
{
	struct regwatch_slot *slot = &ctx->slots[idx];

	lockdep_assert_held(&ctx->lock);
	if (slot->prev == REGWATCH_NO_SLOT)
		WRITE_ONCE(ctx->dirty_head, slot->next);
	else
		ctx->slots[slot->prev].next = slot->next;
	if (slot->next == REGWATCH_NO_SLOT)
		ctx->dirty_tail = slot->prev;
	else
		ctx->slots[slot->next].prev = slot->prev;
}

static u32 regwatch_alloc_slot(struct regwatch_ctx *ctx)
{
	u32 idx = ctx->free_head;

	lockdep_assert_held(&ctx->lock);
	if (idx != REGWATCH_NO_SLOT) {
		ctx->free_head = ctx->slots[idx].next;
		return idx;
	}
	if (ctx->high_water < ctx->nslots)
		return ctx->high_water++;
	return REGWATCH_NO_SLOT;
}

static void regwatch_free_slot(struct regwatch_ctx *ctx, u32 idx)
{
	struct regwatch_slot *slot = &ctx->slots[idx];

	lockdep_assert_held(&ctx->lock);
	slot->state = REGWATCH_SLOT_FREE;
	slot->dirty = REGWATCH_CLEAN;
	slot->next = ctx->free_head;
	ctx->free_head = idx;
}

/**
 * regwatch_fix_capacity() - allocate the watch table and status area once
 * @ctx: the fd
 * @nslots: capacity asked for by REGWATCH_IOC_SET_CAPACITY (already checked
 *	against regwatch_max_slots()), or 0 to fix the default if no capacity
 *	was fixed yet (first watch, first mmap)
 *
 * Return: 0; -EBUSY if @nslots is not 0 and the capacity was already fixed;
 * -ENOMEM.
 */
int regwatch_fix_capacity(struct regwatch_ctx *ctx, u32 nslots)
{
	struct regwatch_slot *slots;
	u32 wanted = nslots ? nslots : regwatch_default_slots();
	int ret = 0;

	if (!nslots && smp_load_acquire(&ctx->nslots))
		return 0;

	mutex_lock(&ctx->setup_lock);
	if (ctx->nslots) {
		ret = nslots ? -EBUSY : 0;
		goto out_unlock;
	}
	slots = __vmalloc(array_size(wanted, sizeof(*slots)),
			  GFP_KERNEL_ACCOUNT | __GFP_ZERO);
	if (!slots) {
		ret = -ENOMEM;
		goto out_unlock;
	}
	ret = regwatch_status_alloc(ctx, wanted);
	if (ret)
		goto err_free_slots;
	ctx->slots = slots;
	/* pairs with the acquire loads of nslots before slots/status are used */
	smp_store_release(&ctx->nslots, wanted);
	mutex_unlock(&ctx->setup_lock);
	return 0;

err_free_slots:
	vfree(slots);
out_unlock:
	mutex_unlock(&ctx->setup_lock);
	return ret;
}

/**
 * regwatch_watch() - start watching a range of the fd's address space
 * @ctx: the fd; the caller runs in ctx->mm
 * @start: first byte
 * @length: bytes
 * @cookie: user cookie
 * @slot_out: slot of the new watch
 * @seq_out: seq of the new watch
 *
 * Return: 0, -EINVAL for a bad range, -ENOSPC if all slots are in use,
 * -ENOMEM. Nothing changed on error.
 */
int regwatch_watch(struct regwatch_ctx *ctx, u64 start, u64 length,
		   u64 cookie, u32 *slot_out, u64 *seq_out)
{
	struct regwatch_slot *slot;
	u64 first, end;
	u32 idx;
	u64 seq;
	int ret;

	if (!length || check_add_overflow(start, length, &end) ||
	    end > ctx->mm->task_size)
		return -EINVAL;
	first = round_down(start, PAGE_SIZE);
	end = round_up(end, PAGE_SIZE);

	ret = regwatch_fix_capacity(ctx, 0);
	if (ret)
		return ret;

	spin_lock(&ctx->lock);
	idx = regwatch_alloc_slot(ctx);
	if (idx == REGWATCH_NO_SLOT) {
		spin_unlock(&ctx->lock);
		return -ENOSPC;
	}
	slot = &ctx->slots[idx];
	slot->state = REGWATCH_SLOT_INSERTING;
	slot->dirty = REGWATCH_CLEAN;
	slot->cookie = cookie;
	seq = ctx->next_seq;
	ctx->next_seq += 2;
	regwatch_status_set_seq(ctx, idx, seq);
	spin_unlock(&ctx->lock);

	ret = mmu_interval_notifier_insert(&slot->notifier, ctx->mm, first,
					   end - first, &ctx->notifier_ops);
	if (ret)
		goto err_free_slot;
	/*
	 * An invalidation of this range that started before the insert does
	 * not call us. Wait for it to end, so that pages the caller looks up
	 * after this ioctl are the ones the watch covers.
	 */
	mmu_interval_read_begin(&slot->notifier);

	spin_lock(&ctx->lock);
	slot->state = REGWATCH_SLOT_LIVE;
	regwatch_status_count(ctx, &ctx->status->total_watched, 1);
	spin_unlock(&ctx->lock);
	atomic_long_inc(&regwatch_live_watches);

	*slot_out = idx;
	*seq_out = seq;
	return 0;

err_free_slot:
	spin_lock(&ctx->lock);
	regwatch_status_set_seq(ctx, idx, 0);
	regwatch_free_slot(ctx, idx);
	spin_unlock(&ctx->lock);
	return ret;
}

/**
 * regwatch_unwatch() - stop watching and free the slot
 * @ctx: the fd; the caller runs in ctx->mm
 * @slot_nr: slot returned by regwatch_watch()
 * @cookie: cookie given to regwatch_watch()
 *
 * Once this returns, no record of the watch can be read and its notifier is
 * gone; the slot may be reused.
 *
 * Return: 0, or -EINVAL if @slot_nr holds no live watch with @cookie.
 */
int regwatch_unwatch(struct regwatch_ctx *ctx, u64 slot_nr, u64 cookie)
{
	struct regwatch_slot *slot;
	u32 idx;

	if (slot_nr >= smp_load_acquire(&ctx->nslots))
		return -EINVAL;
	idx = slot_nr;
	slot = &ctx->slots[idx];

	spin_lock(&ctx->lock);
	if (slot->state != REGWATCH_SLOT_LIVE || slot->cookie != cookie) {
		spin_unlock(&ctx->lock);
		return -EINVAL;
	}
	/* From here the callback ignores the slot and read() cannot see it. */
	slot->state = REGWATCH_SLOT_REMOVING;
	if (slot->dirty == REGWATCH_PENDING) {
		regwatch_dirty_unlink(ctx, idx);
		regwatch_status_count(ctx, &ctx->status->dirty_unread, -1);
	}
	regwatch_status_set_seq(ctx, idx, 0);
	regwatch_status_count(ctx, &ctx->status->total_unwatched, 1);
	spin_unlock(&ctx->lock);

	/* Waits for a running callback; the slot must not be reused before. */
	mmu_interval_notifier_remove(&slot->notifier);

	spin_lock(&ctx->lock);
	regwatch_free_slot(ctx, idx);
	spin_unlock(&ctx->lock);
	atomic_long_dec(&regwatch_live_watches);
	return 0;
}

/**
 * regwatch_mark_dirty() - turn a watch dirty, once
 * @ctx: the fd
 * @slot: the watch
 * @reason: enum regwatch_reason to report
 *
 * Called from the invalidate callback with ctx->lock held: no allocation,
 * the dirty-list links live in the slot.
 *
 * Return: true if the watch turned dirty now, false if it was dirty already
 * or is not (or no longer) being watched.
 */
bool regwatch_mark_dirty(struct regwatch_ctx *ctx, struct regwatch_slot *slot,
			 u8 reason)
{
	u32 idx = regwatch_slot_index(ctx, slot);

	lockdep_assert_held(&ctx->lock);
	if (slot->dirty != REGWATCH_CLEAN ||
	    (slot->state != REGWATCH_SLOT_INSERTING &&
	     slot->state != REGWATCH_SLOT_LIVE))
		return false;
	slot->dirty = REGWATCH_PENDING;
	slot->reason = reason;
	regwatch_dirty_link_tail(ctx, idx);
	regwatch_status_dirtied(ctx, idx);
	return true;
}

/**
 * regwatch_has_pending() - whether read() would return a record now
 * @ctx: the fd
 *
 * Return: true if some watch is dirty and unread.
 */
bool regwatch_has_pending(struct regwatch_ctx *ctx)
{
	return READ_ONCE(ctx->dirty_head) != REGWATCH_NO_SLOT;
}

/**
 * regwatch_take_records() - move the oldest pending watches to REPORTED
 * @ctx: the fd
 * @rec: where to fill in their records
 * @max: size of @rec
 *
 * Records are filled in under ctx->lock into kernel memory; the caller
 * copies them to user space afterwards and gives back what it could not
 * copy with regwatch_requeue_records().
 *
 * Return: number of records filled in.
 */
unsigned int regwatch_take_records(struct regwatch_ctx *ctx,
				   struct regwatch_record *rec,
				   unsigned int max)
{
	unsigned int count = 0;

	spin_lock(&ctx->lock);
	while (count < max && ctx->dirty_head != REGWATCH_NO_SLOT) {
		u32 idx = ctx->dirty_head;
		struct regwatch_slot *slot = &ctx->slots[idx];

		regwatch_dirty_unlink(ctx, idx);
		slot->dirty = REGWATCH_REPORTED;
		rec[count] = (struct regwatch_record) {
			.cookie = slot->cookie,
			.seq = regwatch_status_seq(ctx, idx) & ~REGWATCH_SEQ_DIRTY,
			.start = slot->notifier.interval_tree.start,
			.end = slot->notifier.interval_tree.last + 1,
			.slot = idx,
			.reason = slot->reason,
		};
		count++;
	}
	regwatch_status_count(ctx, &ctx->status->dirty_unread, -(s64)count);
	regwatch_status_count(ctx, &ctx->status->total_reported, count);
	spin_unlock(&ctx->lock);
	return count;
}

/**
 * regwatch_requeue_records() - make records that never reached user space
 *	pending again
 * @ctx: the fd
 * @rec: records returned by regwatch_take_records()
 * @count: how many of them, oldest first
 *
 * A watch unwatched (or unwatched and replaced) meanwhile is skipped: its
 * slot word no longer holds the record's seq.
 */
void regwatch_requeue_records(struct regwatch_ctx *ctx,
			      const struct regwatch_record *rec,
			      unsigned int count)
{
	unsigned int requeued = 0;

	spin_lock(&ctx->lock);
	while (count--) {
		u32 idx = rec[count].slot;
		struct regwatch_slot *slot = &ctx->slots[idx];

		if (slot->dirty != REGWATCH_REPORTED ||
		    regwatch_status_seq(ctx, idx) !=
		    (rec[count].seq | REGWATCH_SEQ_DIRTY))
			continue;
		slot->dirty = REGWATCH_PENDING;
		regwatch_dirty_link_head(ctx, idx);
		requeued++;
	}
	regwatch_status_count(ctx, &ctx->status->dirty_unread, requeued);
	regwatch_status_count(ctx, &ctx->status->total_reported,
			      -(s64)requeued);
	spin_unlock(&ctx->lock);
	if (requeued)
		wake_up_interruptible_poll(&ctx->read_wait, EPOLLIN | EPOLLRDNORM);
}

/**
 * regwatch_teardown() - remove every notifier and free the fd's memory
 * @ctx: the fd, being released: no ioctl, read or mmap can run any more,
 *	but callbacks still can until each notifier is removed.
 *
 * ctx->mm may have exited already (fd passed to another process, or closed
 * during exit after exit_mm()); the mmgrab taken at open keeps the
 * mm_struct, which is all mmu_interval_notifier_remove() needs.
 */
void regwatch_teardown(struct regwatch_ctx *ctx)
{
	long removed = 0;
	u32 idx;

	for (idx = 0; idx < ctx->high_water; idx++) {
		struct regwatch_slot *slot = &ctx->slots[idx];

		if (slot->state == REGWATCH_SLOT_FREE)
			continue;
		WARN_ON_ONCE(slot->state != REGWATCH_SLOT_LIVE);
		mmu_interval_notifier_remove(&slot->notifier);
		removed++;
		cond_resched();
	}
	atomic_long_sub(removed, &regwatch_live_watches);
	vfree(ctx->slots);
	regwatch_status_free(ctx);
}
