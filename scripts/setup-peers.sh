#!/usr/bin/env bash
# Install the peer servers the real-client tests federate with (tests/real_clients/test_links.py):
# Prosody and ejabberd, from Debian's packages. Nothing is started: a temporary
# /usr/sbin/policy-rc.d (only if none exists) keeps the packages' services from starting, and the
# tests run their own instances on loopback with their own configs, stopped by pid.
#
#   scripts/setup-peers.sh     # idempotent; a no-op when both are installed
#
# Needs root and apt-get; without them it says so and exits 1 (the tests then skip outside CI,
# and fail in CI, where CI=true).
set -euo pipefail

log() { printf 'setup-peers: %s\n' "$*" >&2; }

missing=()
command -v prosodyctl >/dev/null 2>&1 || missing+=(prosody lua-unbound)
[ -x /usr/sbin/ejabberdctl ] || missing+=(ejabberd)
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing ${missing[*]}, and installing needs root and apt-get"
    exit 1
fi
prc=/usr/sbin/policy-rc.d
made_prc=0
if [ ! -e "$prc" ]; then
    printf '#!/bin/sh\n# made by strait scripts/setup-peers.sh for the duration of an install\nexit 101\n' > "$prc"
    chmod 755 "$prc"
    made_prc=1
fi
cleanup() { [ "$made_prc" = 1 ] && rm -f "$prc"; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
log "installing from Debian: ${missing[*]}"
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
# If a package started its service anyway, stop it: the tests run their own.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prosody ejabberd >/dev/null 2>&1 || true
fi
for pid in $(pgrep -x lua5.4 2>/dev/null; pgrep -f '^/usr/bin/lua.* /usr/bin/prosody' 2>/dev/null); do
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q '/usr/bin/prosody$'; then
        log "the package started prosody (pid $pid): stopping it"
        kill "$pid" 2>/dev/null || true
    fi
done
command -v prosodyctl >/dev/null 2>&1 && [ -x /usr/sbin/ejabberdctl ]
