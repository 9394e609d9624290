// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: the per-fd watch table, its free list and its dirty list.
 *
 * Watches live in chunks of REGWATCH_CHUNK_SLOTS slots, found by chunk
 * number in an xarray. Chunks are allocated (with the status pages their
 * words need) only when a slot in them is first used: an fd costs memory
 * in proportion to the most watches it had at once, not to its capacity.
 * Both lists link slots by u32 index through regwatch_slot.next/prev, which
 * keeps a watch at 112 bytes; a slot is on at most one list at a time (free
 * list while FREE, dirty list while PENDING).
 */
#include <linux/overflow.h>
#include <linux/poll.h>
#include <linux/sched/mm.h>
#include <linux/uaccess.h>
#include <linux/uio.h>
#include <linux/vmalloc.h>

#include "regwatch_internal.h"

/* Slot @idx, below ctx->backed. */
static struct regwatch_slot *regwatch_slot(struct regwatch_ctx *ctx, u32 idx)
{
	struct regwatch_slot *chunk =
		xa_load(&ctx->chunks, idx / REGWATCH_CHUNK_SLOTS);

	return &chunk[idx % REGWATCH_CHUNK_SLOTS];
}

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

/**
 * regwatch_fix_capacity_locked() - fix the capacity once
 * @ctx: the fd, ctx->setup_lock held
 * @nslots: capacity asked for by REGWATCH_IOC_SET_CAPACITY (already checked
 *	against regwatch_max_slots()), or 0 to fix the default if no capacity
 *	was fixed yet (first watch, first mmap)
 *
 * Allocates the header page of the status area only; slot storage and the
 * other status pages come with the first use of their slots.
 *
 * Return: 0; -EBUSY if @nslots is not 0 and the capacity was already fixed;
 * -ENOMEM.
 */
int regwatch_fix_capacity_locked(struct regwatch_ctx *ctx, u32 nslots)
{
	u32 wanted = nslots ? nslots : regwatch_default_slots();
	int ret;

	lockdep_assert_held(&ctx->setup_lock);
	if (ctx->nslots)
		return nslots ? -EBUSY : 0;
	ret = regwatch_status_alloc(ctx, wanted);
	if (ret)
		return ret;
	/* pairs with the acquire loads of nslots before the status is used */
	smp_store_release(&ctx->nslots, wanted);
	return 0;
}

/**
 * regwatch_fix_capacity() - fix the capacity once, taking ctx->setup_lock
 * @ctx: the fd
 * @nslots: as for regwatch_fix_capacity_locked()
 *
 * Return: as regwatch_fix_capacity_locked().
 */
int regwatch_fix_capacity(struct regwatch_ctx *ctx, u32 nslots)
{
	int ret;

	if (!nslots && smp_load_acquire(&ctx->nslots))
		return 0;
	mutex_lock(&ctx->setup_lock);
	ret = regwatch_fix_capacity_locked(ctx, nslots);
	mutex_unlock(&ctx->setup_lock);
	return ret;
}

/* Adds the next chunk of slots; ctx->setup_lock held. */
static int regwatch_add_chunk(struct regwatch_ctx *ctx)
{
	struct regwatch_slot *chunk;
	int ret;

	lockdep_assert_held(&ctx->setup_lock);
	chunk = __vmalloc(array_size(REGWATCH_CHUNK_SLOTS, sizeof(*chunk)),
			  REGWATCH_GFP | __GFP_ZERO);
	if (!chunk)
		return -ENOMEM;
	ret = xa_err(xa_store(&ctx->chunks, ctx->nchunks, chunk, REGWATCH_GFP));
	if (ret) {
		vfree(chunk);
		return ret;
	}
	ctx->nchunks++;
	return 0;
}

/*
 * Gives slot @idx storage and a status word, unless that happened already.
 * Slots are backed in order, so @idx is the first slot without.
 */
static int regwatch_grow(struct regwatch_ctx *ctx, u32 idx)
{
	u32 backed;
	int ret = 0;

	mutex_lock(&ctx->setup_lock);
	if (READ_ONCE(ctx->backed) > idx)
		goto out_unlock;
	if (ctx->nchunks * REGWATCH_CHUNK_SLOTS <= idx) {
		ret = regwatch_add_chunk(ctx);
		if (ret)
			goto out_unlock;
	}
	if (regwatch_status_slots(ctx) <= idx) {
		ret = regwatch_status_grow(ctx);
		if (ret)
			goto out_unlock;
	}
	backed = min3(ctx->nchunks * REGWATCH_CHUNK_SLOTS,
		      regwatch_status_slots(ctx), ctx->nslots);
	spin_lock(&ctx->lock);
	ctx->backed = backed;
	spin_unlock(&ctx->lock);
out_unlock:
	mutex_unlock(&ctx->setup_lock);
	return ret;
}

/*
 * Takes a free slot with storage for a new watch and gives it @cookie and
 * the next seq, in the same hold of ctx->lock: the slot, or NULL with *@err
 * -ENOSPC or -ENOMEM.
 */
static struct regwatch_slot *regwatch_claim_slot(struct regwatch_ctx *ctx,
						 u64 cookie, u64 *seq, int *err)
{
	for (;;) {
		struct regwatch_slot *slot;
		u32 idx, next;

		spin_lock(&ctx->lock);
		slot = regwatch_alloc_slot(ctx, &idx);
		if (slot) {
			slot->state = REGWATCH_SLOT_INSERTING;
			slot->dirty = REGWATCH_CLEAN;
			slot->cookie = cookie;
			slot->index = idx;
			*seq = ctx->next_seq;
			ctx->next_seq += 2;
			regwatch_status_set_seq(ctx, idx, *seq);
			spin_unlock(&ctx->lock);
			return slot;
		}
		next = ctx->high_water;
		spin_unlock(&ctx->lock);
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
	if (!regwatch_user_charge(ctx->user))
		return -ENOSPC;
	/* the slot's storage stays where it is until the fd is released */
	slot = regwatch_claim_slot(ctx, cookie, &seq, &ret);
	if (!slot)
		goto err_uncharge;
	idx = slot->index;

	ret = mmu_interval_notifier_insert(&slot->notifier, ctx->mm, first,
					   end - first, &ctx->notifier_ops);
	if (ret)
		goto err_release_slot;
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

err_release_slot:
	spin_lock(&ctx->lock);
	regwatch_status_set_seq(ctx, idx, 0);
	regwatch_give_back_seq(ctx, seq);
	regwatch_free_slot(ctx, slot);
	spin_unlock(&ctx->lock);
err_uncharge:
	regwatch_user_uncharge(ctx->user, 1);
	return ret;
}

/* Unwatches if @slot_nr holds a live watch with @cookie (and @seq unless 0). */
static int regwatch_unwatch_seq(struct regwatch_ctx *ctx, u64 slot_nr,
				u64 cookie, u64 seq)
{
	struct regwatch_slot *slot;
	u32 idx;

	spin_lock(&ctx->lock);
	if (slot_nr >= ctx->high_water) {
		spin_unlock(&ctx->lock);
		return -EINVAL;
	}
	idx = slot_nr;
	slot = regwatch_slot(ctx, idx);
	if (slot->state != REGWATCH_SLOT_LIVE || slot->cookie != cookie ||
	    (seq && (regwatch_status_seq(ctx, idx) & ~REGWATCH_SEQ_DIRTY) != seq)) {
		spin_unlock(&ctx->lock);
		return -EINVAL;
	}
	/* From here the callback ignores the slot and read() cannot see it. */
	slot->state = REGWATCH_SLOT_REMOVING;
	if (slot->dirty == REGWATCH_PENDING) {
		regwatch_dirty_unlink(ctx, slot);
		regwatch_status_count(ctx, &ctx->status->dirty_unread, -1);
	}
	regwatch_status_set_seq(ctx, idx, 0);
	regwatch_status_count(ctx, &ctx->status->total_unwatched, 1);
	spin_unlock(&ctx->lock);

	/* Waits for a running callback; the slot must not be reused before. */
	mmu_interval_notifier_remove(&slot->notifier);

	spin_lock(&ctx->lock);
	regwatch_free_slot(ctx, slot);
	spin_unlock(&ctx->lock);
	regwatch_user_uncharge(ctx->user, 1);
	atomic_long_dec(&regwatch_live_watches);
	return 0;
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
	u32 idx = slot->index;

	lockdep_assert_held(&ctx->lock);
	if (slot->dirty != REGWATCH_CLEAN ||
	    (slot->state != REGWATCH_SLOT_INSERTING &&
	     slot->state != REGWATCH_SLOT_LIVE))
		return false;
	slot->dirty = REGWATCH_PENDING;
	slot->reason = reason;
	regwatch_dirty_link_tail(ctx, slot);
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

/*
 * The user memory where @to's next byte goes, and in *@room how many whole
 * records its segment holds; NULL for a kernel iterator or a record that
 * would straddle two iovecs.
 */
static struct regwatch_record __user *regwatch_user_room(struct iov_iter *to,
							 unsigned int *room)
{
	void __user *base;
	size_t bytes;

	if (!user_backed_iter(to))
		return NULL;
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 4, 0)
	/* iter_iov_addr() and iter_iov_len() came with 6.4 */
	if (iter_is_ubuf(to)) {
		base = to->ubuf + to->iov_offset;
		bytes = iov_iter_count(to);
	} else {
		base = to->iov->iov_base + to->iov_offset;
		bytes = to->iov->iov_len - to->iov_offset;
	}
#else
	base = iter_iov_addr(to);
	bytes = iter_iov_len(to);
#endif
	bytes = min(bytes, iov_iter_count(to));
	*room = min_t(size_t, bytes / sizeof(struct regwatch_record), U32_MAX);
	return *room ? base : NULL;
}

/* Where the records of one run come from and how far the run may go. */
struct regwatch_run {
	struct regwatch_slot *chunk;
	u32 chunk_nr;
	struct regwatch_status_run words;
};

/*
 * The record of @slot (number @idx), field by field: an initializer would
 * clear it first on kernels built to zero stack variables.
 */
static void regwatch_fill_record(struct regwatch_record *rec,
				 const struct regwatch_run *run,
				 const struct regwatch_slot *slot, u32 idx)
{
	rec->cookie = slot->cookie;
	rec->seq = run->words.word[idx - run->words.first] & ~REGWATCH_SEQ_DIRTY;
	rec->start = slot->notifier.interval_tree.start;
	rec->end = slot->notifier.interval_tree.last + 1;
	rec->slot = idx;
	rec->reason = slot->reason;
	rec->reserved = 0;
}

/*
 * Writes the records of the pending watches from *@idx on straight into
 * user memory at @dst, at most @limit, while they stay in @run's chunk and
 * status page, in one window of user access (no call may happen in it).
 * Moves each watch written to REPORTED and *@idx past it. Page faults are
 * disabled: a page that is not present (or not writable) stops the run.
 *
 * Return: the records written; *@faulted tells whether a fault stopped it.
 */
static unsigned int regwatch_put_run(const struct regwatch_run *run,
				     struct regwatch_record __user *dst,
				     unsigned int limit, u32 *idx,
				     bool *faulted)
{
	unsigned int done = 0;
	u32 next = *idx;

	*faulted = true;
	if (!user_write_access_begin(dst, (size_t)limit * sizeof(*dst)))
		return 0;
	while (done < limit && next != REGWATCH_NO_SLOT &&
	       next / REGWATCH_CHUNK_SLOTS == run->chunk_nr &&
	       next - run->words.first < run->words.count) {
		struct regwatch_slot *slot =
			&run->chunk[next % REGWATCH_CHUNK_SLOTS];
		struct regwatch_record __user *rec = &dst[done];
		u64 seq = run->words.word[next - run->words.first];

		unsafe_put_user(slot->cookie, &rec->cookie, err_access_end);
		unsafe_put_user(seq & ~REGWATCH_SEQ_DIRTY, &rec->seq,
				err_access_end);
		unsafe_put_user(slot->notifier.interval_tree.start, &rec->start,
				err_access_end);
		unsafe_put_user(slot->notifier.interval_tree.last + 1, &rec->end,
				err_access_end);
		unsafe_put_user(next, &rec->slot, err_access_end);
		unsafe_put_user((u32)slot->reason, &rec->reason, err_access_end);
		unsafe_put_user(0ULL, &rec->reserved, err_access_end);
		slot->dirty = REGWATCH_REPORTED;
		done++;
		next = slot->next;
	}
	*faulted = false;
err_access_end:
	user_write_access_end();
	*idx = next;
	return done;
}

/**
 * regwatch_take_records() - hand out the oldest pending watches
 * @ctx: the fd
 * @to: where the records go
 * @max: at most this many records
 *
 * Writes the records into @to under ctx->lock, with page faults disabled
 * (a fault could sleep, and reclaim could enter our own callback), and
 * moves each watch written to REPORTED. It stops at the first record that
 * cannot be written whole, whose watch stays pending: the caller faults
 * the destination in (fault_in_iov_iter_writeable()) and calls again. So
 * a watch leaves the dirty list only once its record is in the caller's
 * memory, and nothing is ever put back. Runs of consecutive slots (the
 * usual order of a munmap's invalidations) share one lookup of their chunk
 * and status page and go out in one window of user access, a store per
 * field: no bounce buffer, no string copy. Only a record that straddles
 * two iovecs, or a kernel destination, goes through copy_to_iter(). The
 * taken run is cut off the front of the dirty list in one step.
 *
 * Return: number of records written.
 */
unsigned int regwatch_take_records(struct regwatch_ctx *ctx,
				   struct iov_iter *to, unsigned int max)
{
	struct regwatch_run run = {
		.chunk_nr = REGWATCH_NO_SLOT,
		.words = { .count = 0 },
	};
	struct regwatch_record rec;
	unsigned int count = 0;
	u32 idx;

	spin_lock(&ctx->lock);
	pagefault_disable();
	idx = ctx->dirty_head;
	while (count < max && idx != REGWATCH_NO_SLOT) {
		struct regwatch_record __user *dst;
		struct regwatch_slot *slot;
		unsigned int room, done;
		bool faulted;

		if (idx / REGWATCH_CHUNK_SLOTS != run.chunk_nr) {
			run.chunk_nr = idx / REGWATCH_CHUNK_SLOTS;
			run.chunk = xa_load(&ctx->chunks, run.chunk_nr);
		}
		if (idx - run.words.first >= run.words.count)
			regwatch_status_words(ctx, idx, &run.words);
		dst = regwatch_user_room(to, &room);
		if (dst) {
			done = regwatch_put_run(&run, dst, min(room, max - count),
						&idx, &faulted);
			iov_iter_advance(to, done * sizeof(rec));
			count += done;
			if (faulted)
				break;
			continue;
		}
		slot = &run.chunk[idx % REGWATCH_CHUNK_SLOTS];
		regwatch_fill_record(&rec, &run, slot, idx);
		done = copy_to_iter(&rec, sizeof(rec), to);
		if (done != sizeof(rec)) {
			iov_iter_revert(to, done);
			break;
		}
		slot->dirty = REGWATCH_REPORTED;
		count++;
		idx = slot->next;
	}
	pagefault_enable();
	WRITE_ONCE(ctx->dirty_head, idx);
	if (idx == REGWATCH_NO_SLOT)
		ctx->dirty_tail = REGWATCH_NO_SLOT;
	else
		regwatch_slot(ctx, idx)->prev = REGWATCH_NO_SLOT;
	regwatch_status_count(ctx, &ctx->status->dirty_unread, -(s64)count);
	regwatch_status_count(ctx, &ctx->status->total_reported, count);
	spin_unlock(&ctx->lock);
	return count;
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
	struct regwatch_slot *chunk;
	unsigned long index;
	long removed = 0;
	u32 idx;

	for (idx = 0; idx < ctx->high_water; idx++) {
		struct regwatch_slot *slot = regwatch_slot(ctx, idx);

		if (slot->state == REGWATCH_SLOT_FREE)
			continue;
		WARN_ON_ONCE(slot->state != REGWATCH_SLOT_LIVE);
		mmu_interval_notifier_remove(&slot->notifier);
		removed++;
		cond_resched();
	}
	regwatch_user_uncharge(ctx->user, removed);
	atomic_long_sub(removed, &regwatch_live_watches);
	xa_for_each(&ctx->chunks, index, chunk)
		vfree(chunk);
	xa_destroy(&ctx->chunks);
	regwatch_status_free(ctx);
}
