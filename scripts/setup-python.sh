#!/usr/bin/env bash
# Create or update the Python virtualenv used by the real-client tests and the strait-signal
# cross-implementation tests.
#
#   scripts/setup-python.sh          # -> <repo>/.venv, from tests/real_clients/requirements.txt
#                                    #    and tests/signal_interop/requirements.txt
#
# Idempotent and fast when nothing changed: pip runs only when the stamp file in the venv does not
# match the hash of the requirements files and the interpreter version. Only PyPI is used.
# Environment: PYTHON (interpreter to build the venv with, default python3), VENV (default <repo>/.venv).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REQS=("$ROOT/tests/real_clients/requirements.txt" "$ROOT/tests/signal_interop/requirements.txt")
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.strait-requirements.stamp"

log() { printf 'setup-python: %s\n' "$*" >&2; }

command -v "$PYTHON" >/dev/null 2>&1 || { log "no '$PYTHON' found (need CPython >= 3.9)"; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || { log "$("$PYTHON" -V 2>&1) is too old (need >= 3.9)"; exit 1; }

py_version=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')
want=$( { for req in "${REQS[@]}"; do echo "== ${req#"$ROOT"/}"; cat "$req"; done
          echo "python=$py_version"; } | sha256sum | cut -d' ' -f1)

# A venv whose interpreter no longer runs (base Python replaced) is rebuilt from scratch.
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'pass' >/dev/null 2>&1; then
    log "existing $VENV is broken; recreating"
    rm -rf "$VENV"
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0   # up to date
fi

make_venv() { "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; }
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $("$PYTHON" -V 2>&1)"
    if ! make_venv; then
        rm -rf "$VENV"
        # Debian's python3 ships venv/ensurepip separately (python3-venv).
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            mm=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
            log "python venv module unusable; installing python3-venv / python$mm-venv with apt-get"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python$mm-venv" >/dev/null 2>&1 \
                || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
                     apt-get install -y -q python3-venv "python$mm-venv" >/dev/null; }
            make_venv || { log "'$PYTHON -m venv' still fails"; exit 1; }
        else
            log "'$PYTHON -m venv' failed; install the venv module (Debian: apt-get install python3-venv)"
            exit 1
        fi
    fi
fi

log "installing pinned requirements from PyPI"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
# one resolver run over both files, so that a conflict between them is an error, not a silent downgrade
pip_args=()
for req in "${REQS[@]}"; do pip_args+=(-r "$req"); done
"$VENV/bin/python" -m pip install -q "${pip_args[@]}"
"$VENV/bin/python" -c 'import slixmpp, pytest, pytest_timeout, omemo, oldmemo.etree, twomemo.etree' \
    || { log "installed packages do not import"; exit 1; }
echo "$want" > "$STAMP"
log "ready: $VENV ($("$VENV/bin/python" -c 'import slixmpp, omemo; print("slixmpp", slixmpp.__version__, "omemo", omemo.__version__)'))"
