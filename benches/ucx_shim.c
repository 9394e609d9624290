// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * A thin C layer over UCX's registration cache (libucs, ucs/memory/rcache.h), so that the
 * Rust benchmarks call four plain functions instead of binding UCX's headers.
 *
 * The registration callbacks do nothing: the benchmarks measure the cache's own bookkeeping,
 * not a device's registration cost. ucm_events is 0, so the cache installs no memory hooks
 * (UCM's mmap/munmap interception) and never hears of unmapped memory: what is measured is the
 * lookup and reference counting, the same work regcache's hit path does.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <ucs/memory/rcache.h>
#include <ucs/type/status.h>

/* Registration granularity, the same page size regcache aligns its registrations to. */
#define SHIM_ALIGNMENT 4096

/**
 * struct shim_cache - a UCX registration cache and what its callbacks count.
 * @rcache: the cache.
 * @registrations: calls of the registration callback, so a benchmark can prove that what it
 *                 calls the miss path really registers. Only the cache's callbacks write it,
 *                 under the cache's own lock.
 */
struct shim_cache {
	ucs_rcache_t *rcache;
	unsigned long registrations;
};

static ucs_status_t shim_mem_reg(void *context, ucs_rcache_t *rcache, void *arg,
				 ucs_rcache_region_t *region, uint16_t flags)
{
	struct shim_cache *cache = context;

	(void)rcache;
	(void)arg;
	(void)region;
	(void)flags;
	cache->registrations++;
	return UCS_OK;
}

static void shim_mem_dereg(void *context, ucs_rcache_t *rcache, ucs_rcache_region_t *region)
{
	(void)context;
	(void)rcache;
	(void)region;
}

static void shim_dump_region(void *context, ucs_rcache_t *rcache, ucs_rcache_region_t *region,
			     char *buf, size_t max)
{
	(void)context;
	(void)rcache;
	(void)region;
	if (max > 0)
		buf[0] = '\0';
}

static const ucs_rcache_ops_t shim_ops = {
	.mem_reg = shim_mem_reg,
	.mem_dereg = shim_mem_dereg,
	.dump_region = shim_dump_region,
};

/**
 * shim_create() - create a registration cache with no-op registration callbacks.
 * @max_regions: regions above which UCX evicts unused ones (least recently used first).
 *
 * Return: the cache, or NULL when allocation or ucs_rcache_create() fails.
 */
struct shim_cache *shim_create(unsigned long max_regions)
{
	struct shim_cache *cache = calloc(1, sizeof(*cache));
	ucs_rcache_params_t params = {
		.region_struct_size = sizeof(ucs_rcache_region_t),
		.alignment = SHIM_ALIGNMENT,
		.max_alignment = SHIM_ALIGNMENT,
		.ucm_events = 0,
		.ucm_event_priority = 0,
		.ops = &shim_ops,
		.context = cache,
		/* No page-frame check: registration never reads the memory. */
		.flags = UCS_RCACHE_FLAG_NO_PFN_CHECK,
		.max_regions = max_regions,
		.max_size = SIZE_MAX,
		.max_unreleased = SIZE_MAX,
	};

	if (!cache)
		return NULL;
	if (ucs_rcache_create(&params, "regcache-bench", NULL, &cache->rcache) != UCS_OK)
		goto err_free;
	return cache;

err_free:
	free(cache);
	return NULL;
}

/**
 * shim_get() - a registration covering [@address, @address + @length), read-write.
 * @cache: from shim_create().
 * @address: start of the range.
 * @length: bytes in the range.
 *
 * Return: the region, holding one reference for the caller, or NULL on failure.
 */
ucs_rcache_region_t *shim_get(struct shim_cache *cache, void *address, size_t length)
{
	ucs_rcache_region_t *region;

	if (ucs_rcache_get(cache->rcache, address, length, PROT_READ | PROT_WRITE, NULL,
			   &region) != UCS_OK)
		return NULL;
	return region;
}

/**
 * shim_put() - release the reference shim_get() returned.
 * @cache: the cache @region came from.
 * @region: from shim_get().
 */
void shim_put(struct shim_cache *cache, ucs_rcache_region_t *region)
{
	ucs_rcache_region_put(cache->rcache, region);
}

/**
 * shim_registrations() - calls of the registration callback so far.
 * @cache: from shim_create().
 *
 * Return: the count.
 */
unsigned long shim_registrations(const struct shim_cache *cache)
{
	return cache->registrations;
}

/**
 * shim_destroy() - destroy a cache whose regions were all released, and free it.
 * @cache: from shim_create().
 */
void shim_destroy(struct shim_cache *cache)
{
	ucs_rcache_destroy(cache->rcache);
	free(cache);
}
