#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
# The C API's test program once under memcheck: any memory error, or any definite leak, in
# the program or in one of its (forked) tests fails it. Fewer rounds: memcheck is slow.
export REGCACHE_TEST_UNDER_VALGRIND=1
exec valgrind --quiet --error-exitcode=99 --leak-check=full --show-leak-kinds=definite \
	--errors-for-leak-kinds=definite --child-silent-after-fork=no \
	"$(dirname "$0")/regcache_capi_test" "$@"
