// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: read()'s side, handing out the records of dirty watches.
 *
 * Records go straight from the slots and the status words into the
 * reader's memory under ctx->lock, with page faults disabled; a watch
 * leaves the dirty list only once its record is written.
 */
#include <linux/uaccess.h>
#include <linux/uio.h>

#include "regwatch_internal.h"

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
			run.chunk = ctx->chunks.blocks[run.chunk_nr];
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
