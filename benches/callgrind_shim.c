// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Callgrind's client requests for src/bin/hit_callgrind.rs, so that callgrind instruments only
 * the measured loops: building a fixture of 100,000 regions under full instrumentation takes
 * longer than the lookups by orders of magnitude. Without valgrind's headers the requests are
 * no-ops and the binary runs as before, instrumented from the start.
 */
#if defined(__has_include)
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define SHIM_HAVE_CALLGRIND 1
#endif
#endif

/**
 * shim_callgrind_instrument() - start or stop callgrind's instrumentation.
 * @on: non-zero to start, zero to stop.
 *
 * Outside valgrind (and without valgrind's headers) this does nothing.
 */
void shim_callgrind_instrument(int on)
{
#ifdef SHIM_HAVE_CALLGRIND
	if (on)
		CALLGRIND_START_INSTRUMENTATION;
	else
		CALLGRIND_STOP_INSTRUMENTATION;
#else
	(void)on;
#endif
}
