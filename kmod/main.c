// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: module parameters, global counters and the misc device.
 */
#include <linux/cred.h>
#include <linux/gfp.h>
#include <linux/hashtable.h>
#include <linux/kernel.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/sysfs.h>

#include "regwatch_internal.h"

static unsigned int default_slots = 65536;
module_param(default_slots, uint, 0644);
MODULE_PARM_DESC(default_slots,
		 "Slots of an fd whose capacity was not set (default 65536)");

static unsigned int max_slots = 1U << 21;
module_param(max_slots, uint, 0644);
MODULE_PARM_DESC(max_slots,
		 "Largest capacity one fd may set (default 2097152, at most 16777216)");

/* 0 at load time: 1% of RAM at REGWATCH_WATCH_COST bytes per watch */
static unsigned int max_user_watches;
module_param(max_user_watches, uint, 0644);
MODULE_PARM_DESC(max_user_watches,
		 "Watches one user may have alive over all its fds (default: 1% of RAM at 128 bytes per watch, at least 65536)");

static bool strict;
module_param(strict, bool, 0644);
MODULE_PARM_DESC(strict,
		 "Protection-only changes (mprotect, fork write-protect, soft-dirty) dirty watches too, for fds opened afterwards");

static atomic_long_t regwatch_live_fds = ATOMIC_LONG_INIT(0);

static int regwatch_counter_get(char *buffer, const struct kernel_param *kp)
{
	return sysfs_emit(buffer, "%ld\n", atomic_long_read(kp->arg));
}

static const struct kernel_param_ops regwatch_counter_ops = {
	.get = regwatch_counter_get,
};

static long regwatch_users_watches(void);

/*
 * The sum of the per-user counts, taken when read: a module-wide counter
 * would cost every watch and unwatch one more atomic.
 */
static int regwatch_live_watches_get(char *buffer,
				     const struct kernel_param *kp)
{
	return sysfs_emit(buffer, "%ld\n", regwatch_users_watches());
}

static const struct kernel_param_ops regwatch_live_watches_ops = {
	.get = regwatch_live_watches_get,
};

/* Read-only totals over all fds, so that tests can prove nothing leaked. */
module_param_cb(live_fds, &regwatch_counter_ops, &regwatch_live_fds, 0444);
MODULE_PARM_DESC(live_fds, "Open /dev/regwatch files (read-only)");
module_param_cb(live_watches, &regwatch_live_watches_ops, NULL, 0444);
MODULE_PARM_DESC(live_watches, "Watches alive over all fds (read-only)");

/**
 * regwatch_max_slots() - largest capacity an fd may set now
 *
 * Return: the max_slots parameter, limited to 1 .. REGWATCH_SLOTS_LIMIT.
 */
u32 regwatch_max_slots(void)
{
	return clamp_t(u32, READ_ONCE(max_slots), 1, REGWATCH_SLOTS_LIMIT);
}

/**
 * regwatch_default_slots() - capacity of an fd that did not set one
 *
 * Return: the default_slots parameter, limited to 1 .. regwatch_max_slots().
 */
u32 regwatch_default_slots(void)
{
	return clamp_t(u32, READ_ONCE(default_slots), 1, regwatch_max_slots());
}

/**
 * regwatch_max_user_watches() - watches one user may have alive
 *
 * Return: the max_user_watches parameter.
 */
u32 regwatch_max_user_watches(void)
{
	return READ_ONCE(max_user_watches);
}

/**
 * regwatch_strict_default() - whether new fds start in strict mode
 *
 * Return: the strict parameter.
 */
bool regwatch_strict_default(void)
{
	return READ_ONCE(strict);
}

/**
 * regwatch_fd_opened() - count an fd in live_fds
 */
void regwatch_fd_opened(void)
{
	atomic_long_inc(&regwatch_live_fds);
}

/**
 * regwatch_fd_closed() - uncount an fd from live_fds
 */
void regwatch_fd_closed(void)
{
	atomic_long_dec(&regwatch_live_fds);
}

/*
 * Per-user watch counts, in the spirit of inotify's max_user_watches: one
 * struct regwatch_user per uid with an open fd. regwatch_users_lock
 * protects the table and every regwatch_user.fds; the watch counts are
 * atomic and change without it.
 */
static DEFINE_HASHTABLE(regwatch_users, 6);
static DEFINE_MUTEX(regwatch_users_lock);

/**
 * regwatch_user_get() - the caller's per-user count, for a new fd
 *
 * The count belongs to the effective uid of the opener, like inotify's.
 *
 * Return: the count, with a reference for the fd; NULL on ENOMEM.
 */
struct regwatch_user *regwatch_user_get(void)
{
	kuid_t uid = current_euid();
	struct regwatch_user *user;

	mutex_lock(&regwatch_users_lock);
	hash_for_each_possible(regwatch_users, user, node, __kuid_val(uid)) {
		if (uid_eq(user->uid, uid)) {
			user->fds++;
			goto out_unlock;
		}
	}
	user = kzalloc(sizeof(*user), REGWATCH_GFP);
	if (user) {
		user->uid = uid;
		user->fds = 1;
		atomic_long_set(&user->watches, 0);
		hash_add(regwatch_users, &user->node, __kuid_val(uid));
	}
out_unlock:
	mutex_unlock(&regwatch_users_lock);
	return user;
}

/**
 * regwatch_user_put() - drop an fd's reference to its per-user count
 * @user: from regwatch_user_get(); its fd has no watch left
 */
void regwatch_user_put(struct regwatch_user *user)
{
	mutex_lock(&regwatch_users_lock);
	if (!--user->fds) {
		hash_del(&user->node);
		kfree(user);
	}
	mutex_unlock(&regwatch_users_lock);
}

/* Watches alive over all users: a user stays in the table while it has an fd. */
static long regwatch_users_watches(void)
{
	struct regwatch_user *user;
	long watches = 0;
	int bucket;

	mutex_lock(&regwatch_users_lock);
	hash_for_each(regwatch_users, bucket, user, node)
		watches += atomic_long_read(&user->watches);
	mutex_unlock(&regwatch_users_lock);
	return watches;
}

/**
 * regwatch_user_charge() - count one more watch for a user
 * @user: the fd's per-user count
 *
 * Return: true, or false (nothing counted) when the user already has
 * max_user_watches watches.
 */
bool regwatch_user_charge(struct regwatch_user *user)
{
	long limit = regwatch_max_user_watches();
	long alive = atomic_long_read(&user->watches);

	do {
		if (alive >= limit)
			return false;
	} while (!atomic_long_try_cmpxchg(&user->watches, &alive, alive + 1));
	return true;
}

/**
 * regwatch_user_uncharge() - count watches of a user as gone
 * @user: the fd's per-user count
 * @watches: how many
 */
void regwatch_user_uncharge(struct regwatch_user *user, long watches)
{
	atomic_long_sub(watches, &user->watches);
}

static struct miscdevice regwatch_miscdev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "regwatch",
	.fops = &regwatch_fops,
	/* each fd only ever watches its opener's own address space */
	.mode = 0666,
};

static int __init regwatch_init(void)
{
	int ret;

	BUILD_BUG_ON(sizeof(struct regwatch_slot) > 112);
	BUILD_BUG_ON(sizeof(struct regwatch_status) != 128);
	BUILD_BUG_ON(sizeof(struct regwatch_record) != 48);
	if (!max_user_watches)
		max_user_watches = clamp_t(u64, (u64)totalram_pages() *
					   PAGE_SIZE / 100 / REGWATCH_WATCH_COST,
					   65536, INT_MAX);
	ret = regwatch_status_init();
	if (ret)
		return ret;
	ret = misc_register(&regwatch_miscdev);
	if (ret)
		regwatch_status_exit();
	return ret;
}

static void __exit regwatch_exit(void)
{
	misc_deregister(&regwatch_miscdev);
	regwatch_status_exit();
}

module_init(regwatch_init);
module_exit(regwatch_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Tell a process when the pages behind watched ranges change");
MODULE_AUTHOR("regcache project");
