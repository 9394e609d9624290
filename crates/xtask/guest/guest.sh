#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
# Runs inside the virtme-ng guest: brings up Soft-RoCE, loads regwatch when it
# was built for this kernel (in test mode: the module DKMS installed, so the
# suite proves the DKMS package too), then runs one mode:
#   test          every test executable staged under /opt/regcache
#   run CMD...    one command
#   bench         every benchmark staged under /opt/regcache/cbench
#   p2p-bench ARGS  the latency and bandwidth benchmark (benches/vm)
#   demo          the devices, their ODP caps, the tests with output shown,
#                 and the benchmark's short plan; with REGCACHE_RXE_SWAP, the
#                 cache's ODP choice on the stock rdma_rxe first, then the
#                 swap and the whole demo on the fixed one
#   shell         an interactive shell
# It always ends by printing the kernel log between markers, which the host
# scans for warnings. Environment from the host: REGCACHE_EXPECT_RXE1=1 to
# add rxe1 in network namespace ns1, REGCACHE_EXPECT_ODP,
# REGCACHE_EXPECT_ODP_CORRECT, and REGCACHE_RXE_SWAP: a command that replaces
# rdma_rxe by the build with the ODP copy fix (kernel-patches/rxe), run right
# after the Soft-RoCE set-up (in demo mode: halfway).
set -u
# This run's stage: the directory this script was staged in. /opt/regcache
# points at it (the guest's root is a throw-away overlay).
STAGE=$(dirname "$(readlink -f "$0")")
rm -rf /opt/regcache && ln -s "$STAGE" /opt/regcache
mode=${1:?mode}
shift

say() { echo "regcache-guest: $*"; }

# The first line of ours on the console: a kernel fault before it happened
# while the kernel booted, before anything of this project ran.
say "started in $mode mode on $(uname -r)"

dump_kernel_log() {
	echo "===REGCACHE-DMESG-BEGIN==="
	dmesg
	echo "===REGCACHE-DMESG-END==="
}

setup_rxe() {
	ulimit -l unlimited || return 1
	modprobe rdma_rxe || return 1
	ip link add veth0 type veth peer name veth1 || return 1
	ip link set veth0 mtu 9000 up
	ip addr add 10.77.0.1/24 dev veth0
	rdma link add rxe0 type rxe netdev veth0 || return 1
	if [ "${REGCACHE_EXPECT_RXE1:-0}" = 1 ]; then
		ip netns add ns1 || return 1
		ip link set veth1 netns ns1
		ip netns exec ns1 ip link set lo up
		ip netns exec ns1 ip link set veth1 mtu 9000 up
		ip netns exec ns1 ip addr add 10.77.0.2/24 dev veth1
		ip netns exec ns1 rdma link add rxe1 type rxe netdev veth1 || return 1
	else
		ip link set veth1 mtu 9000 up
	fi
	rdma link show
}

# Loads the module built on the host for this kernel; with "dkms", the one
# DKMS installed into the root filesystem for it (the host ran dkms add,
# build and install in the rootfs: under an emulated CPU DKMS's build and
# depmod take a quarter of an hour in the guest).
load_regwatch() {
	if [ "${1:-}" = dkms ] && [ -e "$STAGE/dkms/dkms.conf" ]; then
		modprobe regwatch || return 1
		path=$(modinfo -n regwatch)
		case $path in
		*/updates/dkms/*) say "regwatch loaded from its DKMS install: $path" ;;
		*) say "regwatch was not installed by DKMS: $path"; return 1 ;;
		esac
		return 0
	fi
	ko=$STAGE/kmod/$(uname -r)/regwatch.ko
	[ -e "$ko" ] || { say "no regwatch.ko for $(uname -r): not loading"; return 0; }
	insmod "$ko" || return 1
	say "regwatch loaded: $(ls -l /dev/regwatch)"
}

# Every C test, every Rust test executable, and the benchmark's short plan,
# which checks every byte it moves (the demo's table, kept working); with the
# fixed rdma_rxe, only those that use rxe.
run_tests() {
	failed=0
	for exe in "$STAGE"/ctests/* "$STAGE"/bin/* "$STAGE"/vmbench/p2p-bench; do
		[ -x "$exe" ] || continue
		name=$(basename "$exe")
		# With the fixed rdma_rxe only what rxe carries is run: the module's
		# own C tests and the benchmark's plan do not touch rxe's ODP, and
		# the stock configuration of the same kernel runs them.
		if [ -n "${REGCACHE_RXE_SWAP:-}" ]; then
			case $exe in
			*/ctests/regwatch_* | */vmbench/*)
				say "skipping $name: run by the stock configuration of this kernel"
				continue
				;;
			esac
		fi
		say "running $name"
		case $exe in
		# Its verdicts, the cache's ODP choice and the prefetch outcome go into the log.
		*/bin/odp_self_test-*) "$exe" --test-threads=1 --nocapture ;;
		*/bin/*) "$exe" --test-threads=1 ;;
		*/vmbench/*) "$exe" --quick ;;
		*) "$exe" ;;
		esac
		rc=$?
		if [ $rc -eq 0 ]; then
			echo "REGCACHE-RESULT pass $name"
		else
			echo "REGCACHE-RESULT fail $name (exit $rc)"
			failed=1
		fi
	done
	return $failed
}

show_devices() {
	say "RDMA devices:"
	rdma link show
	for dev in $(ibv_devices | awk 'NR > 2 { print $1 }'); do
		say "$dev on-demand paging capabilities:"
		ibv_devinfo -v -d "$dev" | sed -n '/general_odp_caps/,/ud_odp_caps/p'
	done
}

# Runs REGCACHE_RXE_SWAP, which keeps rxe0 and rxe1.
swap_rxe() {
	say "swapping in the fixed rdma_rxe: $REGCACHE_RXE_SWAP"
	sh -c "$REGCACHE_RXE_SWAP" || return 1
	rdma link show
}

# The cache's ODP choice in mode auto, with the reason, on the stock rdma_rxe
# (before REGCACHE_RXE_SWAP ran).
show_stock_odp_choice() {
	for exe in "$STAGE"/bin/odp_self_test-*; do
		[ -x "$exe" ] || continue
		env REGCACHE_EXPECT_ODP_CORRECT=0 "$exe" --test-threads=1 --nocapture auto_mode ||
			return 1
	done
}

# The transfers verified byte by byte, the ODP self-test, then the seed
# scenario in every mode: stale bytes with the trust cache, the new bytes
# with pinned + regwatch, ODP and off, with each mode's cache figures.
run_demo() {
	for name in smoke odp_self_test seed; do
		for exe in "$STAGE"/bin/"$name"-*; do
			[ -x "$exe" ] || continue
			say "demo: $name"
			"$exe" --test-threads=1 --nocapture || return 1
		done
	done
	if [ -x "$STAGE/vmbench/p2p-bench" ]; then
		say "demo: latency and bandwidth, short plan"
		"$STAGE/vmbench/p2p-bench" --quick || return 1
	fi
}

export REGCACHE_VM=1
cd /tmp || exit 1
if ! setup_rxe; then
	say "Soft-RoCE set-up failed"
	dump_kernel_log
	exit 2
fi
if [ -n "${REGCACHE_RXE_SWAP:-}" ] && [ "$mode" != demo ] && ! swap_rxe; then
	say "swapping in the fixed rdma_rxe failed"
	dump_kernel_log
	exit 2
fi
loader=insmod
[ "$mode" = test ] && loader=dkms
if ! load_regwatch $loader; then
	say "loading regwatch failed"
	dump_kernel_log
	exit 2
fi

case $mode in
test)
	run_tests
	rc=$?
	;;
run)
	"$@"
	rc=$?
	;;
bench)
	rc=0
	for exe in "$STAGE"/cbench/*; do
		[ -x "$exe" ] && { "$exe" || rc=1; }
	done
	;;
p2p-bench)
	"$STAGE/vmbench/p2p-bench" "$@"
	rc=$?
	;;
demo)
	show_devices
	rc=0
	if [ -n "${REGCACHE_RXE_SWAP:-}" ]; then
		say "demo: ODP on the stock rdma_rxe"
		show_stock_odp_choice || rc=1
		swap_rxe || rc=2
		say "demo: ODP on the fixed rdma_rxe"
	fi
	[ $rc -eq 0 ] && { run_demo || rc=1; }
	;;
shell)
	bash -il
	rc=$?
	;;
*)
	say "unknown mode $mode"
	rc=2
	;;
esac
dump_kernel_log
exit $rc
