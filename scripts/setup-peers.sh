#!/usr/bin/env bash
# Install the peer servers the real-client tests federate with (tests/real_clients/test_links.py):
# Prosody, from Debian's packages. Nothing is started: a temporary /usr/sbin/policy-rc.d (only if
# none exists) keeps the package's service from starting, and the tests run their own Prosody on
# loopback with their own config, stopped by pid.
#
#   scripts/setup-peers.sh     # idempotent; a no-op when prosody is installed
#
# Needs root and apt-get; without them it says so and exits 1 (the tests then skip outside CI,
# and fail in CI, where CI=true).
set -euo pipefail

log() { printf 'setup-peers: %s\n' "$*" >&2; }

if command -v prosody >/dev/null 2>&1 && command -v prosodyctl >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "prosody is not installed, and installing it needs root and apt-get"
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
log "installing prosody from Debian"
if ! apt-get install -y -q --no-install-recommends prosody lua-unbound >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends prosody lua-unbound >/dev/null
fi
# If the package started its service anyway, stop it: the tests run their own.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prosody >/dev/null 2>&1 || true
fi
for pid in $(pgrep -x lua5.4 2>/dev/null; pgrep -f '^/usr/bin/lua.* /usr/bin/prosody' 2>/dev/null); do
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q '/usr/bin/prosody$'; then
        log "the package started prosody (pid $pid): stopping it"
        kill "$pid" 2>/dev/null || true
    fi
done
command -v prosody >/dev/null 2>&1
