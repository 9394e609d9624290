/* SPDX-License-Identifier: GPL-2.0 */
/*
 * regwatch internals shared by the module's source files.
 */
#ifndef _REGWATCH_INTERNAL_H
#define _REGWATCH_INTERNAL_H

#include <linux/atomic.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/uio.h>
#include <linux/uidgid.h>
#include <linux/version.h>
#include <linux/wait.h>
#include <linux/regwatch.h>

/* Slot indices are u32; this value terminates the free and dirty lists. */
#define REGWATCH_NO_SLOT	U32_MAX
/* Hard ceiling for the max_slots parameter (about 2 GiB of kernel memory). */
#define REGWATCH_SLOTS_LIMIT	(1U << 24)
/* Slots per chunk of slot storage; a chunk is allocated when first needed. */
#define REGWATCH_CHUNK_SLOTS	512
/* Kernel bytes one watch may cost (the design's budget), for the defaults. */
#define REGWATCH_WATCH_COST	128
/*
 * Every allocation made for an fd: charged to the caller's memory cgroup,
 * and failing with ENOMEM instead of invoking the OOM killer (the memcg's
 * or the system's) or warning.
 */
#define REGWATCH_GFP	(GFP_KERNEL_ACCOUNT | __GFP_RETRY_MAYFAIL | __GFP_NOWARN)

enum regwatch_slot_state {
	REGWATCH_SLOT_FREE = 0,
	/* reserved by a watch ioctl that is still inserting its notifier */
	REGWATCH_SLOT_INSERTING,
	REGWATCH_SLOT_LIVE,
	/* its parked notifier is being removed; the slot is not yet reusable */
	REGWATCH_SLOT_REMOVING,
	/*
	 * unwatched, its notifier still inserted and ignored: a watch of the
	 * same range takes it over; the next unwatch or a full table drops it
	 */
	REGWATCH_SLOT_PARKED,
};

enum regwatch_dirty_state {
	REGWATCH_CLEAN = 0,
	/* dirty and on the dirty list, waiting for read() */
	REGWATCH_PENDING,
	/* dirty and already returned by read() */
	REGWATCH_REPORTED,
};

/**
 * struct regwatch_user - watches alive of one user over all its fds
 * @node: entry in the module's table of users (main.c).
 * @uid: the user (effective uid of the fds' openers).
 * @fds: open fds counting against this user; protected by the table's lock.
 * @watches: watches alive; never above max_user_watches by a charge.
 */
struct regwatch_user {
	struct hlist_node node;
	kuid_t uid;
	unsigned int fds;
	atomic_long_t watches;
};

/**
 * struct regwatch_table - an fd's blocks of storage by number
 * @blocks: blocks 0 .. @count - 1 (vmalloc'ed chunks of slots or status
 *	pages); kvmalloc'ed, replaced by a copy twice as large when full.
 *	Indexed with regwatch_ctx.lock or regwatch_ctx.setup_lock held (or
 *	while the fd is released), replaced with both held.
 * @count: blocks in the table; written with both locks held.
 * @room: entries @blocks has room for.
 *
 * Plain indexing where an xarray took an xa_load() call per look-up: the
 * watch+unwatch pair looks up a slot and a status word twice each, and
 * those four calls were about 40% of the module's work in the pair under
 * TCG (benches/RESULTS.md, stop 19).
 */
struct regwatch_table {
	void **blocks;
	u32 count;
	u32 room;
};

/**
 * struct regwatch_slot - one watch, stored in a chunk of the fd's slots
 * @notifier: interval notifier covering the page-rounded range.
 * @cookie: user cookie.
 * @next: dirty-list successor while PENDING, free-list successor while FREE.
 * @prev: dirty-list predecessor while PENDING.
 * @index: slot number.
 * @state: enum regwatch_slot_state.
 * @dirty: enum regwatch_dirty_state.
 * @reason: enum regwatch_reason of the first event that dirtied it.
 *
 * Kept small on purpose: a million watches must cost at most 128 bytes
 * each. The owning ctx is found through @notifier.ops (which points into the
 * ctx), so it is not stored. All fields but @notifier are protected by
 * regwatch_ctx.lock, with one exception: the watch ioctl that claimed a
 * slot (INSERTING, which nothing else changes) moves @state to LIVE
 * without the lock, by a release store that readers pair with an acquire
 * where they need the notifier inserted.
 */
struct regwatch_slot {
	struct mmu_interval_notifier notifier;
	u64 cookie;
	u32 next;
	u32 prev;
	u32 index;
	u8 state;
	u8 dirty;
	u8 reason;
};

/**
 * struct regwatch_ctx - state of one open /dev/regwatch file
 * @notifier_ops: this fd's notifier ops; every slot's notifier points here,
 *	which lets the callback recover the ctx with container_of().
 * @mm: address space the fd is bound to (mmgrab'ed: the struct stays, the
 *	address space may exit before the fd is closed).
 * @user: the opener's per-user watch count.
 * @mapping: the file's address space, in which the status area is mapped.
 * @strict: protection-only events dirty watches too.
 * @setup_lock: serialises fixing the capacity, growing @chunks and
 *	@status_pages (which allocates), and mapping status pages on a fault
 *	(so that a fault never maps a page that is about to be replaced).
 * @lock: protects the slot states, both lists, @parked, @next_seq,
 *	@high_water, @backed and every write to the status area; with
 *	@setup_lock, the tables of @chunks and @status_pages. Taken in the
 *	invalidate callback, so nothing that sleeps, allocates or faults
 *	may happen under it.
 * @chunks: chunk number -> array of REGWATCH_CHUNK_SLOTS slots (vmalloc,
 *	charged to the memcg).
 * @status_pages: page number -> page of the status area (vmalloc, charged).
 *	Page 0 (the header) exists once the capacity is fixed.
 * @status: page 0 of the status area.
 * @status_size: bytes of the status area, the exact mmap() length.
 * @nslots: capacity; 0 until fixed, then published with release ordering
 *	after @status exists, never changed again.
 * @backed: slots below this index have storage and a status word.
 * @high_water: slots at and above this index were never used (<= @backed).
 * @free_head: first slot of the free list (slots freed by unwatch).
 * @dirty_head: oldest PENDING slot.
 * @dirty_tail: newest PENDING slot.
 * @parked: the PARKED slot, or REGWATCH_NO_SLOT; at most one per fd.
 * @next_seq: sequence number for the next watch (even, starts at 2).
 * @read_wait: readers and pollers waiting for a PENDING slot.
 */
struct regwatch_ctx {
	struct mmu_interval_notifier_ops notifier_ops;
	struct mm_struct *mm;
	struct regwatch_user *user;
	struct address_space *mapping;
	bool strict;
	struct mutex setup_lock;
	spinlock_t lock;
	struct regwatch_table chunks;
	struct regwatch_table status_pages;
	struct regwatch_status *status;
	size_t status_size;
	u32 nslots;
	u32 backed;
	u32 high_water;
	u32 free_head;
	u32 dirty_head;
	u32 dirty_tail;
	u32 parked;
	u64 next_seq;
	wait_queue_head_t read_wait;
};

/**
 * struct regwatch_status_run - the slot words of one status page
 * @word: word of slot @first.
 * @first: first slot whose word lies on the page.
 * @count: slot words on the page.
 */
struct regwatch_status_run {
	const u64 *word;
	u32 first;
	u32 count;
};

/*
 * Slot @idx, below ctx->backed; ctx->lock or ctx->setup_lock held (or the
 * fd being released). The slot stays where it is until the fd is released.
 */
static inline struct regwatch_slot *regwatch_slot(struct regwatch_ctx *ctx,
						  u32 idx)
{
	struct regwatch_slot *chunk =
		ctx->chunks.blocks[idx / REGWATCH_CHUNK_SLOTS];

	return &chunk[idx % REGWATCH_CHUNK_SLOTS];
}

/* main.c */
u32 regwatch_max_slots(void);
u32 regwatch_default_slots(void);
u32 regwatch_max_user_watches(void);
bool regwatch_strict_default(void);
void regwatch_fd_opened(void);
void regwatch_fd_closed(void);
struct regwatch_user *regwatch_user_get(void);
void regwatch_user_put(struct regwatch_user *user);
bool regwatch_user_charge(struct regwatch_user *user);
void regwatch_user_uncharge(struct regwatch_user *user, long watches);

/* fops.c */
extern const struct file_operations regwatch_fops;

/* notifier.c */
void regwatch_notifier_init_ops(struct mmu_interval_notifier_ops *ops);

/* capacity.c */
int regwatch_fix_capacity_locked(struct regwatch_ctx *ctx, u32 nslots);
int regwatch_fix_capacity(struct regwatch_ctx *ctx, u32 nslots);
int regwatch_grow(struct regwatch_ctx *ctx, u32 idx);
int regwatch_table_append(struct regwatch_ctx *ctx,
			  struct regwatch_table *table, void *block);
void regwatch_table_free(struct regwatch_table *table);

/* watch.c */
int regwatch_watch(struct regwatch_ctx *ctx, u64 start, u64 length,
		   u64 cookie, u32 *slot_out, u64 *seq_out);
int regwatch_watch_instead(struct regwatch_ctx *ctx, u64 victim_nr,
			   u64 victim_cookie, u64 start, u64 length,
			   u64 cookie, u32 *slot_out, u64 *seq_out);
int regwatch_unwatch(struct regwatch_ctx *ctx, u64 slot_nr, u64 cookie);
void regwatch_watch_cancel(struct regwatch_ctx *ctx, u32 slot, u64 cookie,
			   u64 seq);
bool regwatch_mark_dirty(struct regwatch_ctx *ctx, struct regwatch_slot *slot,
			 u8 reason);
void regwatch_teardown(struct regwatch_ctx *ctx);

/* records.c */
bool regwatch_has_pending(struct regwatch_ctx *ctx);
unsigned int regwatch_take_records(struct regwatch_ctx *ctx,
				   struct iov_iter *to, unsigned int max);

/* status.c */
int regwatch_status_init(void);
void regwatch_status_exit(void);
int regwatch_status_alloc(struct regwatch_ctx *ctx, u32 nslots);
int regwatch_status_grow(struct regwatch_ctx *ctx);
u32 regwatch_status_slots(struct regwatch_ctx *ctx);
void regwatch_status_free(struct regwatch_ctx *ctx);
int regwatch_status_mmap(struct regwatch_ctx *ctx, struct vm_area_struct *vma,
			 u32 nslots);
u64 regwatch_status_seq(struct regwatch_ctx *ctx, u32 slot);
void regwatch_status_words(struct regwatch_ctx *ctx, u32 slot,
			   struct regwatch_status_run *run);
void regwatch_status_set_seq(struct regwatch_ctx *ctx, u32 slot, u64 seq);
void regwatch_status_dirtied(struct regwatch_ctx *ctx, u32 slot);
void regwatch_status_count(struct regwatch_ctx *ctx, u64 *counter, s64 delta);

/* Bookworm's 6.1 predates the vm_flags_*() accessors (6.3). */
static inline void regwatch_vm_flags_mod(struct vm_area_struct *vma,
					 vm_flags_t set, vm_flags_t clear)
{
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 3, 0)
	vma->vm_flags = (vma->vm_flags | set) & ~clear;
#else
	vm_flags_mod(vma, set, clear);
#endif
}

#endif /* _REGWATCH_INTERNAL_H */
