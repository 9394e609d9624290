// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: the per-fd watch table, its free list and its dirty list.
 *
 * Watches live in chunks of REGWATCH_CHUNK_SLOTS slots, found by chunk
 * number in a table (struct regwatch_table), allocated by capacity.c when
 * a slot in them is first used. Both lists link slots by u32 index through
 * regwatch_slot.next/prev, which keeps a watch at 112 bytes; a slot is on
 * at most one list at a time (free list while FREE, dirty list while
 * PENDING). read() takes from the dirty list in records.c.
 *
 * An unwatch leaves the slot's notifier inserted, ignored, in the fd's one
 * parked slot: a watch of the same range takes it back without an insert,
 * and the next unwatch, or a watch that finds the table full, removes it.
 * A watch made in place of a victim (REGWATCH_WATCH_UNWATCH) never parks:
 * it takes the victim's slot, and its notifier too when the range is the
 * same.
 */
#include <linux/overflow.h>
#include <linux/poll.h>
#include <linux/sched/mm.h>

#include "regwatch_internal.h"

static void regwatch_dirty_link_tail(struct regwatch_ctx *ctx,
				     struct regwatch_slot *slot)
{
	u32 idx = slot->index;

	lockdep_assert_held(&ctx->lock);
	slot->next = REGWATCH_NO_SLOT;
	slot->prev = ctx->dirty_tail;
	if (ctx->dirty_tail == REGWATCH_NO_SLOT)
		WRITE_ONCE(ctx->dirty_head, idx);
	else
		regwatch_slot(ctx, ctx->dirty_tail)->next = idx;
	ctx->dirty_tail = idx;
}

static void regwatch_dirty_unlink(struct regwatch_ctx *ctx,
				  struct regwatch_slot *slot)
{
	lockdep_assert_held(&ctx->lock);
	if (slot->prev == REGWATCH_NO_SLOT)
		WRITE_ONCE(ctx->dirty_head, slot->next);
	else
		regwatch_slot(ctx, slot->prev)->next = slot->next;
	if (slot->next == REGWATCH_NO_SLOT)
		ctx->dirty_tail = slot->prev;
	else
		regwatch_slot(ctx, slot->next)->prev = slot->prev;
}

/*
 * A free slot with storage (its index in @slot->index is set by the
 * caller), or NULL: then every slot is in use if ctx->high_water reached
 * the capacity, else slot ctx->high_water needs regwatch_grow() first.
 * Each slot is looked up once per watch and unwatch: the pointer is passed
 * on, not the index.
 */
static struct regwatch_slot *regwatch_alloc_slot(struct regwatch_ctx *ctx,
						 u32 *idx)
{
	struct regwatch_slot *slot;

	lockdep_assert_held(&ctx->lock);
	*idx = ctx->free_head;
	if (*idx != REGWATCH_NO_SLOT) {
		slot = regwatch_slot(ctx, *idx);
		ctx->free_head = slot->next;
		return slot;
	}
	if (ctx->high_water < ctx->backed) {
		*idx = ctx->high_water++;
		return regwatch_slot(ctx, *idx);
	}
	return NULL;
}

static void regwatch_free_slot(struct regwatch_ctx *ctx,
			       struct regwatch_slot *slot)
{
	lockdep_assert_held(&ctx->lock);
	slot->state = REGWATCH_SLOT_FREE;
	slot->dirty = REGWATCH_CLEAN;
	slot->next = ctx->free_head;
	ctx->free_head = slot->index;
}

/*
 * Gives @slot (its index set) a new watch with @cookie: INSERTING, clean,
 * the next seq in its status word, counted in total_watched. Returns the
 * seq.
 */
static u64 regwatch_start_watch(struct regwatch_ctx *ctx,
				struct regwatch_slot *slot, u64 cookie)
{
	u64 seq = ctx->next_seq;

	lockdep_assert_held(&ctx->lock);
	slot->state = REGWATCH_SLOT_INSERTING;
	slot->dirty = REGWATCH_CLEAN;
	slot->cookie = cookie;
	ctx->next_seq += 2;
	regwatch_status_set_seq(ctx, slot->index, seq);
	regwatch_status_count(ctx, &ctx->status->total_watched, 1);
	return seq;
}

/*
 * Ends the watch in @slot for read() and the status area: off the dirty
 * list, slot word 0, counted in total_unwatched. The caller sets the
 * slot's next state before dropping ctx->lock; from then on the callback
 * ignores the slot.
 */
static void regwatch_end_watch(struct regwatch_ctx *ctx,
			       struct regwatch_slot *slot)
{
	lockdep_assert_held(&ctx->lock);
	if (slot->dirty == REGWATCH_PENDING) {
		regwatch_dirty_unlink(ctx, slot);
		regwatch_status_count(ctx, &ctx->status->dirty_unread, -1);
	}
	regwatch_status_set_seq(ctx, slot->index, 0);
	regwatch_status_count(ctx, &ctx->status->total_unwatched, 1);
}

/* The live watch in slot @slot_nr with @cookie (and @seq unless 0), or NULL. */
static struct regwatch_slot *regwatch_live_slot(struct regwatch_ctx *ctx,
						u64 slot_nr, u64 cookie,
						u64 seq)
{
	struct regwatch_slot *slot;

	lockdep_assert_held(&ctx->lock);
	if (slot_nr >= ctx->high_water)
		return NULL;
	slot = regwatch_slot(ctx, slot_nr);
	/* pairs with the release store of LIVE in regwatch_go_live() */
	if (smp_load_acquire(&slot->state) != REGWATCH_SLOT_LIVE ||
	    slot->cookie != cookie ||
	    (seq && (regwatch_status_seq(ctx, slot_nr) &
		     ~REGWATCH_SEQ_DIRTY) != seq))
		return NULL;
	return slot;
}

/* Whether @slot's notifier covers exactly [@first, @end). */
static bool regwatch_covers(struct regwatch_slot *slot, u64 first, u64 end)
{
	return slot->notifier.interval_tree.start == first &&
	       slot->notifier.interval_tree.last == end - 1;
}

/*
 * The parked slot, now REMOVING and no longer parked, or NULL if no slot
 * is parked. Its caller removes the notifier: regwatch_drop_parked().
 */
static struct regwatch_slot *regwatch_unpark(struct regwatch_ctx *ctx)
{
	struct regwatch_slot *slot;

	lockdep_assert_held(&ctx->lock);
	if (ctx->parked == REGWATCH_NO_SLOT)
		return NULL;
	slot = regwatch_slot(ctx, ctx->parked);
	ctx->parked = REGWATCH_NO_SLOT;
	slot->state = REGWATCH_SLOT_REMOVING;
	return slot;
}

/* Removes the notifier of a slot unparked by regwatch_unpark(), frees it. */
static void regwatch_drop_parked(struct regwatch_ctx *ctx,
				 struct regwatch_slot *slot)
{
	/* Waits for a running callback; the slot must not be reused before. */
	mmu_interval_notifier_remove(&slot->notifier);
	spin_lock(&ctx->lock);
	regwatch_free_slot(ctx, slot);
	spin_unlock(&ctx->lock);
}

/*
 * The parked slot if its notifier covers exactly [@first, @end): its
 * notifier never left the tree, so the watch needs no insert.
 */
static struct regwatch_slot *regwatch_revivable(struct regwatch_ctx *ctx,
						u64 first, u64 end, u32 *idx)
{
	struct regwatch_slot *slot;

	lockdep_assert_held(&ctx->lock);
	if (ctx->parked == REGWATCH_NO_SLOT)
		return NULL;
	slot = regwatch_slot(ctx, ctx->parked);
	if (!regwatch_covers(slot, first, end))
		return NULL;
	*idx = ctx->parked;
	ctx->parked = REGWATCH_NO_SLOT;
	return slot;
}

/*
 * Takes a slot with storage for a new watch of [@first, @end) and gives it
 * @cookie and the next seq, and counts it in total_watched, in the same
 * hold of ctx->lock: the slot, or NULL with *@err -ENOSPC or -ENOMEM.
 * *@revived tells whether it is the parked slot of the same range, whose
 * notifier is still inserted. When every slot is taken, the parked one is
 * dropped to make room.
 */
static struct regwatch_slot *regwatch_claim_slot(struct regwatch_ctx *ctx,
						 u64 first, u64 end,
						 u64 cookie, u64 *seq,
						 bool *revived, int *err)
{
	for (;;) {
		struct regwatch_slot *slot;
		u32 idx, next;

		spin_lock(&ctx->lock);
		slot = regwatch_revivable(ctx, first, end, &idx);
		*revived = slot != NULL;
		if (!slot)
			slot = regwatch_alloc_slot(ctx, &idx);
		if (slot) {
			slot->index = idx;
			*seq = regwatch_start_watch(ctx, slot, cookie);
			spin_unlock(&ctx->lock);
			return slot;
		}
		next = ctx->high_water;
		slot = next >= ctx->nslots ? regwatch_unpark(ctx) : NULL;
		spin_unlock(&ctx->lock);
		if (slot) {
			regwatch_drop_parked(ctx, slot);
			continue;
		}
		if (next >= ctx->nslots) {
			*err = -ENOSPC;
			return NULL;
		}
		*err = regwatch_grow(ctx, next);
		if (*err)
			return NULL;
	}
}

/* A failed watch gives its seq back unless a later watch took one. */
static void regwatch_give_back_seq(struct regwatch_ctx *ctx, u64 seq)
{
	lockdep_assert_held(&ctx->lock);
	if (ctx->next_seq == seq + 2)
		ctx->next_seq = seq;
}

/* The page-rounded range [*@first, *@end) of a watch: 0 or -EINVAL. */
static int regwatch_page_range(struct regwatch_ctx *ctx, u64 start,
			       u64 length, u64 *first, u64 *end)
{
	if (!length || check_add_overflow(start, length, end) ||
	    *end > ctx->mm->task_size)
		return -EINVAL;
	*first = round_down(start, PAGE_SIZE);
	*end = round_up(*end, PAGE_SIZE);
	return 0;
}

/*
 * Makes the INSERTING watch in @slot, whose notifier is inserted, LIVE.
 * An invalidation of its range that started before the insert does not
 * call us (or, for a slot whose notifier stayed inserted, called us while
 * the slot was ignored). Wait for it to end, so that pages the caller
 * looks up after the ioctl are the ones the watch covers: the callback
 * bumps the notifier's seq in every state.
 */
static void regwatch_go_live(struct regwatch_slot *slot)
{
	mmu_interval_read_begin(&slot->notifier);
	/*
	 * Without ctx->lock: only this call changes an INSERTING slot. The
	 * release orders the insert before an unwatch that sees LIVE.
	 */
	smp_store_release(&slot->state, REGWATCH_SLOT_LIVE);
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
 * Return: 0, -EINVAL for a bad range, -ENOSPC if all slots are in use or
 * the user has max_user_watches watches, -ENOMEM. Nothing changed on error.
 */
int regwatch_watch(struct regwatch_ctx *ctx, u64 start, u64 length,
		   u64 cookie, u32 *slot_out, u64 *seq_out)
{
	struct regwatch_slot *slot;
	u64 first, end;
	bool revived;
	u32 idx;
	u64 seq;
	int ret;

	ret = regwatch_page_range(ctx, start, length, &first, &end);
	if (ret)
		return ret;
	ret = regwatch_fix_capacity(ctx, 0);
	if (ret)
		return ret;
	if (!regwatch_user_charge(ctx->user))
		return -ENOSPC;
	/* the slot's storage stays where it is until the fd is released */
	slot = regwatch_claim_slot(ctx, first, end, cookie, &seq, &revived,
				   &ret);
	if (!slot)
		goto err_uncharge;
	idx = slot->index;

	if (!revived) {
		ret = mmu_interval_notifier_insert(&slot->notifier, ctx->mm,
						   first, end - first,
						   &ctx->notifier_ops);
		if (ret)
			goto err_release_slot;
	}
	regwatch_go_live(slot);

	*slot_out = idx;
	*seq_out = seq;
	return 0;

err_release_slot:
	spin_lock(&ctx->lock);
	regwatch_status_count(ctx, &ctx->status->total_watched, -1);
	regwatch_status_set_seq(ctx, idx, 0);
	regwatch_give_back_seq(ctx, seq);
	regwatch_free_slot(ctx, slot);
	spin_unlock(&ctx->lock);
err_uncharge:
	regwatch_user_uncharge(ctx->user, 1);
	return ret;
}

/**
 * regwatch_watch_instead() - unwatch one watch and watch a range in its slot
 * @ctx: the fd; the caller runs in ctx->mm
 * @victim_nr: slot of the watch to unwatch
 * @victim_cookie: its cookie
 * @start: first byte of the range to watch
 * @length: bytes
 * @cookie: cookie of the new watch
 * @slot_out: slot of the new watch (the victim's)
 * @seq_out: seq of the new watch
 *
 * The victim's slot, and its charge against max_user_watches, pass to the
 * new watch: no slot to find, nothing to allocate, no limit to hit. A
 * victim of the same page-rounded range hands over its inserted notifier;
 * another has its notifier removed and inserted again on the new range.
 *
 * Return: 0, or -EINVAL for a bad range or a victim that is not a live
 * watch with @victim_cookie; nothing changed then.
 */
int regwatch_watch_instead(struct regwatch_ctx *ctx, u64 victim_nr,
			   u64 victim_cookie, u64 start, u64 length,
			   u64 cookie, u32 *slot_out, u64 *seq_out)
{
	struct regwatch_slot *slot;
	u64 first, end;
	u64 seq;
	int ret;

	ret = regwatch_page_range(ctx, start, length, &first, &end);
	if (ret)
		return ret;
	spin_lock(&ctx->lock);
	slot = regwatch_live_slot(ctx, victim_nr, victim_cookie, 0);
	if (!slot) {
		spin_unlock(&ctx->lock);
		return -EINVAL;
	}
	/* From here on the call cannot fail: the victim is gone for good. */
	regwatch_end_watch(ctx, slot);
	if (regwatch_covers(slot, first, end)) {
		seq = regwatch_start_watch(ctx, slot, cookie);
		spin_unlock(&ctx->lock);
		goto out_live;
	}
	/* the callback ignores the slot until it holds the new watch */
	slot->state = REGWATCH_SLOT_REMOVING;
	spin_unlock(&ctx->lock);
	/* Waits for a running callback, which may still see the victim. */
	mmu_interval_notifier_remove(&slot->notifier);
	/*
	 * Fails only when the mm has no interval tree yet (making one
	 * allocates) or for an empty or overflowing range: the victim's
	 * insert made the tree and the range was checked above.
	 */
	ret = mmu_interval_notifier_insert(&slot->notifier, ctx->mm, first,
					   end - first, &ctx->notifier_ops);
	if (WARN_ON_ONCE(ret))
		goto err_free_slot;
	spin_lock(&ctx->lock);
	seq = regwatch_start_watch(ctx, slot, cookie);
	spin_unlock(&ctx->lock);
out_live:
	regwatch_go_live(slot);
	*slot_out = slot->index;
	*seq_out = seq;
	return 0;

err_free_slot:
	spin_lock(&ctx->lock);
	regwatch_free_slot(ctx, slot);
	spin_unlock(&ctx->lock);
	regwatch_user_uncharge(ctx->user, 1);
	return ret;
}

/*
 * Unwatches if @slot_nr holds a live watch with @cookie (and @seq unless 0).
 * The slot is parked with its notifier inserted, and the slot parked
 * before is dropped: a watch and unwatch of the same range, the pattern of
 * a cache that re-registers a buffer, then neither inserts nor removes.
 */
static int regwatch_unwatch_seq(struct regwatch_ctx *ctx, u64 slot_nr,
				u64 cookie, u64 seq)
{
	struct regwatch_slot *slot, *dropped;

	spin_lock(&ctx->lock);
	slot = regwatch_live_slot(ctx, slot_nr, cookie, seq);
	if (!slot) {
		spin_unlock(&ctx->lock);
		return -EINVAL;
	}
	/* From here the callback ignores the slot and read() cannot see it. */
	regwatch_end_watch(ctx, slot);
	dropped = regwatch_unpark(ctx);
	slot->state = REGWATCH_SLOT_PARKED;
	ctx->parked = slot->index;
	spin_unlock(&ctx->lock);
	regwatch_user_uncharge(ctx->user, 1);
	if (dropped)
		regwatch_drop_parked(ctx, dropped);
	return 0;
}

/**
 * regwatch_unwatch() - stop watching and free the slot
 * @ctx: the fd; the caller runs in ctx->mm
 * @slot_nr: slot returned by regwatch_watch()
 * @cookie: cookie given to regwatch_watch()
 *
 * Once this returns, no record of the watch can be read and the slot may be
 * reused. Its notifier stays, ignored, until the next unwatch, a watch of
 * the same range (which takes it over) or a full table needs the slot.
 *
 * Return: 0, or -EINVAL if @slot_nr holds no live watch with @cookie.
 */
int regwatch_unwatch(struct regwatch_ctx *ctx, u64 slot_nr, u64 cookie)
{
	return regwatch_unwatch_seq(ctx, slot_nr, cookie, 0);
}

/**
 * regwatch_watch_cancel() - take back a watch its caller never learnt of
 * @ctx: the fd
 * @slot: slot returned by regwatch_watch()
 * @cookie: cookie given to regwatch_watch()
 * @seq: seq returned by regwatch_watch()
 *
 * For a watch ioctl that could not copy its result out: unwatches and also
 * undoes the counting, so that the failed call leaves the totals as they
 * were and the seq is given back if no later watch took one. Another
 * thread that guessed the slot may have unwatched it first: that unwatch
 * stands, counted.
 */
void regwatch_watch_cancel(struct regwatch_ctx *ctx, u32 slot, u64 cookie,
			   u64 seq)
{
	if (regwatch_unwatch_seq(ctx, slot, cookie, seq))
		return;
	spin_lock(&ctx->lock);
	regwatch_status_count(ctx, &ctx->status->total_watched, -1);
	regwatch_status_count(ctx, &ctx->status->total_unwatched, -1);
	regwatch_give_back_seq(ctx, seq);
	spin_unlock(&ctx->lock);
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
	/* may turn from INSERTING to LIVE meanwhile: either is watched */
	u8 state = READ_ONCE(slot->state);
	u32 idx = slot->index;

	lockdep_assert_held(&ctx->lock);
	if (slot->dirty != REGWATCH_CLEAN ||
	    (state != REGWATCH_SLOT_INSERTING && state != REGWATCH_SLOT_LIVE))
		return false;
	slot->dirty = REGWATCH_PENDING;
	slot->reason = reason;
	regwatch_dirty_link_tail(ctx, slot);
	regwatch_status_dirtied(ctx, idx);
	return true;
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
		struct regwatch_slot *slot = regwatch_slot(ctx, idx);

		if (slot->state == REGWATCH_SLOT_FREE)
			continue;
		WARN_ON_ONCE(slot->state != REGWATCH_SLOT_LIVE &&
			     slot->state != REGWATCH_SLOT_PARKED);
		mmu_interval_notifier_remove(&slot->notifier);
		/* a parked slot's watch was uncharged when it was unwatched */
		if (slot->state == REGWATCH_SLOT_LIVE)
			removed++;
		cond_resched();
	}
	regwatch_user_uncharge(ctx->user, removed);
	regwatch_table_free(&ctx->chunks);
	regwatch_status_free(ctx);
}
