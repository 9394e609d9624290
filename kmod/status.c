// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: the status area, mapped read-only into the owning process.
 *
 * Layout (struct regwatch_status, then one u64 seq word per slot) is fixed
 * by include/uapi/linux/regwatch.h. Only the kernel writes it, always under
 * ctx->lock; user space reads it with acquire loads.
 */
#include <linux/mm.h>
#include <linux/vmalloc.h>

#include "regwatch_internal.h"

static u64 *regwatch_seq_words(struct regwatch_ctx *ctx)
{
	return REGWATCH_STATUS_SEQ(ctx->status);
}

/**
 * regwatch_status_alloc() - allocate and initialise the status area
 * @ctx: the fd; called once, under ctx->setup_lock
 * @nslots: number of slot words
 *
 * vmalloc_user() cannot charge the caller's memory cgroup, so the area is
 * an accounted __vmalloc() whose pages regwatch_status_mmap() inserts one
 * by one.
 *
 * Return: 0 or -ENOMEM.
 */
int regwatch_status_alloc(struct regwatch_ctx *ctx, u32 nslots)
{
	size_t size = REGWATCH_STATUS_SIZE(nslots, PAGE_SIZE);
	struct regwatch_status *status;

	lockdep_assert_held(&ctx->setup_lock);
	status = __vmalloc(size, GFP_KERNEL_ACCOUNT | __GFP_ZERO);
	if (!status)
		return -ENOMEM;
	status->abi_version = REGWATCH_API;
	status->header_size = sizeof(*status);
	status->nslots = nslots;
	ctx->status = status;
	ctx->status_size = size;
	return 0;
}

/**
 * regwatch_status_free() - free the status area
 * @ctx: the fd, being released (no mapping can exist: it holds the file)
 */
void regwatch_status_free(struct regwatch_ctx *ctx)
{
	vfree(ctx->status);
}

/**
 * regwatch_status_mmap() - map the whole status area read-only
 * @ctx: the fd; capacity already fixed
 * @vma: the new mapping; mmap_lock held for writing
 *
 * Return: 0; -EINVAL for a non-zero offset, a length other than
 * ctx->status_size or a private mapping; -EPERM for a writable or executable
 * mapping; or an error of vm_insert_page().
 */
int regwatch_status_mmap(struct regwatch_ctx *ctx, struct vm_area_struct *vma)
{
	unsigned long size = vma->vm_end - vma->vm_start;
	char *kaddr = (char *)ctx->status;
	unsigned long addr;
	int ret;

	if (vma->vm_pgoff || size != ctx->status_size ||
	    !(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (vma->vm_flags & (VM_WRITE | VM_EXEC))
		return -EPERM;
	/*
	 * No mprotect() to writable, no growth by mremap, no copy into a fork
	 * child (whose fd could not be used anyway), not in core dumps.
	 */
	regwatch_vm_flags_mod(vma, VM_DONTCOPY | VM_DONTEXPAND | VM_DONTDUMP,
			      VM_MAYWRITE | VM_MAYEXEC);
	for (addr = vma->vm_start; addr < vma->vm_end;
	     addr += PAGE_SIZE, kaddr += PAGE_SIZE) {
		ret = vm_insert_page(vma, addr, vmalloc_to_page(kaddr));
		if (ret)
			return ret;
	}
	return 0;
}

/**
 * regwatch_status_seq() - current value of a slot word
 * @ctx: the fd
 * @slot: slot index
 *
 * Return: the word (seq, seq | REGWATCH_SEQ_DIRTY or 0).
 */
u64 regwatch_status_seq(struct regwatch_ctx *ctx, u32 slot)
{
	lockdep_assert_held(&ctx->lock);
	return regwatch_seq_words(ctx)[slot];
}

/**
 * regwatch_status_set_seq() - publish a slot word
 * @ctx: the fd
 * @slot: slot index
 * @seq: new value: a new watch's seq, or 0 when the slot is given up
 */
void regwatch_status_set_seq(struct regwatch_ctx *ctx, u32 slot, u64 seq)
{
	lockdep_assert_held(&ctx->lock);
	smp_store_release(&regwatch_seq_words(ctx)[slot], seq);
}

/**
 * regwatch_status_dirtied() - publish that the watch in @slot turned dirty
 * @ctx: the fd
 * @slot: slot index
 *
 * The slot word and counters change first; the generation is bumped last,
 * with release ordering, so a reader that sees the new generation also sees
 * the dirty word.
 */
void regwatch_status_dirtied(struct regwatch_ctx *ctx, u32 slot)
{
	struct regwatch_status *status = ctx->status;
	u64 *word = &regwatch_seq_words(ctx)[slot];

	lockdep_assert_held(&ctx->lock);
	WRITE_ONCE(*word, *word | REGWATCH_SEQ_DIRTY);
	regwatch_status_count(ctx, &status->dirty_unread, 1);
	regwatch_status_count(ctx, &status->total_dirtied, 1);
	smp_store_release(&status->generation, status->generation + 1);
}

/**
 * regwatch_status_count() - add to one of the status area's counters
 * @ctx: the fd
 * @counter: field of ctx->status
 * @delta: amount
 */
void regwatch_status_count(struct regwatch_ctx *ctx, u64 *counter, s64 delta)
{
	lockdep_assert_held(&ctx->lock);
	WRITE_ONCE(*counter, *counter + delta);
}
