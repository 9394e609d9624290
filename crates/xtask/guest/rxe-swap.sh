#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
# Runs inside the guest: rxe-swap.sh MODULE.ko replaces the running rdma_rxe
# with MODULE.ko (the build with the ODP copy fix, kernel-patches/rxe) and
# keeps the rxe devices: each link is deleted before the unload and added
# again afterwards on the same netdev, in the same network namespace.
# Without a loaded rdma_rxe it only loads MODULE.ko. It fails unless the
# module loaded at the end is MODULE.ko (same GNU build ID; Debian's modules
# have no srcversion). Assumes every RDMA link in the guest is an rxe one
# (the harness creates no other).
set -eu
ko=${1:?usage: rxe-swap.sh MODULE.ko}

say() { echo "rxe-swap: $*"; }

[ -r "$ko" ] || { say "no module at $ko"; exit 1; }
want=$(readelf -n "$ko" | awk '/Build ID:/ { print $3 }')
[ -n "$want" ] || { say "$ko has no GNU build ID"; exit 1; }

# Runs "$@" in network namespace $1 ("-": this one).
in_ns() {
	ns=$1
	shift
	if [ "$ns" = - ]; then "$@"; else ip netns exec "$ns" "$@"; fi
}

# "NETNS DEVICE NETDEV" per rxe link. In shared mode every namespace sees
# every RDMA device, but a link's netdev only shows in the namespace holding
# it, in lines like "link rxe0/1 state ACTIVE physical_state LINK_UP netdev veth0".
links=$(for ns in - $(ip netns list | awk '{ print $1 }'); do
	in_ns "$ns" rdma link show | awk -v ns="$ns" '$1 == "link" {
		for (i = 3; i < NF; i++)
			if ($i == "netdev") { sub("/.*", "", $2); print ns, $2, $(i + 1) }
	}'
done)
devices=$(ls /sys/class/infiniband 2>/dev/null | wc -l)
if [ "$(echo "$links" | grep -c .)" -ne "$devices" ]; then
	say "found the netdevs of only these links, not of all $devices RDMA devices:"
	echo "$links"
	exit 1
fi

echo "$links" | while read -r ns dev netdev; do
	[ -n "$dev" ] || continue
	say "deleting $dev (on $netdev, network namespace $ns) for the swap"
	in_ns "$ns" rdma link delete "$dev"
done
if [ -d /sys/module/rdma_rxe ]; then
	modprobe -r rdma_rxe
fi
deps=$(modinfo -F depends "$ko" | tr ',' ' ')
# shellcheck disable=SC2086 # one word per module
[ -z "$deps" ] || modprobe -a $deps
insmod "$ko"
# The note is 16 bytes of header, then the ID.
got=$(od -An -tx1 -v /sys/module/rdma_rxe/notes/.note.gnu.build-id |
	tr -d ' \n' | tail -c ${#want})
if [ "$got" != "$want" ]; then
	say "the loaded rdma_rxe has build ID $got, $ko has $want"
	exit 1
fi
say "rdma_rxe is now $ko (build ID $got)"

echo "$links" | while read -r ns dev netdev; do
	[ -n "$dev" ] || continue
	in_ns "$ns" rdma link add "$dev" type rxe netdev "$netdev"
	say "added $dev on $netdev again (network namespace $ns)"
done
