"""pytest fixtures: the server under test, and fresh accounts on it.

By default a private `strait serve` is started for the session: free loopback ports, a temporary
data directory with its own config file, accounts made with `strait user add`, killed by pid at
the end. Its log is attached to every failing test's report, and the directory is kept (path
printed) when anything failed.

Binary: $STRAIT_BIN, else <$CARGO_TARGET_DIR or <repo>/target>/debug/strait.

To aim the same tests at an already running server instead (used to validate the tests against
Prosody), set STRAIT_TEST_EXTERNAL=1 and:
  STRAIT_TEST_HOST       address to connect to (default 127.0.0.1)
  STRAIT_TEST_C2S_PORT   STARTTLS port; STRAIT_TEST_TLS_PORT direct-TLS port
  STRAIT_TEST_HTTPS_PORT port the upload service's slot URLs are served on (loopback)
  STRAIT_TEST_CA         PEM file of the CA that signed the server certificates
  STRAIT_TEST_DOMAINS    comma-separated virtual hosts (default "localhost,example.test")
  STRAIT_TEST_ADD_USER   shell command that creates an account; it gets XMPP_JID, XMPP_USER,
                         XMPP_DOMAIN, XMPP_PASSWORD in its environment and the password on stdin
  STRAIT_TEST_PLAIN_ALLOWED=1 if the server offers SASL PLAIN after TLS (strait: allow_plain=false)
  STRAIT_TEST_LOG        optional server log file to attach to failures
  STRAIT_TEST_MECHS      SASL mechanisms to exercise (default "SCRAM-SHA-256,SCRAM-SHA-1";
                         Prosody 0.12 has only SCRAM-SHA-1, so its test_login_starttls_scram_sha256
                         is expected to fail)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import pytest

from xmpp_helpers import Account

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STARTUP_TIMEOUT = 30.0
# The external component (XEP-0114) the test server accepts.
COMPONENT_DOMAIN = "bot.localhost"
CLI_TIMEOUT = 30.0


@dataclass
class Server:
    kind: str                     # "strait" or "external"
    host: str
    c2s_port: int
    tls_port: int
    ca_file: str
    domains: List[str]
    plain_allowed: bool
    add_user_fn: Callable[[str, str], None]
    log_path: Optional[str] = None
    # XEP-0363 uploads' HTTPS port (slot URLs name upload.<domain>: tests connect here instead)
    https_port: Optional[int] = None
    config_path: Optional[str] = None
    binary: Optional[str] = None
    workdir: Optional[str] = None
    proc: Optional[subprocess.Popen] = None
    failed_tests: List[str] = field(default_factory=list)
    # SASL mechanisms every login/rejection test is run with
    mechs: List[str] = field(default_factory=lambda: ["SCRAM-SHA-256", "SCRAM-SHA-1"])
    # An external component (XEP-0114) the server accepts: port, domain, secret
    component_port: Optional[int] = None
    component_domain: Optional[str] = None
    component_secret: Optional[str] = None
    # Interop links (s2s): where federated providers' servers connect
    s2s_port: Optional[int] = None
    # GET /metrics (OpenMetrics text)
    metrics_port: Optional[int] = None

    @property
    def domain(self) -> str:
        return self.domains[0]

    @property
    def other_domain(self) -> str:
        return self.domains[1]

    def add_user(self, jid: str, password: str) -> None:
        self.add_user_fn(jid, password)

    def cli(self, *args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
        """Run `strait <args> --config <file>` (strait mode only)."""
        assert self.kind == "strait", "CLI needs the strait server"
        cmd = [self.binary, *args, "--config", self.config_path]
        res = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                             timeout=CLI_TIMEOUT)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}\n"
                                 f"stdout: {res.stdout}\nstderr: {res.stderr}")
        return res

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return "(no server log)"
        with open(self.log_path, "rb") as fh:
            data = fh.read()[-256 * 1024:].decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-lines:])

    def alive_problem(self) -> Optional[str]:
        if self.proc is not None and self.proc.poll() is not None:
            return f"strait server exited with status {self.proc.returncode}"
        return None


# ------------------------------------------------------------------------ strait mode
def strait_binary() -> str:
    if os.environ.get("STRAIT_BIN"):
        return os.environ["STRAIT_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    if not os.path.isabs(target):
        target = os.path.join(REPO, target)
    return os.path.join(target, "debug", "strait")


def free_ports(n: int) -> List[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_strait() -> Server:
    binary = strait_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"strait binary not found at {binary} (build it with `cargo build`, "
                    f"or set STRAIT_BIN)", pytrace=False)
    work = tempfile.mkdtemp(prefix="strait-realclients-")
    data = os.path.join(work, "data")
    c2s, tls, https, comp, s2s, metrics = free_ports(6)
    comp_secret = secrets.token_hex(16)
    domains = ["localhost", "example.test"]
    config = os.path.join(work, "strait.toml")
    with open(config, "w") as fh:
        fh.write(f"""# written by tests/real_clients/conftest.py
data_dir = "{data}"
domains = ["{domains[0]}", "{domains[1]}"]

[listen]
c2s = ["127.0.0.1:{c2s}"]
c2s_direct_tls = ["127.0.0.1:{tls}"]
component = ["127.0.0.1:{comp}"]
s2s = ["127.0.0.1:{s2s}"]
metrics = ["127.0.0.1:{metrics}"]

[limits]
max_offline_messages = 100

[upload]
listen = ["127.0.0.1:{https}"]
max_file_bytes = 1048576
quota_bytes_per_account = 3145728
min_free_bytes = 0  # test machines' disks can be nearly full

[auth]
allow_plain = false

[contact]
abuse = ["mailto:abuse@localhost", "xmpp:abuse@localhost"]

[[components]]
domain = "{COMPONENT_DOMAIN}"
secret = "{comp_secret}"
""")
    # Note: the server locks out an address after repeated failed logins (auth.max_failures_*);
    # the rejection tests stay well below that, so other tests' logins are unaffected.
    log_path = os.path.join(work, "server.log")
    env = dict(os.environ)
    env.setdefault("STRAIT_LOG", "info")
    env.setdefault("NO_COLOR", "1")   # plain text in the log file
    env.setdefault("RUST_BACKTRACE", "1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "serve", "--config", config], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

    server = Server(kind="strait", host="127.0.0.1", c2s_port=c2s, tls_port=tls, https_port=https,
                    ca_file=os.path.join(data, "tls", "ca.pem"), domains=domains,
                    plain_allowed=False, add_user_fn=lambda j, p: None, log_path=log_path,
                    config_path=config, binary=binary, workdir=work, proc=proc,
                    component_port=comp, component_domain=COMPONENT_DOMAIN,
                    component_secret=comp_secret, s2s_port=s2s,
                    metrics_port=metrics)

    def add_user(jid: str, password: str) -> None:
        server.cli("user", "add", jid, stdin=password + "\n")

    server.add_user_fn = add_user

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"strait serve exited with status {proc.returncode} during startup; "
                        f"log {log_path}:\n{server.log_tail()}", pytrace=False)
        if (os.path.exists(server.ca_file) and port_open("127.0.0.1", c2s)
                and port_open("127.0.0.1", tls)):
            return server
        if time.monotonic() > deadline:
            stop_strait(server)
            pytest.fail(f"strait serve not ready after {STARTUP_TIMEOUT:g}s (ca.pem present: "
                        f"{os.path.exists(server.ca_file)}); log:\n{server.log_tail()}",
                        pytrace=False)
        time.sleep(0.1)


def stop_strait(server: Server) -> None:
    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ------------------------------------------------------------------------ external mode
def external_server() -> Server:
    env = os.environ
    missing = [v for v in ("STRAIT_TEST_C2S_PORT", "STRAIT_TEST_TLS_PORT", "STRAIT_TEST_CA",
                           "STRAIT_TEST_ADD_USER") if not env.get(v)]
    if missing:
        pytest.fail(f"STRAIT_TEST_EXTERNAL=1 needs {', '.join(missing)}", pytrace=False)
    domains = [d.strip() for d in env.get("STRAIT_TEST_DOMAINS", "localhost,example.test")
               .split(",") if d.strip()]
    assert len(domains) >= 2, "STRAIT_TEST_DOMAINS needs two domains"
    cmd = env["STRAIT_TEST_ADD_USER"]

    def add_user(jid: str, password: str) -> None:
        user, _, domain = jid.rpartition("@")
        e = dict(env, XMPP_JID=jid, XMPP_USER=user, XMPP_DOMAIN=domain, XMPP_PASSWORD=password)
        res = subprocess.run(["sh", "-c", cmd], input=password + "\n", env=e,
                             capture_output=True, text=True, timeout=CLI_TIMEOUT)
        if res.returncode != 0:
            raise AssertionError(f"add-user hook failed ({res.returncode}) for {jid}: "
                                 f"{res.stdout} {res.stderr}")

    return Server(kind="external", host=env.get("STRAIT_TEST_HOST", "127.0.0.1"),
                  c2s_port=int(env["STRAIT_TEST_C2S_PORT"]),
                  tls_port=int(env["STRAIT_TEST_TLS_PORT"]), ca_file=env["STRAIT_TEST_CA"],
                  https_port=int(env["STRAIT_TEST_HTTPS_PORT"]) if env.get("STRAIT_TEST_HTTPS_PORT") else None,
                  domains=domains, plain_allowed=env.get("STRAIT_TEST_PLAIN_ALLOWED") == "1",
                  add_user_fn=add_user, log_path=env.get("STRAIT_TEST_LOG"),
                  component_port=int(env["STRAIT_TEST_COMPONENT_PORT"])
                  if env.get("STRAIT_TEST_COMPONENT_PORT") else None,
                  component_domain=env.get("STRAIT_TEST_COMPONENT_DOMAIN"),
                  component_secret=env.get("STRAIT_TEST_COMPONENT_SECRET"),
                  mechs=[m.strip() for m in env.get("STRAIT_TEST_MECHS",
                                                    "SCRAM-SHA-256,SCRAM-SHA-1").split(",")
                         if m.strip()])


# ------------------------------------------------------------------------ fixtures / hooks
_SERVER: Optional[Server] = None
_NOTES: List[str] = []


@pytest.fixture(scope="session")
def server():
    global _SERVER  # noqa: PLW0603
    external = os.environ.get("STRAIT_TEST_EXTERNAL") == "1"
    srv = external_server() if external else start_strait()
    _SERVER = srv
    try:
        yield srv
    finally:
        _SERVER = None
        if srv.kind == "strait":
            stop_strait(srv)
            if srv.failed_tests:
                _NOTES.append(f"strait server data, config and log kept in {srv.workdir} "
                              f"(log: {srv.log_path})")
            else:
                shutil.rmtree(srv.workdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _server_stays_up(request):
    yield
    srv = _SERVER
    if srv is not None and "server" in request.fixturenames:
        problem = srv.alive_problem()
        if problem:
            pytest.fail(f"{problem} during this test", pytrace=False)


@pytest.fixture
def new_account(server):
    """Factory: a fresh account with a random localpart (and random password) on `domain`."""
    def make(domain: Optional[str] = None, prefix: str = "u",
             password: Optional[str] = None) -> Account:
        acct = Account(jid=f"{prefix}{secrets.token_hex(5)}@{domain or server.domain}",
                       password=password or f"pw-{secrets.token_urlsafe(12)}")
        server.add_user(acct.jid, acct.password)
        return acct
    return make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    srv = _SERVER
    if rep.failed and srv is not None:
        srv.failed_tests.append(item.nodeid)
        where = f" ({srv.log_path})" if srv.log_path else ""
        rep.sections.append((f"server log, last lines{where}", srv.log_tail()))


def pytest_terminal_summary(terminalreporter):
    for note in _NOTES:
        terminalreporter.write_line(note)
