#!/usr/bin/env bash
# Make the base image `debian:trixie-slim` locally: no registry is reachable from CI, so the
# image the Containerfile starts FROM is bootstrapped from Debian's own package archive.
#
#   image/build-base.sh            build it unless the tag already exists (idempotent)
#   image/build-base.sh --force    rebuild it even if the tag exists
#
# The mirror is the one this machine's apt already uses (/etc/apt/sources.list and
# sources.list.d), so the bootstrap needs no network access that apt does not have; set
# DEBIAN_MIRROR to override it. Runs as root (debootstrap needs it); needs debootstrap and a
# running Docker engine.
set -euo pipefail

TAG=${BASE_TAG:-debian:trixie-slim}
SUITE=${DEBIAN_SUITE:-trixie}

if [ "${1:-}" != "--force" ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "build-base.sh: $TAG exists; nothing to do"
  exit 0
fi

# shellcheck source=image/debian-mirror.sh
. "$(dirname "$0")/debian-mirror.sh"
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}

command -v debootstrap >/dev/null || { echo "build-base.sh: debootstrap is not installed" >&2; exit 1; }
# The target suite must be known to this debootstrap and published on the mirror.
[ -e "/usr/share/debootstrap/scripts/$SUITE" ] \
  || { echo "build-base.sh: this debootstrap does not know $SUITE" >&2; exit 1; }

work=$(mktemp -d /var/tmp/build-base.XXXXXX)
cleanup() { rm -rf --one-file-system "$work"; }
trap cleanup EXIT
rootfs=$work/rootfs

echo "build-base.sh: debootstrap --variant=minbase $SUITE from $MIRROR"
debootstrap --variant=minbase --components=main "$SUITE" "$rootfs" "$MIRROR" \
  >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

# What makes Debian's slim images slim, so that packages installed on top stay small too:
# no documentation, manuals or translations; no recommended packages; apt caches cleaned.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$rootfs/etc/apt/apt.conf.d/docker-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
# Package scripts must never try to start services inside an image build.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# The files the exclusions above would not have installed, and everything run-time only.
rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
  "$rootfs"/tmp/* "$rootfs"/run/* "$rootfs"/dev/* "$rootfs"/proc/* "$rootfs"/sys/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
: >"$rootfs/etc/machine-id"

echo "build-base.sh: importing as $TAG"
tar --numeric-owner --xattrs --sort=name -C "$rootfs" -c . \
  | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR" \
    - "$TAG" >/dev/null
docker image ls "$TAG"
