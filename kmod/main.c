// SPDX-License-Identifier: GPL-2.0
/*
 * regwatch: module parameters, global counters and the misc device.
 */
#include <linux/kernel.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
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

static bool strict;
module_param(strict, bool, 0644);
MODULE_PARM_DESC(strict,
		 "Protection-only changes (mprotect, fork write-protect, soft-dirty) dirty watches too, for fds opened afterwards");

static atomic_long_t regwatch_live_fds = ATOMIC_LONG_INIT(0);
atomic_long_t regwatch_live_watches = ATOMIC_LONG_INIT(0);

static int regwatch_counter_get(char *buffer, const struct kernel_param *kp)
{
	return sysfs_emit(buffer, "%ld\n", atomic_long_read(kp->arg));
}

static const struct kernel_param_ops regwatch_counter_ops = {
	.get = regwatch_counter_get,
};

/* Read-only totals over all fds, so that tests can prove nothing leaked. */
module_param_cb(live_fds, &regwatch_counter_ops, &regwatch_live_fds, 0444);
MODULE_PARM_DESC(live_fds, "Open /dev/regwatch files (read-only)");
module_param_cb(live_watches, &regwatch_counter_ops, &regwatch_live_watches,
		0444);
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

static struct miscdevice regwatch_miscdev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "regwatch",
	.fops = &regwatch_fops,
	/* each fd only ever watches its opener's own address space */
	.mode = 0666,
};

static int __init regwatch_init(void)
{
	BUILD_BUG_ON(sizeof(struct regwatch_slot) > 112);
	BUILD_BUG_ON(sizeof(struct regwatch_status) != 128);
	BUILD_BUG_ON(sizeof(struct regwatch_record) != 48);
	return misc_register(&regwatch_miscdev);
}

static void __exit regwatch_exit(void)
{
	misc_deregister(&regwatch_miscdev);
}

module_init(regwatch_init);
module_exit(regwatch_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Tell a process when the pages behind watched ranges change");
MODULE_AUTHOR("regcache project");
