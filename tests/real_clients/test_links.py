"""Interop links (s2s) with Prosody as a federated provider's own server.

Prosody 0.12 (Debian's package; scripts/setup-peers.sh) runs on loopback with its own config as
the server of the provider domain `fed.test`, federating with the strait under test over XMPP
s2s: STARTTLS and SASL EXTERNAL (XEP-0178) both ways, dialback disabled, so that only
certificates authenticate. Strait accepts Prosody's certificate by its pinned key (the registry's
`--pin`); Prosody accepts strait's by its CA and name, as it would any server's. Prosody finds
strait's link port through an SRV record given to its resolver (no DNS server is involved), for
the platform's second domain (`localhost` is a zone of its own in Prosody's resolver).

What it shows, with clients neither of us wrote (slixmpp, slixmpp-omemo):
- a Prosody user and a platform user subscribe to each other's presence and hold OMEMO 0.3 and
  OMEMO 2 conversations across the link (device lists and bundles fetched over it), the
  platform's copy stamped with the provider's origin;
- what the boundary policy refuses (no consent, plaintext) goes back to the Prosody user as an
  error that says why, over strait's own link;
- suspending the agreement closes the link, and nothing more gets through.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
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
from omemo_helpers import (NS_OLD, NS_TWO, OMEMO_TIMEOUT, befriend, omemo_client,  # noqa: E402
                           receive_encrypted, send_encrypted, tok, wait_devices_known)
from xmpp_helpers import Account, Clients, run  # noqa: E402

NS_INTEROP = "urn:strait:interop:0"
FED = "fed.test"
PID = "fed"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certs(work: str) -> tuple[str, str, str, str]:
    """A throwaway CA and a certificate for FED (server and client use); returns the paths of
    the CA, the certificate, its key, and the certificate's pin (SHA-256 of its SPKI, hex)."""
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
    cert = (x509.CertificateBuilder().subject_name(_name(FED)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(FED)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = [os.path.join(work, n) for n in ("ca.pem", f"{FED}.pem", f"{FED}.key")]
    with open(paths[0], "wb") as fh:
        fh.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.chmod(paths[2], 0o644)   # Prosody may drop to its own user
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
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "pep", "presence" }}
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


class Prosody:
    def __init__(self, server: Server) -> None:
        self.work = tempfile.mkdtemp(prefix="strait-links-prosody-")
        os.makedirs(os.path.join(self.work, "data"))
        ca, self.cert, self.key, self.pin = make_certs(self.work)
        self.ca = ca
        # Prosody trusts strait's CA for the link, and its own for its clients' view of it.
        cafile = os.path.join(self.work, "trusted.pem")
        with open(cafile, "wb") as out:
            for p in (ca, server.ca_file):
                with open(p, "rb") as fh:
                    out.write(fh.read())
        with open(os.path.join(self.work, "hosts"), "w") as fh:
            fh.write(f"127.0.0.1 {server.other_domain}\n127.0.0.1 {FED}\n")
        self.c2s, self.s2s = free_ports(2)
        self.config = os.path.join(self.work, "prosody.cfg.lua")
        with open(self.config, "w") as fh:
            fh.write(PROSODY_CONFIG.format(work=self.work, c2s=self.c2s, s2s=self.s2s,
                                           cafile=cafile, strait_domain=server.other_domain,
                                           strait_s2s=server.s2s_port, fed=FED,
                                           cert=self.cert, key=self.key))
        self.proc = None
        # slixmpp clients of Prosody's users
        self.server = Server(kind="external", host="127.0.0.1", c2s_port=self.c2s,
                             tls_port=self.c2s, ca_file=ca, domains=[FED], plain_allowed=False,
                             add_user_fn=self.add_user)

    def add_user(self, jid: str, password: str) -> None:
        user, domain = jid.split("@")
        subprocess.run(["prosodyctl", "--config", self.config, "register", user, domain, password],
                       check=True, capture_output=True, timeout=30)

    def start(self) -> None:
        log = open(os.path.join(self.work, "stdout.log"), "wb")
        self.proc = subprocess.Popen(["prosody", "-F", "--config", self.config],
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while not (port_open("127.0.0.1", self.c2s) and port_open("127.0.0.1", self.s2s)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prosody did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for name in ("stdout.log", "prosody.log"):
            p = os.path.join(self.work, name)
            if os.path.exists(p):
                with open(p, "rb") as fh:
                    out.append(f"--- {name}\n" + "\n".join(
                        fh.read().decode("utf-8", "replace").splitlines()[-lines:]))
        return "\n".join(out)


@pytest.fixture(scope="module")
def prosody(server):
    if server.kind != "strait":
        pytest.skip("needs strait's provider registry")
    if not shutil.which("prosody"):
        setup = subprocess.run([os.path.join(REPO, "scripts", "setup-peers.sh")])
        if setup.returncode != 0 or not shutil.which("prosody"):
            if os.environ.get("CI"):
                pytest.fail("prosody is not installed and scripts/setup-peers.sh could not "
                            "install it", pytrace=False)
            pytest.skip("prosody is not installed (scripts/setup-peers.sh)")
    p = Prosody(server)
    p.start()
    server.cli("provider", "add", PID, "--name", "Fed Chat", "--provider-domain", FED,
               "--link", f"127.0.0.1:{p.s2s}", "--pin", p.pin, "--actor", "test")
    server.cli("provider", "terms", PID, "--version", "2024-03", "--accepted-by", "Jo Signer",
               "--actor", "test")
    server.cli("provider", "activate", PID, "--actor", "test")
    time.sleep(1.5)   # the running server reads the registry once a second
    try:
        yield p
    except Exception:
        raise
    finally:
        p.stop()
        shutil.rmtree(p.work, ignore_errors=True)


def origin_of(msg):
    return msg.xml.find(f"{{{NS_INTEROP}}}origin")


def condition_of(err) -> str:
    """The stanza error's defined condition, read from the XML: slixmpp 1.17 does not know
    RFC 6120's policy-violation and reports it as ''."""
    e = err.xml.find("{jabber:client}error")
    for child in (e if e is not None else []):
        if child.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}") and \
                not child.tag.endswith("}text"):
            return child.tag.split("}")[1]
    return ""


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_a_prosody_user_and_a_platform_user_chat_encrypted_across_the_link(
        server, prosody, new_account):
    a = new_account(domain=server.other_domain, prefix="la")
    c = Account(jid=f"c{tok('l')[-8:]}@{FED}", password="pw-carol-123")
    prosody.add_user(c.jid, c.password)

    async def body():
        async with Clients(server) as cs, Clients(prosody.server) as cp:
            pa = await cs.online(a, label="A-prep")
            pc = await cp.online(c, label="C-prep")
            # Before alice opts in, carol's message comes back refused, with the reason.
            pc.send_message(mto=a.jid, mbody="hello?", mtype="chat")
            err = await pc.wait_cond(lambda: pc.message_errors and pc.message_errors[-1],
                                     "bounce before consent")
            assert condition_of(err) == "not-allowed", err
            assert "does not accept chats from Fed Chat" in err["error"]["text"], err
            server.cli("user", "consent", a.jid, "--on", "--allow", PID)
            # Plaintext is refused even with consent; nothing arrives.
            pc.message_errors.clear()
            pc.send_message(mto=a.jid, mbody="plain words", mtype="chat")
            err = await pc.wait_cond(lambda: pc.message_errors and pc.message_errors[-1],
                                     "plaintext bounce")
            assert condition_of(err) == "policy-violation", err
            assert "must be end-to-end encrypted" in err["error"]["text"], err
            assert not [m for m in pa.messages if "plain words" in str(m)]
            # Presence subscriptions both ways, across the link.
            await befriend(pa, pc)
            await asyncio.gather(pa.logout(), pc.logout())

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
                assert o is not None and o.get("provider") == PID, f"origin stamp: {m}"
                assert o.get("name") == "Fed Chat"

    try:
        run(body(), timeout=4 * OMEMO_TIMEOUT)
    except BaseException:
        print(prosody.log_tail())
        raise


def test_suspension_closes_the_link(server, prosody, new_account):
    a = new_account(domain=server.other_domain, prefix="ls")
    c = Account(jid=f"c{tok('s')[-8:]}@{FED}", password="pw-carol-456")
    prosody.add_user(c.jid, c.password)
    server.cli("user", "consent", a.jid, "--on", "--allow", PID)

    async def body():
        async with Clients(server) as cs, Clients(prosody.server) as cp:
            pa = await cs.online(a, label="A")
            pc = await cp.online(c, label="C")
            # The link works: a refusal for plaintext comes back (so the stream is up).
            pc.send_message(mto=a.jid, mbody="before", mtype="chat")
            await pc.wait_cond(lambda: pc.message_errors, "a refusal over the link")
            server.cli("provider", "suspend", PID, "--reason", "test", "--actor", "test")
            try:
                await asyncio.sleep(1.5)
                pc.message_errors.clear()
                pc.send_message(mto=a.jid, mbody="after", mtype="chat")
                err = await pc.wait_cond(lambda: pc.message_errors and pc.message_errors[-1],
                                         "bounce after suspension")
                # Prosody's own words for a server that refused its link.
                assert condition_of(err) in ("remote-server-not-found", "remote-server-timeout",
                                             "not-allowed", "policy-violation"), err
                # A platform user's message is refused at the platform.
                pa.message_errors.clear()
                pa.send_message(mto=c.jid, mbody="out", mtype="chat")
                err = await pa.wait_cond(lambda: pa.message_errors and pa.message_errors[-1],
                                         "refusal after suspension")
                assert "suspended" in err["error"]["text"], err
                assert not [m for m in pa.messages if "after" in str(m["body"])]
            finally:
                server.cli("provider", "activate", PID, "--actor", "test")

    run(body())
