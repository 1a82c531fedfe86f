#!/usr/bin/env bash
# The project's test command: builds everything, runs the Rust tests, then the real-client
# interoperability tests (slixmpp, from PyPI, in <repo>/.venv) against a private strait server.
#
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh -k offline      # extra arguments go to pytest
#
# Environment: CARGO_TARGET_DIR (respected), STRAIT_BIN (server binary for the real-client tests,
# default <target>/debug/strait), PYTHON (interpreter for the venv), SKIP_RUST=1 / SKIP_CLIENTS=1.
# Exit status is non-zero if anything failed; the last line is "N passed, M failed".
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/strait-test.XXXXXX")
trap 'rm -rf "$LOGDIR"' EXIT

passed=0
failed=0
status=0
build_ok=1

step() { printf '\n==> %s\n' "$*"; }

# Add "N passed" / "N failed" counts found in a log (cargo test, nextest or pytest format).
count_results() {
    local log=$1 p f
    p=$(grep -aoE '([0-9]+) passed' "$log" | awk '{s+=$1} END {print s+0}')
    f=$(grep -aoE '([0-9]+) failed' "$log" | awk '{s+=$1} END {print s+0}')
    passed=$((passed + p))
    failed=$((failed + f))
}

if [ "${SKIP_RUST:-0}" != 1 ]; then
    step "cargo build --workspace --all-targets"
    if ! cargo build --workspace --all-targets; then
        echo "build failed" >&2
        build_ok=0
        status=1
        failed=$((failed + 1))
    else
        if cargo nextest --version >/dev/null 2>&1; then
            step "cargo nextest run --workspace"
            cargo nextest run --workspace --no-fail-fast 2>&1 | tee "$LOGDIR/rust.log"
            rc=${PIPESTATUS[0]}
            # nextest summary: "Summary [...] N tests run: P passed, F failed, S skipped"
            grep -aE '^\s*Summary' "$LOGDIR/rust.log" > "$LOGDIR/rust.sum" || true
        else
            step "cargo test --workspace"
            cargo test --workspace --no-fail-fast 2>&1 | tee "$LOGDIR/rust.log"
            rc=${PIPESTATUS[0]}
            # one "test result: ok. P passed; F failed; ..." line per test binary
            grep -aE '^test result:' "$LOGDIR/rust.log" > "$LOGDIR/rust.sum" || true
        fi
        before=$failed
        count_results "$LOGDIR/rust.sum"
        if [ "$rc" != 0 ]; then
            status=1
            # a failure that produced no parsable count (crash, link error) still counts
            [ "$failed" = "$before" ] && failed=$((failed + 1))
        fi
    fi
fi

if [ "${SKIP_CLIENTS:-0}" != 1 ] && [ "$build_ok" = 0 ]; then
    echo "skipping the real-client tests: the server did not build" >&2
elif [ "${SKIP_CLIENTS:-0}" != 1 ]; then
    step "real-client tests (tests/real_clients)"
    if ! "$ROOT/scripts/setup-python.sh"; then
        echo "python environment setup failed" >&2
        status=1
        failed=$((failed + 1))
    else
        if [ -z "${STRAIT_BIN:-}" ]; then
            target=${CARGO_TARGET_DIR:-$ROOT/target}
            case $target in /*) ;; *) target=$ROOT/$target ;; esac
            export STRAIT_BIN=$target/debug/strait
        fi
        "$ROOT/.venv/bin/python" -m pytest -c "$ROOT/tests/real_clients/pytest.ini" \
            -p no:cacheprovider --timeout=60 -rfE "$ROOT/tests/real_clients" "$@" \
            2>&1 | tee "$LOGDIR/pytest.log"
        rc=${PIPESTATUS[0]}
        before=$failed
        # pytest's last line: "==== 14 passed, 1 failed, 2 skipped in 9.1s ===="; errors count as failed
        tail -n 1 "$LOGDIR/pytest.log" > "$LOGDIR/pytest.sum"
        count_results "$LOGDIR/pytest.sum"
        e=$(grep -aoE '([0-9]+) errors?' "$LOGDIR/pytest.sum" | awk '{s+=$1} END {print s+0}')
        failed=$((failed + e))
        if [ "$rc" != 0 ]; then
            status=1
            [ "$failed" = "$before" ] && failed=$((failed + 1))
        fi
    fi
fi

echo
echo "$passed passed, $failed failed"
[ "$status" = 0 ] && [ "$failed" = 0 ]
