"""Interop links (s2s) with Prosody and with ejabberd as a federated provider's own server.

Prosody 0.12 and ejabberd 23.01 (Debian's packages; scripts/setup-peers.sh) run on loopback with
their own configs, each the server of a provider domain (`fed.test`, `ejab.test`), federating
with the strait under test over XMPP s2s: STARTTLS and SASL EXTERNAL (XEP-0178) both ways,
dialback disabled, so that only certificates authenticate. Strait accepts the peer's certificate
by its pinned key (the registry's `--pin`); the peer accepts strait's by its CA and name, as it
would any server's. No DNS server is involved: Prosody is given an SRV record for the platform's
second domain through its resolver's options (`localhost` is a zone of its own there), and
ejabberd gets one in the Erlang resolver's cache at boot.

What it shows, with clients neither of us wrote (slixmpp, slixmpp-omemo), against each peer:
- what the boundary policy refuses (no consent on either side, plaintext) is refused with the
  reason, and the peer's user gets it back over strait's own link;
- presence subscriptions are made both ways across the link, and OMEMO-shaped messages cross
  both ways, the platform's copy stamped with the provider's origin;
- with Prosody, real OMEMO 0.3 and OMEMO 2 conversations (device lists and bundles fetched and
  notified over the link); ejabberd 23.01 refuses slixmpp-omemo's publish-options for its own
  users, so that one is skipped there;
- suspending the agreement closes the link, and nothing more gets through.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

oldmemo = pytest.importorskip("oldmemo")
twomemo = pytest.importorskip("twomemo")
slixmpp_omemo = pytest.importorskip("slixmpp_omemo")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from conftest import Server, free_ports, port_open  # noqa: E402
from interop_helpers import condition_of, refusal_after_consent  # noqa: E402
from omemo_helpers import (NS_OLD, NS_TWO, OMEMO_TIMEOUT, befriend, omemo_client,  # noqa: E402
                           receive_encrypted, send_encrypted, tok, wait_devices_known)
from xmpp_helpers import TEST_TIMEOUT, Account, Clients, run  # noqa: E402

NS_INTEROP = "urn:strait:interop:0"
FED = "fed.test"        # Prosody's domain
EJAB = "ejab.test"      # ejabberd's
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certs(work: str, domain: str) -> tuple[str, str, str, str]:
    """A throwaway CA and a certificate for `domain` (server and client use; ejabberd insists on
    clientAuth); returns the paths of the CA, the certificate, its key, and the certificate's
    pin (SHA-256 of its SPKI, hex)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("strait test_links CA"))
          .issuer_name(_name("strait test_links CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(domain)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [os.path.join(work, n) for n in ("ca.pem", f"{domain}.pem", f"{domain}.key")]
    with open(paths[0], "wb") as fh:
        fh.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.chmod(paths[2], 0o644)   # the peer may run as its own user
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return paths[0], paths[1], paths[2], hashlib.sha256(spki).hexdigest()


PROSODY_CONFIG = """-- written by tests/real_clients/test_links.py
run_as_root = true
pidfile = "{work}/prosody.pid"
data_path = "{work}/data"
certificates = "{work}"
log = {{ debug = "{work}/debug.log"; info = "{work}/prosody.log"; }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {s2s} }}
-- Only certificates authenticate links: no dialback (XEP-0220).
-- smacks: stream management (XEP-0198) on its links too (0.12 enables it for s2s by default).
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "pep", "presence", "smacks" }}
modules_disabled = {{ "dialback", "s2s_bidi" }}
authentication = "internal_hashed"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = true
ssl = {{ cafile = "{cafile}"; }}
-- strait's link port without a DNS server: an SRV record for its domain, given to the resolver.
unbound = {{
    resolvconf = false;
    hoststxt = "{work}/hosts";
    options = {{ ["local-data:"] = "_xmpp-server._tcp.{strait_domain}. 60 IN SRV 0 0 {strait_s2s} {strait_domain}."; }};
}}
VirtualHost "{fed}"
    ssl = {{ certificate = "{cert}"; key = "{key}"; cafile = "{cafile}"; }}
"""


class Peer:
    """A peer server under test: its provider id and name at strait, its users' domain, the
    `Server` its clients connect to, its link port and its certificate's pin."""

    pid: str
    name: str
    domain: str
    work: str
    s2s: int
    pin: str
    server: Server
    proc: subprocess.Popen

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for name in self.logs():
            p = os.path.join(self.work, name)
            if os.path.exists(p):
                with open(p, "rb") as fh:
                    out.append(f"--- {name}\n" + "\n".join(
                        fh.read().decode("utf-8", "replace").splitlines()[-lines:]))
        return "\n".join(out)

    def logs(self) -> list[str]:
        return []

    def wait_ports(self, *ports: int) -> None:
        deadline = time.monotonic() + 30
        while not all(port_open("127.0.0.1", p) for p in ports):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.pid}'s server did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def trusted(self, ca: str, strait_ca: str) -> str:
        """One CA file: the peer's own CA (for its clients' view of it) and strait's (for the
        link)."""
        path = os.path.join(self.work, "trusted.pem")
        with open(path, "wb") as out:
            for p in (ca, strait_ca):
                with open(p, "rb") as fh:
                    out.write(fh.read())
        return path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


class Prosody(Peer):
    pid, name, domain = "fed", "Fed Chat", FED
    omemo, omemo_why = True, ""
    sm = True       # mod_smacks: stream management on links

    def __init__(self, server: Server) -> None:
        self.work = tempfile.mkdtemp(prefix="strait-links-prosody-")
        os.makedirs(os.path.join(self.work, "data"))
        ca, cert, key, self.pin = make_certs(self.work, FED)
        cafile = self.trusted(ca, server.ca_file)
        with open(os.path.join(self.work, "hosts"), "w") as fh:
            fh.write(f"127.0.0.1 {server.other_domain}\n127.0.0.1 {FED}\n")
        self.c2s, self.s2s = free_ports(2)
        self.config = os.path.join(self.work, "prosody.cfg.lua")
        with open(self.config, "w") as fh:
            fh.write(PROSODY_CONFIG.format(work=self.work, c2s=self.c2s, s2s=self.s2s,
                                           cafile=cafile, strait_domain=server.other_domain,
                                           strait_s2s=server.s2s_port, fed=FED,
                                           cert=cert, key=key))
        self.server = Server(kind="external", host="127.0.0.1", c2s_port=self.c2s,
                             tls_port=self.c2s, ca_file=ca, domains=[FED], plain_allowed=False,
                             add_user_fn=self.add_user)

    def logs(self) -> list[str]:
        return ["stdout.log", "prosody.log"]

    def add_user(self, jid: str, password: str) -> None:
        user, domain = jid.split("@")
        subprocess.run(["prosodyctl", "--config", self.config, "register", user, domain, password],
                       check=True, capture_output=True, timeout=30)

    def start(self) -> None:
        log = open(os.path.join(self.work, "stdout.log"), "wb")
        self.proc = subprocess.Popen(["prosody", "-F", "--config", self.config],
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ports(self.c2s, self.s2s)


EJABBERD_CONFIG = """# written by tests/real_clients/test_links.py
hosts: ["{domain}"]
loglevel: info
log_rotate_count: 0
certfiles: ["{pem}"]
ca_file: "{cafile}"
s2s_cafile: "{cafile}"
s2s_use_starttls: required
s2s_dns_timeout: 2
s2s_dns_retries: 1
outgoing_s2s_timeout: 5
s2s_max_retry_delay: 2
listen:
  - {{port: {c2s}, ip: "127.0.0.1", module: ejabberd_c2s, starttls_required: true}}
  - {{port: {s2s}, ip: "127.0.0.1", module: ejabberd_s2s_in}}
auth_method: internal
acl: {{local: {{user_regexp: ""}}}}
access_rules:
  local: {{allow: local}}
  c2s: {{allow: all}}
  pubsub_createnode: {{allow: local}}
shaper_rules: {{c2s_shaper: none}}
# No mod_s2s_dialback: only certificates authenticate links (with it loaded, ejabberd would not
# even check the peer's certificate on its outgoing streams).
modules:
  mod_caps: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_pubsub: {{access_createnode: pubsub_createnode, plugins: ["flat", "pep"]}}
"""


class Ejabberd(Peer):
    pid, name, domain = "ejab", "Ejab Chat", EJAB
    sm = False      # ejabberd 23.01 has no stream management on links
    # Its own users cannot publish OMEMO keys there: slixmpp-omemo's publish-options carry
    # pubsub#max_items, which ejabberd 23.01 refuses ("Unknown field").
    omemo = False
    omemo_why = ("ejabberd 23.01 refuses slixmpp-omemo's publish-options (pubsub#max_items), "
                 "so its users have no OMEMO keys to exchange")

    def __init__(self, server: Server) -> None:
        self.work = tempfile.mkdtemp(prefix="strait-links-ejabberd-")
        for d in ("spool", "logs"):
            os.makedirs(os.path.join(self.work, d))
        ca, cert, key, self.pin = make_certs(self.work, EJAB)
        cafile = self.trusted(ca, server.ca_file)
        pem = os.path.join(self.work, f"{EJAB}-full.pem")
        with open(pem, "wb") as out:
            for p in (cert, key):
                with open(p, "rb") as fh:
                    out.write(fh.read())
        self.c2s, self.s2s, dist = free_ports(3)
        w = self.work
        with open(os.path.join(w, "ejabberd.yml"), "w") as fh:
            fh.write(EJABBERD_CONFIG.format(domain=EJAB, pem=pem, cafile=cafile, c2s=self.c2s,
                                            s2s=self.s2s))
        with open(os.path.join(w, "ejabberdctl.cfg"), "w") as fh:
            fh.write(f"ERLANG_NODE=strait-links-{dist}@localhost\nINET_DIST_INTERFACE=127.0.0.1\n"
                     f"ERL_DIST_PORT={dist}\nEJABBERD_PID_PATH={w}/ejabberd.pid\n"
                     f"CONTRIB_MODULES_PATH={w}/contrib\nCONTRIB_MODULES_CONF_DIR={w}/contrib-conf\n")
        # ejabberd finds servers by SRV through Erlang's resolver, whose cache gets the record
        # for strait's domain at boot; no nameserver, so other lookups fail at once. (Its
        # address lookups go through libc, which the .test name would not pass.)
        with open(os.path.join(w, "inetrc"), "w") as fh:
            fh.write('{resolv_conf, "/dev/null"}.\n{lookup, [file]}.\n')
        with open(os.path.join(w, "vm.args"), "w") as fh:
            fh.write('-eval inet_db:res_update_conf(),inet_db:add_rr('
                     f'\\"_xmpp-server._tcp.{server.other_domain}\\",in,srv,2147483,'
                     f'{{0,0,{server.s2s_port},\\"127.0.0.1\\"}})\n')
        user = pwd.getpwnam("ejabberd")
        for root, dirs, files in os.walk(w):
            for n in [root] + [os.path.join(root, x) for x in dirs + files]:
                os.chown(n, user.pw_uid, user.pw_gid)
        self.server = Server(kind="external", host="127.0.0.1", c2s_port=self.c2s,
                             tls_port=self.c2s, ca_file=ca, domains=[EJAB], plain_allowed=False,
                             add_user_fn=self.add_user)

    def logs(self) -> list[str]:
        return ["stdout.log", "logs/ejabberd.log", "logs/error.log"]

    def ctl(self) -> list[str]:
        w = self.work
        return ["setpriv", "--reuid=ejabberd", "--regid=ejabberd", "--init-groups", "--",
                "/usr/sbin/ejabberdctl", "--config-dir", w, "--config", f"{w}/ejabberd.yml",
                "--ctl-config", f"{w}/ejabberdctl.cfg", "--logs", f"{w}/logs",
                "--spool", f"{w}/spool"]

    def env(self) -> dict:
        return dict(os.environ, HOME=self.work)

    def add_user(self, jid: str, password: str) -> None:
        user, domain = jid.split("@")
        subprocess.run(self.ctl() + ["register", user, domain, password], check=True,
                       capture_output=True, timeout=60, cwd=self.work, env=self.env())

    def start(self) -> None:
        log = open(os.path.join(self.work, "stdout.log"), "wb")
        self.proc = subprocess.Popen(self.ctl() + ["foreground"], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
                                     env=self.env(), start_new_session=True)
        self.wait_ports(self.c2s, self.s2s)


PEERS = {"prosody": (Prosody, "prosody"), "ejabberd": (Ejabberd, "ejabberdctl")}


@pytest.fixture(scope="module", params=sorted(PEERS))
def peer(request, server):
    if server.kind != "strait":
        pytest.skip("needs strait's provider registry")
    cls, binary = PEERS[request.param]
    if not shutil.which(binary) and not os.path.exists(f"/usr/sbin/{binary}"):
        setup = subprocess.run([os.path.join(REPO, "scripts", "setup-peers.sh")])
        if setup.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"{request.param} is not installed and scripts/setup-peers.sh "
                            "could not install it", pytrace=False)
            pytest.skip(f"{request.param} is not installed (scripts/setup-peers.sh)")
    p = cls(server)
    p.start()
    try:
        server.cli("provider", "add", p.pid, "--name", p.name, "--provider-domain", p.domain,
                   "--link", f"127.0.0.1:{p.s2s}", "--pin", p.pin, "--actor", "test")
        server.cli("provider", "terms", p.pid, "--version", "2024-03", "--accepted-by",
                   "Jo Signer", "--actor", "test")
        server.cli("provider", "activate", p.pid, "--actor", "test")
        time.sleep(1.5)   # the running server reads the registry once a second
        yield p
    finally:
        p.stop()
        shutil.rmtree(p.work, ignore_errors=True)


def origin_of(msg):
    return msg.xml.find(f"{{{NS_INTEROP}}}origin")




def run_logged(peer: Peer, coro, timeout: float) -> None:
    """Runs a test body; on failure the peer server's log tail goes to the report."""
    try:
        run(coro, timeout=timeout)
    except BaseException:
        print(peer.log_tail())
        raise


def peer_account(peer: Peer, prefix: str) -> Account:
    acct = Account(jid=f"{prefix}{tok('p')[-8:]}@{peer.domain}", password=f"pw-{tok('x')}")
    peer.add_user(acct.jid, acct.password)
    return acct


def omemo_shaped(to: str, text: str):
    """A message carrying an OMEMO 0.3 element (the boundary looks for the element, not into
    it): what crosses when the policy lets it."""
    import xml.etree.ElementTree as ET
    enc = ET.Element("{eu.siacs.conversations.axolotl}encrypted")
    ET.SubElement(ET.SubElement(enc, "{eu.siacs.conversations.axolotl}header", sid="1"),
                  "{eu.siacs.conversations.axolotl}iv").text = "AAAA"
    ET.SubElement(enc, "{eu.siacs.conversations.axolotl}payload").text = text
    return enc


def test_the_policy_holds_both_ways_across_the_link(server, peer, new_account):
    a = new_account(domain=server.other_domain, prefix="lp")
    c = peer_account(peer, "c")

    async def body():
        async with Clients(server) as cs, Clients(peer.server) as cp:
            pa = await cs.online(a, label="A")
            pc = await cp.online(c, label="C")
            # Before alice opts in, carol's message comes back refused, with the reason.
            pc.send_message(mto=a.jid, mbody="hello?", mtype="chat")
            err = await pc.wait_cond(lambda: pc.message_errors and pc.message_errors[-1],
                                     "bounce before consent")
            assert condition_of(err) == "not-allowed", err
            assert f"does not accept chats from {peer.name}" in err["error"]["text"], err
            # ... and alice's own server refuses hers, before anything leaves it.
            pa.send_message(mto=c.jid, mbody="hi?", mtype="chat")
            err = await pa.wait_cond(lambda: pa.message_errors and pa.message_errors[-1],
                                     "refusal at the platform before consent")
            assert "are off for your account" in err["error"]["text"], err
            server.cli("user", "consent", a.jid, "--on", "--allow", peer.pid)
            # Plaintext is refused even with consent; nothing arrives.
            err = await refusal_after_consent(
                pc, lambda: pc.send_message(mto=a.jid, mbody="plain words", mtype="chat"))
            assert condition_of(err) == "policy-violation", err
            assert "must be end-to-end encrypted" in err["error"]["text"], err
            assert not [m for m in pa.messages if "plain words" in str(m)]
            # Presence subscriptions both ways, then presence itself.
            await befriend(pa, pc)
            # Encrypted-shaped messages cross both ways; the platform's copy is stamped.
            for sender, receiver, to, what in ((pc, pa, a.jid, "to-alice"),
                                               (pa, pc, c.jid, "to-carol")):
                secret = tok(what)
                m = sender.make_message(mto=to, mtype="chat", mbody="OMEMO fallback")
                m.append(omemo_shaped(to, secret))
                m.send()
                got = await receiver.wait_cond(
                    lambda: next((x for x in receiver.messages if secret in str(x)), None),
                    f"{what} across the link")
                if receiver is pa:
                    o = origin_of(got)
                    assert o is not None and o.get("provider") == peer.pid, got
                    assert o.get("name") == peer.name
                    assert "OMEMO fallback" not in str(got), "the fallback is the server's"
                else:
                    assert origin_of(got) is None, got

    run_logged(peer, body(), TEST_TIMEOUT)


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_a_peer_user_and_a_platform_user_chat_encrypted_across_the_link(
        server, peer, new_account):
    if not peer.omemo:
        pytest.skip(peer.omemo_why)
    a = new_account(domain=server.other_domain, prefix="la")
    c = peer_account(peer, "c")
    server.cli("user", "consent", a.jid, "--on", "--allow", peer.pid)

    async def body():
        async with Clients(server) as cs, Clients(peer.server) as cp:
            pa = await cs.online(a, label="A-prep")
            pc = await cp.online(c, label="C-prep")
            await befriend(pa, pc)
            await asyncio.gather(pa.logout(), pc.logout())
            # Device lists and bundles over the link: fetched, and notified (PEP +notify).
            ca = await omemo_client(cs, a, "A")
            cc = await omemo_client(cp, c, "C")
            await wait_devices_known([(ca, cc), (cc, ca)])
            for ns in (NS_OLD, NS_TWO):
                secret = tok("to-carol")
                mid = await send_encrypted(ca, c.jid, ns, secret)
                await receive_encrypted(cc, ca, mid, ns, secret)
                secret = tok("to-alice")
                mid = await send_encrypted(cc, a.jid, ns, secret)
                await receive_encrypted(ca, cc, mid, ns, secret)
                m = next(m for m in ca.messages if m["id"] == mid)
                o = origin_of(m)
                assert o is not None and o.get("provider") == peer.pid, f"origin stamp: {m}"
                assert o.get("name") == peer.name

    run_logged(peer, body(), 4 * OMEMO_TIMEOUT)


def test_check_link_walks_the_platforms_side_of_the_link(server, peer):
    r = server.cli("provider", "check-link", peer.pid)
    out = r.stdout
    assert f"link from {server.domain} to {peer.domain}" in out, out
    for step in ("ok: connected to", "ok: TLS established", f"ok: authenticated as {server.domain}",
                 "the link works in this direction"):
        assert step in out, out
    if peer.sm:
        # Stream management on both of the link's streams (XEP-0198): strait's, which the
        # check opened, and the peer's own, opened by the tests before.
        assert "ok: stream management enabled" in out, out
        assert f"interop link in: stream management enabled provider={peer.pid}" in \
            server.log_tail(2000), server.log_tail()
    # A key the provider did not pin: stopped in the TLS handshake, with the reason.
    server.cli("provider", "set", peer.pid, "--pin", "ab" * 32, "--actor", "test")
    try:
        r = server.cli("provider", "check-link", peer.pid, check=False)
    finally:
        server.cli("provider", "set", peer.pid, "--pin", peer.pin, "--actor", "test")
    assert r.returncode == 1, r
    assert "ok: connected to" in r.stdout, r.stdout
    assert "TLS established" not in r.stdout, r.stdout
    assert "not one the provider registered" in r.stderr, r.stderr
    # A second federated provider may not pin the peer's key: its server would speak for both.
    bad = f"{peer.pid}x"
    add = ["provider", "add", bad, "--name", "Not There", "--provider-domain", f"{bad}.test",
           "--link", f"127.0.0.1:{peer.s2s}", "--actor", "test", "--pin"]
    r = server.cli(*add, peer.pin, check=False)
    assert r.returncode == 1 and f"is also the provider {peer.pid}'s" in r.stderr, r
    # A provider domain the peer does not serve: the peer's own refusal, before TLS.
    server.cli(*add, "cd" * 32)
    r = server.cli("provider", "check-link", bad, check=False)
    assert r.returncode == 1, r
    assert "agreement is pending" in r.stdout, r.stdout
    assert "host-unknown" in r.stderr, r.stderr
    # An enlisted provider has no link to check.
    server.cli("provider", "set", bad, "--no-link", "--actor", "test")
    r = server.cli("provider", "check-link", bad, check=False)
    assert r.returncode == 1 and "is not federated" in r.stderr, r


def test_suspension_closes_the_link(server, peer, new_account):
    a = new_account(domain=server.other_domain, prefix="ls")
    c = peer_account(peer, "s")
    server.cli("user", "consent", a.jid, "--on", "--allow", peer.pid)

    async def body():
        async with Clients(server) as cs, Clients(peer.server) as cp:
            pa = await cs.online(a, label="A")
            pc = await cp.online(c, label="C")
            # The link works: a refusal for plaintext comes back (so the stream is up).
            pc.send_message(mto=a.jid, mbody="before", mtype="chat")
            await pc.wait_cond(lambda: pc.message_errors, "a refusal over the link")
            server.cli("provider", "suspend", peer.pid, "--reason", "test", "--actor", "test")
            try:
                await asyncio.sleep(1.5)
                pc.message_errors.clear()
                pc.send_message(mto=a.jid, mbody="after", mtype="chat")
                err = await pc.wait_cond(lambda: pc.message_errors and pc.message_errors[-1],
                                         "bounce after suspension")
                # The peer's own words for a server that refused its link, or ours.
                assert condition_of(err) in ("remote-server-not-found", "remote-server-timeout",
                                             "not-allowed", "policy-violation",
                                             "service-unavailable"), err
                # A platform user's message is refused at the platform.
                pa.message_errors.clear()
                pa.send_message(mto=c.jid, mbody="out", mtype="chat")
                err = await pa.wait_cond(lambda: pa.message_errors and pa.message_errors[-1],
                                         "refusal after suspension")
                assert "suspended" in err["error"]["text"], err
                assert not [m for m in pa.messages if "after" in str(m["body"])]
            finally:
                server.cli("provider", "activate", peer.pid, "--actor", "test")

    run_logged(peer, body(), TEST_TIMEOUT)
