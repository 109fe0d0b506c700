# Sourced by image/build-base.sh and tools/haproxy30.sh: the Debian archive this machine's apt
# already uses, so a debootstrap needs no network access that apt does not have.
# The first Debian archive URI (not the security archive) that this machine's apt uses, in
# either the one-line or the deb822 format.
host_mirror() {
  local files=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 0
  grep -hoE '(^deb(\s+\[[^]]*\])?\s+|^URIs:\s*)[a-z]+://[^ ]+/debian/?(\s|$)' "${files[@]}" \
    | grep -oE '[a-z]+://[^ ]+/debian/?' | sed 's#/$##' | head -n 1
}
