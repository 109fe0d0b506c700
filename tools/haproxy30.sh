#!/usr/bin/env bash
# Debian trixie's haproxy 3.0 (the version the image ships) beside this machine's 2.6, without
# Docker, for the tests and benchmarks that must run on both:
#
#   tools/haproxy30.sh            install /usr/local/bin/haproxy30 unless it already runs
#
# A minimal trixie root from debootstrap (cached in /var/cache/haproxy-egress), and a copy of
# its haproxy whose ELF interpreter and RPATH point into that root, so it loads trixie's glibc,
# OpenSSL and Lua while reading and writing this machine's paths. (A wrapper calling the root's
# ld.so would break reloads: haproxy's master re-executes itself by its own path.) Runs as
# root; needs debootstrap and patchelf.
set -euo pipefail
BIN=${HAPROXY30_BIN:-/usr/local/bin/haproxy30}
CACHE=${HAPROXY30_CACHE:-/var/cache/haproxy-egress}
ROOT=$CACHE/trixie-root

if "$BIN" -v 2>/dev/null | grep -q '^HAProxy version 3\.0\.'; then
  exit 0
fi
# shellcheck source=image/debian-mirror.sh
. "$(dirname "$0")/../image/debian-mirror.sh"
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

mkdir -p "$CACHE"
if [ ! -x "$ROOT/usr/sbin/haproxy" ]; then
  rm -rf --one-file-system "$ROOT"
  echo "haproxy30.sh: debootstrap --variant=minbase --include=haproxy trixie from $MIRROR"
  debootstrap --variant=minbase --include=haproxy trixie "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
    tail -n 30 "$CACHE/debootstrap.log" >&2
    exit 1
  }
fi
# trixie has a merged /usr: every library, the loader included, is in usr/lib/<triplet>.
libs=$(echo "$ROOT"/usr/lib/*-linux-gnu)
interp=$(echo "$libs"/ld-linux*.so.*)
[ -x "$interp" ] || { echo "haproxy30.sh: no ELF loader in $libs" >&2; exit 1; }
cp "$ROOT/usr/sbin/haproxy" "$CACHE/haproxy30.new"
# DT_RPATH (--force-rpath), not DT_RUNPATH: it also applies to the libraries' own dependencies
# (libssl -> libcrypto, glibc), so nothing of this machine's older libraries is mixed in.
patchelf --set-interpreter "$interp" --force-rpath --set-rpath "$libs" "$CACHE/haproxy30.new"
mv "$CACHE/haproxy30.new" "$CACHE/haproxy30"
ln -sf "$CACHE/haproxy30" "$BIN"
"$BIN" -v | head -n 1
