#!/bin/sh
# Owns the non-binary contents of the Trellis images: assembles into DEST the files a `FROM
# scratch` image gets besides its statically linked binary. The Dockerfile runs it in a
# debian:bookworm-slim stage, and cli/tests/static_binary.rs runs the same script on the (Debian
# bookworm) test host and runs the proxy in a chroot of the result, so what the test proves is
# what the image holds.
#
#   rootfs.sh DEST             /etc/nsswitch.conf only (control plane, injector)
#   rootfs.sh DEST --iptables  and iptables/ip6tables (nft backend) with exactly the shared
#                              libraries and xtables extensions they load (the proxy: its image
#                              also runs the pod's `trellis-proxy redirect` init step, which
#                              shells out to iptables; see the Dockerfile)
set -eu

usage() { echo "usage: $0 DEST [--iptables]" >&2; exit 2; }
[ $# -ge 1 ] || usage
dest=$1
iptables=no
case "${2-}" in
  "") ;;
  --iptables) iptables=yes ;;
  *) usage ;;
esac
[ $# -le 2 ] || usage

mkdir -p "$dest/etc"
# A static glibc binary resolves names with its built-in `files` and `dns` sources; without
# nsswitch.conf glibc would ask DNS before /etc/hosts (the kubelet mounts both hosts and
# resolv.conf into the container).
printf 'hosts: files dns\n' > "$dest/etc/nsswitch.conf"

[ "$iptables" = yes ] || exit 0

# Copies FILE to the same path under DEST, following symlinks.
copy() {
  mkdir -p "$dest$(dirname "$1")"
  cp -L "$1" "$dest$1"
}

multi=/usr/sbin/xtables-nft-multi
extensions=/usr/lib/x86_64-linux-gnu/xtables
[ -x "$multi" ] || { echo "$multi not found: install the iptables package" >&2; exit 1; }
[ -d "$extensions" ] || { echo "$extensions not found" >&2; exit 1; }

copy "$multi"
# iptables-nft dispatches on argv[0]; ip6tables is what the proxy runs for IPv6.
for name in iptables ip6tables iptables-save iptables-restore ip6tables-save ip6tables-restore; do
  ln -sf xtables-nft-multi "$dest/usr/sbin/$name"
done
mkdir -p "$dest$extensions"
cp "$extensions"/*.so "$dest$extensions/"

# The dynamic loader and every shared library the binary and the extensions (loaded with
# dlopen at run time) need, at the paths ldd resolves them to.
for object in "$multi" "$extensions"/*.so; do
  ldd "$object" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r library; do
  copy "$library"
done
