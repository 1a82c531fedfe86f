#!/usr/bin/env bash
# The project's test command: builds everything, runs the Rust tests, then the real-client
# interoperability tests (slixmpp, from PyPI, in <repo>/.venv) against a private strait server
# (with Prosody and ejabberd, from Debian's packages by scripts/setup-peers.sh, as federated peer
# servers),
# then the strait-signal cross-implementation tests (tests/signal_interop: the omemo_peer example
# against python-omemo + oldmemo + twomemo, from PyPI, in the same venv), with the tests of the
# benchmark harness's own logic (tests/bench_harness: bench/compare's sweep, and a tiny
# bench/third-party run) between.
#
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh -k offline      # extra arguments go to both pytest runs
#
# Environment: CARGO_TARGET_DIR (respected), STRAIT_BIN (server binary for the real-client tests,
# default <target>/debug/strait), SIGNAL_PEER_CMD (peer under test for tests/signal_interop,
# default <target>/debug/examples/omemo_peer), PYTHON (interpreter for the venv),
# SKIP_RUST=1 / SKIP_CLIENTS=1 / SKIP_SIGNAL=1.
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

# The Python peers are needed by some Rust tests too (strait-signal's python-omemo
# cross-check reads STRAIT_OMEMO_PYTHON), so the environment is prepared first.
if [ "${SKIP_RUST:-0}" != 1 ] && "$ROOT/scripts/setup-python.sh"; then
    export STRAIT_OMEMO_PYTHON="$ROOT/.venv/bin/python"
fi

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
            # nextest does not run doc tests (the SDK's example is one)
            step "cargo test --workspace --doc"
            cargo test --workspace --doc --no-fail-fast 2>&1 | tee "$LOGDIR/rust-doc.log"
            doc_rc=${PIPESTATUS[0]}
            grep -aE '^test result:' "$LOGDIR/rust-doc.log" >> "$LOGDIR/rust.sum" || true
            [ "$doc_rc" != 0 ] && rc=$doc_rc
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

# Run one pytest suite ($1 = directory under tests/, $2 = per-test timeout) and add its counts.
# With extra arguments (e.g. -k), a suite in which they select nothing (pytest exit 5) is no failure.
run_pytest() {
    local suite=$1 timeout=$2 rc before e
    shift 2
    "$ROOT/.venv/bin/python" -m pytest -c "$ROOT/tests/$suite/pytest.ini" \
        -p no:cacheprovider --timeout="$timeout" -rfE "$ROOT/tests/$suite" "$@" \
        2>&1 | tee "$LOGDIR/$suite.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 5 ] && [ "$#" -gt 0 ] && rc=0
    before=$failed
    # pytest's last line: "==== 14 passed, 1 failed, 2 skipped in 9.1s ===="; errors count as failed
    tail -n 1 "$LOGDIR/$suite.log" > "$LOGDIR/$suite.sum"
    count_results "$LOGDIR/$suite.sum"
    e=$(grep -aoE '([0-9]+) errors?' "$LOGDIR/$suite.sum" | awk '{s+=$1} END {print s+0}')
    failed=$((failed + e))
    if [ "$rc" != 0 ]; then
        status=1
        [ "$failed" = "$before" ] && failed=$((failed + 1))
    fi
}

run_clients=1
run_signal=1
[ "${SKIP_CLIENTS:-0}" = 1 ] && run_clients=0
[ "${SKIP_SIGNAL:-0}" = 1 ] && run_signal=0
if [ "$run_clients" = 1 ] && [ "$build_ok" = 0 ]; then
    echo "skipping the real-client tests: the server did not build" >&2
    run_clients=0
fi
if [ "$run_signal" = 1 ] && [ "$build_ok" = 0 ] && [ -z "${SIGNAL_PEER_CMD:-}" ]; then
    echo "skipping the signal interop tests: the Rust peer (omemo_peer) did not build" >&2
    run_signal=0
fi

python_ok=1
if [ "$run_clients" = 1 ] || [ "$run_signal" = 1 ]; then
    if ! "$ROOT/scripts/setup-python.sh"; then
        echo "python environment setup failed" >&2
        status=1
        failed=$((failed + 1))
        python_ok=0
    fi
fi

if [ "$run_clients" = 1 ] && [ "$python_ok" = 1 ]; then
    # Prosody and ejabberd, the peer servers of the interop link tests (test_links.py):
    # installed from Debian when missing; those tests fail in CI, and skip elsewhere, without.
    "$ROOT/scripts/setup-peers.sh" || echo "peer servers not installed (scripts/setup-peers.sh)" >&2
    step "real-client tests (tests/real_clients)"
    if [ -z "${STRAIT_BIN:-}" ]; then
        target=${CARGO_TARGET_DIR:-$ROOT/target}
        case $target in /*) ;; *) target=$ROOT/$target ;; esac
        export STRAIT_BIN=$target/debug/strait
    fi
    run_pytest real_clients 60 "$@"
fi

if [ "$python_ok" = 1 ] && { [ "$run_clients" = 1 ] || [ "$run_signal" = 1 ]; }; then
    step "benchmark harness tests (tests/bench_harness: bench/compare's sweep logic; a tiny bench/third-party run)"
    run_pytest bench_harness 60 "$@"
fi

if [ "$run_signal" = 1 ] && [ "$python_ok" = 1 ]; then
    # X = $SIGNAL_PEER_CMD, else <target>/debug/examples/omemo_peer (tests/signal_interop/conftest.py)
    step "signal cross-implementation tests (tests/signal_interop, peer: ${SIGNAL_PEER_CMD:-omemo_peer})"
    run_pytest signal_interop 60 "$@"
fi

echo
echo "$passed passed, $failed failed"
[ "$status" = 0 ] && [ "$failed" = 0 ]
