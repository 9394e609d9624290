/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * regwatch: tell a process when the pages behind a watched range of its own
 * address space change (munmap, mremap, MAP_FIXED, madvise, migration, exit).
 *
 * This header is the one source of truth for the ABI of /dev/regwatch.
 *
 * Usage:
 *   fd = open("/dev/regwatch", O_RDWR | O_CLOEXEC);
 *   ioctl(fd, REGWATCH_IOC_API, &api);          // optional, recommended
 *   ioctl(fd, REGWATCH_IOC_SET_CAPACITY, &cap); // optional, before any watch
 *   status = mmap(NULL, REGWATCH_STATUS_SIZE(nslots, page_size), PROT_READ,
 *                 MAP_SHARED, fd, 0);
 *   ioctl(fd, REGWATCH_IOC_WATCH, &w);          // -> w.slot, w.seq
 *   valid = __atomic_load_n(&REGWATCH_STATUS_SEQ(status)[w.slot],
 *                           __ATOMIC_ACQUIRE) == w.seq;
 *   read(fd, records, n * sizeof(struct regwatch_record));
 *   ioctl(fd, REGWATCH_IOC_UNWATCH, &u);
 *   // or, instead of the unwatch, evict: unwatch w and watch a new range
 *   w2 = (struct regwatch_watch){ .start = ..., .length = ..., .cookie = ...,
 *       .flags = REGWATCH_WATCH_UNWATCH, .slot = w.slot,
 *       .unwatch_cookie = w.cookie };
 *   ioctl(fd, REGWATCH_IOC_WATCH, &w2);         // -> w2.slot == w.slot
 *
 * The fd is bound to the address space (mm) of the process that opened it.
 * Every ioctl, read, poll and mmap from another address space (a fork child
 * that inherited the fd, a process that received it over a unix socket)
 * fails with EIO (poll: EPOLLERR) and changes nothing. close() from anywhere
 * is fine and removes every watch.
 *
 * Errors common to all ioctls: EFAULT (bad argument pointer, also one whose
 * fields the ioctl writes back are readable but not writable), EIO (other
 * mm), ENOTTY (unknown ioctl), EINVAL (a reserved field is not zero).
 *
 * Every call that fails leaves the fd exactly as it was: capacity, features,
 * slots, seq numbers and the status area's counters. (Only events that
 * really happened meanwhile change the status area.)
 *
 * Memory: every allocation is charged to the caller's memory cgroup and
 * fails with ENOMEM, never by invoking the OOM killer. An fd costs a small
 * constant (about 5 KiB: the header page of the status area) once its
 * capacity is fixed, plus about 122 bytes per slot up to the most slots it
 * had in use at once: slot storage and status pages are allocated as slots
 * are first used (in chunks of 512 slots and one page), not for the
 * capacity.
 *
 * Per-user limit: the watches alive over all fds opened by one user
 * (effective uid at open) are limited by the module parameter
 * max_user_watches (default: 1% of RAM at 128 bytes per watch, at least
 * 65536), like inotify's max_user_watches; REGWATCH_IOC_WATCH beyond it
 * fails with ENOSPC. REGWATCH_IOC_API reports the limit and the user's
 * count.
 */
#ifndef _UAPI_LINUX_REGWATCH_H
#define _UAPI_LINUX_REGWATCH_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* ABI version; zero is never valid. */
#define REGWATCH_API			1ULL

/*
 * Feature bits for struct regwatch_api.
 *
 * REGWATCH_FEATURE_STRICT: protection-only changes (mprotect, the
 * write-protect pass of fork over the parent's copy-on-write areas,
 * soft-dirty clearing) dirty a watch too. Off by default: those events keep
 * every page where it is. Always on when the module parameter strict=1.
 * Once enabled on an fd it stays enabled.
 */
#define REGWATCH_FEATURE_STRICT		(1ULL << 0)
#define REGWATCH_FEATURES		(REGWATCH_FEATURE_STRICT)

/*
 * Watch flags; any other bit set is EINVAL.
 *
 * REGWATCH_WATCH_UNWATCH: the same call also unwatches the live watch
 * {@slot, @unwatch_cookie} of struct regwatch_watch: a cache's eviction (the
 * victim goes, the new buffer comes) in one system call. See the struct.
 */
#define REGWATCH_WATCH_UNWATCH		(1ULL << 0)
#define REGWATCH_WATCH_FLAGS		(REGWATCH_WATCH_UNWATCH)

/**
 * struct regwatch_api - handshake (modelled on UFFDIO_API)
 * @api: (in) must be REGWATCH_API, else EINVAL; (out) REGWATCH_API.
 * @features: (in) features to enable on this fd; an unknown bit is EINVAL
 *	and enables nothing. (out) features enabled on this fd.
 * @supported_features: (out) every feature this module knows.
 * @ioctls: (out) bit (1 << _IOC_NR(cmd)) set for every supported ioctl.
 * @max_slots: (out) largest capacity REGWATCH_IOC_SET_CAPACITY accepts.
 * @default_slots: (out) capacity used if none was set before the first
 *	watch or mmap.
 * @record_size: (out) sizeof(struct regwatch_record) of this module.
 * @max_user_watches: (in) ignored; (out) the module parameter
 *	max_user_watches: watches one user may have alive over all its fds.
 * @user_watches: (in) ignored; (out) watches alive now over all fds of the
 *	user this fd counts against (its opener's effective uid).
 * @reserved: (in) must be zero; (out) zero.
 *
 * May be called any number of times, also after watches exist. Features
 * are enabled only once the answer was written back (a read-only argument:
 * EFAULT, nothing enabled).
 */
struct regwatch_api {
	__u64 api;
	__u64 features;
	__u64 supported_features;
	__u64 ioctls;
	__u64 max_slots;
	__u64 default_slots;
	__u64 record_size;
	__u64 max_user_watches;
	__u64 user_watches;
	__u64 reserved[7];
};

/**
 * struct regwatch_capacity - fix the number of slots of this fd
 * @slots: (in) 1 .. max_slots, else EINVAL.
 * @status_size: (out) exact length mmap() of the status area needs.
 * @reserved: (in) must be zero.
 *
 * Allowed once, and only before the first watch and before the first
 * successful mmap (either of which fixes the capacity at default_slots):
 * EBUSY otherwise. ENOMEM if the header page cannot be charged to the
 * caller's memory cgroup. The capacity is a bound, not an allocation: slots
 * cost memory only once used (see the top of this header).
 */
struct regwatch_capacity {
	__u64 slots;
	__u64 status_size;
	__u64 reserved[2];
};

/**
 * struct regwatch_watch - start watching [start, start + length)
 * @start: (in) first byte; rounded down to a page boundary.
 * @length: (in) bytes; the end is rounded up to a page boundary.
 * @cookie: (in) opaque, returned in records and needed to unwatch.
 * @flags: (in) REGWATCH_WATCH_FLAGS bits.
 * @slot: (in) with REGWATCH_WATCH_UNWATCH, the slot of the watch to
 *	unwatch (the victim), else ignored; (out) index of this watch's word
 *	in the status area.
 * @seq: (in) ignored; (out) value of that word while the watch is valid:
 *	even, never 0, never reused on this fd.
 * @unwatch_cookie: (in) with REGWATCH_WATCH_UNWATCH, the victim's cookie,
 *	else must be zero.
 * @reserved: (in) must be zero.
 *
 * EINVAL: zero length, start + length overflows, range beyond the user
 * address space, unknown flags, a victim that is not a live watch with
 * that cookie (REGWATCH_WATCH_UNWATCH). ENOSPC: every slot is in use, or the
 * user has max_user_watches watches alive (compare user_watches of
 * REGWATCH_IOC_API). ENOMEM: storage for a new chunk of slots or status
 * page could not be charged. EFAULT also when @slot and @seq, the fields
 * written back, are not writable (checked before anything changes, by
 * writing them back as they came in). On any error nothing changed.
 *
 * REGWATCH_WATCH_UNWATCH: success is an unwatch of the victim (as
 * REGWATCH_IOC_UNWATCH: no record of it is ever read after the call, its
 * seq is never seen again) followed by a watch of the range, counted in
 * total_unwatched and total_watched. The new watch takes the victim's
 * slot and its place under max_user_watches, so it never fails with
 * ENOSPC or ENOMEM: a full table or a user at the limit can still evict.
 * The victim is checked first, so a victim another thread unwatched
 * meanwhile fails with EINVAL and leaves everything as it was; once
 * checked, nothing can fail (one exception: another thread making the
 * argument read-only during the call gives EFAULT with the victim
 * unwatched and no new watch, both counted as they happened). Why the
 * victim's slot: making the new watch first and unwatching after would
 * need a free slot and room under the limit, exactly what an evicting
 * cache lacks; unwatching first and watching in a fresh slot could fail
 * after the victim is gone, and a victim cannot be brought back without
 * losing the events it ignored meanwhile. A victim watching exactly the
 * new page-rounded range hands its notifier over with no insert or
 * removal: the cheapest way to re-register a buffer.
 */
struct regwatch_watch {
	__u64 start;
	__u64 length;
	__u64 cookie;
	__u64 flags;
	__u64 slot;
	__u64 seq;
	__u64 unwatch_cookie;
	__u64 reserved[1];
};

/**
 * struct regwatch_unwatch - stop watching
 * @slot: (in) slot returned by REGWATCH_IOC_WATCH.
 * @cookie: (in) cookie given to REGWATCH_IOC_WATCH.
 * @reserved: (in) must be zero.
 *
 * EINVAL: slot not in use or wrong cookie. After success no record of this
 * watch is ever read, its slot word is 0 and the slot may be reused with a
 * new seq.
 */
struct regwatch_unwatch {
	__u64 slot;
	__u64 cookie;
	__u64 reserved[2];
};

/*
 * Why a watch turned dirty (first event only). Zero is never used.
 *
 * A watch can turn dirty when none of its pages changed: the kernel may
 * invalidate more than it changes, and the module cannot tell. Example
 * (CLEAR): splitting a VMA that spans a whole 2 MiB-aligned range, by an
 * mprotect() or munmap() of any page in it, invalidates that whole range.
 * Re-registering is then merely wasted work, never wrong.
 */
enum regwatch_reason {
	REGWATCH_REASON_UNMAP = 1,	/* munmap, mremap, MAP_FIXED, brk, shmdt */
	REGWATCH_REASON_CLEAR = 2,	/* pages zapped/replaced: madvise, COW break, reclaim, migration */
	REGWATCH_REASON_PROTECTION = 3,	/* protection change, strict mode only */
	REGWATCH_REASON_RELEASE = 4,	/* the address space is exiting */
	REGWATCH_REASON_MIGRATE = 5,	/* device migration (migrate_vma) */
	REGWATCH_REASON_EXCLUSIVE = 6,	/* device-exclusive access */
	REGWATCH_REASON_OTHER = 7,	/* an event this module does not name */
};

/**
 * struct regwatch_record - one dirty watch, as returned by read()
 * @cookie: (out) the watch's cookie.
 * @seq: (out) the seq returned when the watch was created.
 * @start: (out) page-rounded start of the watched range.
 * @end: (out) page-rounded end of the watched range (exclusive).
 * @slot: (out) the watch's slot.
 * @reason: (out) enum regwatch_reason of the first event that dirtied it.
 * @reserved: (out) zero.
 *
 * read() returns whole records only, each dirty watch exactly once.
 * EINVAL if the buffer is smaller than one record; EAGAIN under O_NONBLOCK
 * (or RWF_NOWAIT) when nothing is pending, otherwise it blocks until one
 * is; EFAULT if nothing could be copied (records not copied stay pending:
 * a watch leaves the pending list only once its record is in the buffer).
 * Records are written straight into the buffer, without kernel memory of
 * their own: read() never fails with ENOMEM.
 * readv()/preadv2() work the same way on the iovecs taken as one buffer:
 * records are written back to back and may straddle two iovecs, the total
 * length is what counts (at least one record), and the call blocks only
 * while nothing was copied (it returns what is pending, never waits to
 * fill the remaining iovecs). poll()/epoll: EPOLLIN when a
 * record is pending. A read() in one thread that overlaps an UNWATCH of the
 * same watch in another may still return that watch's record: drop records
 * of watches already gone, matching on {slot, seq} or on a cookie never
 * reused.
 */
struct regwatch_record {
	__u64 cookie;
	__u64 seq;
	__u64 start;
	__u64 end;
	__u32 slot;
	__u32 reason;
	__u64 reserved;
};

/**
 * struct regwatch_status - header of the read-only status area
 * @abi_version: REGWATCH_API.
 * @header_size: byte offset of the first slot word (sizeof this struct).
 * @nslots: number of slot words that follow the header.
 * @generation: incremented, with release ordering, after any watch's slot
 *	word turned dirty. Equal values mean no watch turned dirty in between;
 *	compare for equality only (a 32-bit reader may see torn values, which
 *	only ever causes an extra read()).
 * @dirty_unread: dirty watches not yet returned by read().
 * @total_watched: successful REGWATCH_IOC_WATCH calls.
 * @total_unwatched: successful REGWATCH_IOC_UNWATCH calls.
 * @total_dirtied: watches that turned dirty.
 * @total_reported: records returned by read().
 * @reserved: zero.
 *
 * mmap() rules: offset 0, length exactly REGWATCH_STATUS_SIZE(nslots, page),
 * PROT_READ and MAP_SHARED: EINVAL for another offset, length or MAP_PRIVATE,
 * EPERM for PROT_WRITE/PROT_EXEC (a refused mmap fixes no capacity; without
 * a capacity, nslots is default_slots); a later mprotect() to them fails
 * with the kernel's own EACCES (the mapping lacks VM_MAYWRITE and
 * VM_MAYEXEC). The mapping is not inherited across fork (a child gets no
 * mapping there) and cannot be made so: madvise(MADV_DOFORK) fails with
 * EINVAL (it is a VM_IO mapping). It cannot be emptied either:
 * madvise(MADV_DONTNEED, MADV_FREE, MADV_COLD, MADV_PAGEOUT) fails with
 * EINVAL (VM_PFNMAP), so every read of it works for as long as it is
 * mapped. Pages of slots never used read as zeros; /proc/pid/mem and
 * process_vm_readv() cannot read it.
 *
 * Slot word values (64-bit, read with an acquire load):
 *   seq (even)          the watch created with seq is valid;
 *   seq | REGWATCH_SEQ_DIRTY  it is dirty (reported by read() or about to be);
 *   0                   slot not in use.
 * A word changes when its watch turns dirty or is unwatched.
 */
struct regwatch_status {
	__u64 abi_version;
	__u64 header_size;
	__u64 nslots;
	__u64 generation;
	__u64 dirty_unread;
	__u64 total_watched;
	__u64 total_unwatched;
	__u64 total_dirtied;
	__u64 total_reported;
	__u64 reserved[7];
};

#define REGWATCH_SEQ_DIRTY		1ULL

/* Pointer to slot word 0 of a mapped status area. */
#define REGWATCH_STATUS_SEQ(status) \
	((__u64 *)((char *)(status) + sizeof(struct regwatch_status)))

/* Exact mmap() length of the status area for nslots slots. */
#define REGWATCH_STATUS_SIZE(nslots, page_size) \
	(((sizeof(struct regwatch_status) + 8ULL * (nslots)) + \
	  (page_size) - 1) & ~((__u64)(page_size) - 1))

#define REGWATCH_IOC_MAGIC		0xB9

#define REGWATCH_IOC_API \
	_IOWR(REGWATCH_IOC_MAGIC, 0x00, struct regwatch_api)
#define REGWATCH_IOC_SET_CAPACITY \
	_IOWR(REGWATCH_IOC_MAGIC, 0x01, struct regwatch_capacity)
#define REGWATCH_IOC_WATCH \
	_IOWR(REGWATCH_IOC_MAGIC, 0x02, struct regwatch_watch)
#define REGWATCH_IOC_UNWATCH \
	_IOW(REGWATCH_IOC_MAGIC, 0x03, struct regwatch_unwatch)

#endif /* _UAPI_LINUX_REGWATCH_H */
