#!/usr/bin/env bash
# Run the real-client tests against Prosody instead of strait, to check that the TESTS are right
# (a test that Prosody fails is either a test bug or a feature Prosody lacks). Not part of
# scripts/test.sh. Needs root (apt-get, runuser); Prosody runs by hand, not as a system service.
#
#   tests/real_clients/reference_prosody.sh setup     # apt-get install prosody; CA, certs, config
#   tests/real_clients/reference_prosody.sh start     # loopback 25222 (STARTTLS), 25223 (direct TLS)
#   tests/real_clients/reference_prosody.sh test [pytest args]
#   tests/real_clients/reference_prosody.sh stop      # by the pid in our pid file
#
# Domains: localhost and example.test. Everything lives in $PROSODY_DIR (default /tmp/strait-prosody).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
D=${PROSODY_DIR:-/tmp/strait-prosody}
C2S=${PROSODY_C2S_PORT:-25222}
TLS=${PROSODY_TLS_PORT:-25223}
COMP=${PROSODY_COMPONENT_PORT:-25347}
COMP_SECRET=reference-component-secret
CFG="$D/prosody.cfg.lua"
DOMAINS="localhost example.test"

setup() {
    command -v prosody >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y prosody
    mkdir -p "$D/certs" "$D/data"
    if [ ! -f "$D/certs/ca.pem" ]; then
        (cd "$D/certs"
         openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout ca.key -out ca.pem \
             -subj "/CN=strait test CA (prosody reference)" \
             -addext "basicConstraints=critical,CA:TRUE" \
             -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
         for h in $DOMAINS; do
             openssl req -newkey rsa:2048 -nodes -keyout "$h.key" -out "$h.csr" -subj "/CN=$h" 2>/dev/null
             printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$h" > "$h.ext"
             openssl x509 -req -in "$h.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
                 -out "$h.crt" -extfile "$h.ext" 2>/dev/null
         done)
    fi
    cat > "$CFG" <<EOF
pidfile = "$D/prosody.pid"
data_path = "$D/data"
log = { info = "$D/prosody.log"; error = "$D/prosody.err"; debug = "$D/prosody.debug.log"; }
interfaces = { "127.0.0.1" }
c2s_ports = { $C2S }
c2s_direct_tls_ports = { $TLS }
s2s_ports = { }
component_ports = { $COMP }
component_interfaces = { "127.0.0.1" }
modules_enabled = { "roster"; "saslauth"; "tls"; "disco"; "ping"; "offline"; "posix"; "private"; "pep"; "vcard_legacy"; "register"; "carbons"; "mam"; "blocklist"; "smacks"; "csi_simple"; }
c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"
ssl = { certificate = "$D/certs/localhost.crt"; key = "$D/certs/localhost.key"; }
VirtualHost "localhost"
    ssl = { certificate = "$D/certs/localhost.crt"; key = "$D/certs/localhost.key"; }
VirtualHost "example.test"
    ssl = { certificate = "$D/certs/example.test.crt"; key = "$D/certs/example.test.key"; }
Component "bot.localhost"
    component_secret = "$COMP_SECRET"
EOF
    chown -R prosody:prosody "$D"
    runuser -u prosody -- prosodyctl --config "$CFG" check config
}

start() {
    if [ -s "$D/prosody.pid" ] && kill -0 "$(cat "$D/prosody.pid")" 2>/dev/null; then return 0; fi
    setsid runuser -u prosody -- prosody --config "$CFG" -F >"$D/stdout.log" 2>&1 </dev/null &
    for _ in $(seq 40); do
        [ -s "$D/prosody.pid" ] && { echo "prosody $(cat "$D/prosody.pid") on 127.0.0.1:$C2S/$TLS"; return 0; }
        sleep 0.25
    done
    echo "prosody did not start" >&2; cat "$D/stdout.log" >&2; return 1
}

stop() {
    [ -s "$D/prosody.pid" ] || return 0
    pid=$(cat "$D/prosody.pid")
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
    echo "prosody $pid still running" >&2; return 1
}

# Account hook used by the tests (STRAIT_TEST_ADD_USER). Removing spaces from the localpart
# stands in for strait's E.164 normalisation of phone numbers, which Prosody does not have.
adduser() {
    user=$(printf '%s' "$XMPP_USER" | tr -d ' ')
    runuser -u prosody -- prosodyctl --config "$CFG" register "$user" "$XMPP_DOMAIN" "$XMPP_PASSWORD" >/dev/null
}

run_tests() {
    "$ROOT/scripts/setup-python.sh"
    STRAIT_TEST_EXTERNAL=1 STRAIT_TEST_HOST=127.0.0.1 STRAIT_TEST_C2S_PORT=$C2S \
    STRAIT_TEST_TLS_PORT=$TLS STRAIT_TEST_CA="$D/certs/ca.pem" \
    STRAIT_TEST_DOMAINS="localhost,example.test" STRAIT_TEST_PLAIN_ALLOWED=1 STRAIT_TEST_MECHS=SCRAM-SHA-1 \
    STRAIT_TEST_LOG="$D/prosody.log" STRAIT_TEST_ADD_USER="'$HERE/reference_prosody.sh' adduser" \
    STRAIT_TEST_COMPONENT_PORT=$COMP STRAIT_TEST_COMPONENT_DOMAIN=bot.localhost \
    STRAIT_TEST_COMPONENT_SECRET=$COMP_SECRET \
        "$ROOT/.venv/bin/python" -m pytest -c "$HERE/pytest.ini" -p no:cacheprovider "$HERE" "$@"
}

case "${1:-}" in
    setup) setup ;;
    start) start ;;
    stop) stop ;;
    adduser) adduser ;;
    test) shift; run_tests "$@" ;;
    *) echo "usage: $0 setup|start|test|stop" >&2; exit 2 ;;
esac
