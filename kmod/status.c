// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: the status area, mapped read-only into the owning process.
 *
 * Layout (struct regwatch_status, then one u64 seq word per slot) is fixed
 * by include/uapi/linux/regwatch.h. Only the kernel writes it, always under
 * ctx->lock; user space reads it with acquire loads. The header page exists
 * once the capacity is fixed; each further page when a slot whose word lies
 * in it is first used, so memory follows the watches, not the capacity.
 */
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/vmalloc.h>

#include "regwatch_internal.h"

/*
 * Mapped in place of status pages not allocated yet: their slots were never
 * used, so every word there reads 0 (slot not in use). Never written.
 */
static struct page *regwatch_zero_page;

/**
 * regwatch_status_init() - allocate the module's page of zeros
 *
 * Return: 0 or -ENOMEM.
 */
int regwatch_status_init(void)
{
	regwatch_zero_page = alloc_page(GFP_KERNEL | __GFP_ZERO);
	return regwatch_zero_page ? 0 : -ENOMEM;
}

/**
 * regwatch_status_exit() - free the module's page of zeros
 */
void regwatch_status_exit(void)
{
	__free_page(regwatch_zero_page);
}

static size_t regwatch_word_offset(u32 slot)
{
	return sizeof(struct regwatch_status) + (size_t)slot * sizeof(u64);
}

/* The slot's word; its status page exists (slot < ctx->backed). */
static u64 *regwatch_word(struct regwatch_ctx *ctx, u32 slot)
{
	size_t offset = regwatch_word_offset(slot);
	char *page = ctx->status_pages.blocks[offset >> PAGE_SHIFT];

	return (u64 *)(page + offset_in_page(offset));
}

/* Adds a zeroed page after the last status page; ctx->setup_lock held. */
static int regwatch_status_add_page(struct regwatch_ctx *ctx)
{
	void *page;
	int ret;

	lockdep_assert_held(&ctx->setup_lock);
	page = __vmalloc(PAGE_SIZE, REGWATCH_GFP | __GFP_ZERO);
	if (!page)
		return -ENOMEM;
	ret = regwatch_table_append(ctx, &ctx->status_pages, page);
	if (ret)
		vfree(page);
	return ret;
}

/**
 * regwatch_status_alloc() - allocate and initialise the header page
 * @ctx: the fd; called once, under ctx->setup_lock
 * @nslots: number of slot words the area will have
 *
 * Only page 0 is allocated here; regwatch_status_grow() adds the others as
 * slots are first used.
 *
 * Return: 0 or -ENOMEM.
 */
int regwatch_status_alloc(struct regwatch_ctx *ctx, u32 nslots)
{
	struct regwatch_status *status;
	int ret;

	ret = regwatch_status_add_page(ctx);
	if (ret)
		return ret;
	status = ctx->status_pages.blocks[0];
	status->abi_version = REGWATCH_API;
	status->header_size = sizeof(*status);
	status->nslots = nslots;
	ctx->status = status;
	ctx->status_size = REGWATCH_STATUS_SIZE(nslots, PAGE_SIZE);
	return 0;
}

/**
 * regwatch_status_grow() - add the next page of slot words
 * @ctx: the fd, ctx->setup_lock held
 *
 * The page is published before any mapping of the area can fault it in;
 * mappings that show the page of zeros at its place lose that PTE, so that
 * their next access faults in the new page. Mapping happens under
 * ctx->setup_lock too, so no fault can map the zeros after the zap.
 *
 * Return: 0 or -ENOMEM.
 */
int regwatch_status_grow(struct regwatch_ctx *ctx)
{
	u32 index = ctx->status_pages.count;
	int ret;

	ret = regwatch_status_add_page(ctx);
	if (ret)
		return ret;
	unmap_mapping_range(ctx->mapping, (loff_t)index << PAGE_SHIFT,
			    PAGE_SIZE, 1);
	return 0;
}

/**
 * regwatch_status_slots() - slots whose words lie in allocated pages
 * @ctx: the fd, ctx->setup_lock held
 *
 * Return: the number of such slots, counted from slot 0.
 */
u32 regwatch_status_slots(struct regwatch_ctx *ctx)
{
	lockdep_assert_held(&ctx->setup_lock);
	return ((size_t)ctx->status_pages.count * PAGE_SIZE -
		sizeof(struct regwatch_status)) / sizeof(u64);
}

/**
 * regwatch_status_free() - free the status area
 * @ctx: the fd, being released (no mapping can exist: it holds the file)
 */
void regwatch_status_free(struct regwatch_ctx *ctx)
{
	regwatch_table_free(&ctx->status_pages);
}

/*
 * Maps the page behind a fault: the status page if it exists, else the
 * page of zeros. Under ctx->setup_lock, which regwatch_status_grow() holds
 * while publishing a page, so the zeros are never mapped after the zap that
 * removes them.
 */
static vm_fault_t regwatch_status_fault(struct vm_fault *vmf)
{
	struct regwatch_ctx *ctx = vmf->vma->vm_file->private_data;
	unsigned long pfn;
	vm_fault_t ret;
	void *page;

	mutex_lock(&ctx->setup_lock);
	page = vmf->pgoff < ctx->status_pages.count ?
	       ctx->status_pages.blocks[vmf->pgoff] : NULL;
	pfn = page ? vmalloc_to_pfn(page) : page_to_pfn(regwatch_zero_page);
	ret = vmf_insert_pfn(vmf->vma, vmf->address, pfn);
	mutex_unlock(&ctx->setup_lock);
	return ret;
}

static const struct vm_operations_struct regwatch_status_vm_ops = {
	.fault = regwatch_status_fault,
};

/**
 * regwatch_status_mmap() - map the whole status area read-only
 * @ctx: the fd; ctx->setup_lock held
 * @vma: the new mapping; mmap_lock held for writing
 * @nslots: the capacity, fixed already or to be fixed by the caller once
 *	this succeeded
 *
 * Checks the mapping before anything changes.
 *
 * Pages are mapped by the fault handler, as PFN mappings of a VM_IO area:
 * madvise() refuses MADV_DONTNEED, MADV_FREE and friends on VM_PFNMAP
 * (EINVAL) and MADV_DOFORK on VM_IO (EINVAL), so the area can neither be
 * zapped nor be copied into a fork child (VM_DONTCOPY stays); get_user_pages
 * and /proc/pid/mem cannot reach it either.
 *
 * Return: 0; -EINVAL for a non-zero offset, a length other than the area's
 * or a private mapping; -EPERM for a writable or executable mapping.
 */
int regwatch_status_mmap(struct regwatch_ctx *ctx, struct vm_area_struct *vma,
			 u32 nslots)
{
	unsigned long size = vma->vm_end - vma->vm_start;

	lockdep_assert_held(&ctx->setup_lock);
	if (vma->vm_pgoff || size != REGWATCH_STATUS_SIZE(nslots, PAGE_SIZE) ||
	    !(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (vma->vm_flags & (VM_WRITE | VM_EXEC))
		return -EPERM;
	/* also: no mprotect() to writable, no growth by mremap, no core dump */
	regwatch_vm_flags_mod(vma, VM_IO | VM_PFNMAP | VM_DONTCOPY |
			      VM_DONTEXPAND | VM_DONTDUMP,
			      VM_MAYWRITE | VM_MAYEXEC);
	vma->vm_ops = &regwatch_status_vm_ops;
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
	return *regwatch_word(ctx, slot);
}

/**
 * regwatch_status_words() - the slot words on the status page of a slot
 * @ctx: the fd, ctx->lock held
 * @slot: a slot below ctx->backed
 * @run: filled in: @run->word[i] is the word of slot @run->first + i, for
 *	i below @run->count (every word on that page)
 *
 * For walks over many slots, which then look up a page once per page.
 */
void regwatch_status_words(struct regwatch_ctx *ctx, u32 slot,
			   struct regwatch_status_run *run)
{
	size_t page_start = regwatch_word_offset(slot) & PAGE_MASK;
	size_t first_offset;
	char *page;

	lockdep_assert_held(&ctx->lock);
	run->first = page_start <= sizeof(struct regwatch_status) ? 0 :
		     (page_start - sizeof(struct regwatch_status)) / sizeof(u64);
	first_offset = regwatch_word_offset(run->first);
	run->count = (page_start + PAGE_SIZE - first_offset) / sizeof(u64);
	page = ctx->status_pages.blocks[page_start >> PAGE_SHIFT];
	run->word = (const u64 *)(page + (first_offset - page_start));
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
	smp_store_release(regwatch_word(ctx, slot), seq);
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
	u64 *word = regwatch_word(ctx, slot);

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
