// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: an fd's capacity and the storage behind its slots.
 *
 * The capacity is fixed once (REGWATCH_IOC_SET_CAPACITY, else the default
 * at the first watch or mmap) and allocates only the status area's header
 * page. Slot storage (chunks of REGWATCH_CHUNK_SLOTS in a table) and the
 * status pages with their words come later, in order, when a watch first
 * needs a slot beyond those backed: an fd costs memory in proportion to the
 * most watches it had at once. Both are freed only by regwatch_teardown().
 */
#include <linux/overflow.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

#include "regwatch_internal.h"

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

/**
 * regwatch_table_append() - add a block at the end of one of an fd's tables
 * @ctx: the fd, ctx->setup_lock held
 * @table: &ctx->chunks or &ctx->status_pages
 * @block: a vmalloc'ed block, which the table owns once this succeeded
 *
 * A full table is copied into one twice as large first; the copy replaces
 * it under ctx->lock, so that no look-up uses the old one once it is freed.
 *
 * Return: 0 or -ENOMEM (the table unchanged).
 */
int regwatch_table_append(struct regwatch_ctx *ctx,
			  struct regwatch_table *table, void *block)
{
	void **grown = NULL, **old = NULL;
	u32 room = table->room;

	lockdep_assert_held(&ctx->setup_lock);
	if (table->count == room) {
		room = room ? 2 * room : 8;
		grown = kvmalloc_array(room, sizeof(*grown), REGWATCH_GFP);
		if (!grown)
			return -ENOMEM;
		if (table->count)
			memcpy(grown, table->blocks,
			       table->count * sizeof(*grown));
	}
	spin_lock(&ctx->lock);
	if (grown) {
		old = table->blocks;
		table->blocks = grown;
		table->room = room;
	}
	table->blocks[table->count++] = block;
	spin_unlock(&ctx->lock);
	kvfree(old);
	return 0;
}

/**
 * regwatch_table_free() - free a table and every block in it
 * @table: a table of an fd being released
 */
void regwatch_table_free(struct regwatch_table *table)
{
	u32 i;

	for (i = 0; i < table->count; i++)
		vfree(table->blocks[i]);
	kvfree(table->blocks);
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
	ret = regwatch_table_append(ctx, &ctx->chunks, chunk);
	if (ret)
		vfree(chunk);
	return ret;
}

/**
 * regwatch_grow() - back one more slot
 * @ctx: the fd; neither of its locks held
 * @idx: the first slot without storage (slots are backed in order)
 *
 * Gives slot @idx storage and a status word, unless that happened already.
 *
 * Return: 0 or -ENOMEM.
 */
int regwatch_grow(struct regwatch_ctx *ctx, u32 idx)
{
	u32 backed;
	int ret = 0;

	mutex_lock(&ctx->setup_lock);
	if (READ_ONCE(ctx->backed) > idx)
		goto out_unlock;
	if (ctx->chunks.count * REGWATCH_CHUNK_SLOTS <= idx) {
		ret = regwatch_add_chunk(ctx);
		if (ret)
			goto out_unlock;
	}
	if (regwatch_status_slots(ctx) <= idx) {
		ret = regwatch_status_grow(ctx);
		if (ret)
			goto out_unlock;
	}
	backed = min3(ctx->chunks.count * REGWATCH_CHUNK_SLOTS,
		      regwatch_status_slots(ctx), ctx->nslots);
	spin_lock(&ctx->lock);
	ctx->backed = backed;
	spin_unlock(&ctx->lock);
out_unlock:
	mutex_unlock(&ctx->setup_lock);
	return ret;
}
