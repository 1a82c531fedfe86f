"""Driver side of the peer protocol (PROTOCOL.md): start peers, talk to them, route their messages.

Two peers take part in every test:
  * the reference peer: python-omemo + oldmemo + twomemo (peer_python.py, run with this interpreter);
  * the peer under test "X": the command line in $SIGNAL_PEER_CMD, else the Rust example binary
    <$CARGO_TARGET_DIR or <repo>/target>/debug/examples/omemo_peer. Without either the tests FAIL.
    A leading "python"/"python3" in $SIGNAL_PEER_CMD is replaced by this interpreter (the venv's),
    so SIGNAL_PEER_CMD="python tests/signal_interop/peer_python.py" validates the harness
    python<->python. Relative paths are relative to the repository root.

Environment: SIGNAL_PEER_TIMEOUT (seconds per request, default 30), SIGNAL_PEER_TRACE (number of
protocol lines per peer shown for a failing test, default 40).
"""

from __future__ import annotations

import base64
import collections
import json
import os
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PY_PEER = os.path.join(HERE, "peer_python.py")

OLD = "eu.siacs.conversations.axolotl"
TWO = "urn:xmpp:omemo:2"

REQUEST_TIMEOUT = float(os.environ.get("SIGNAL_PEER_TIMEOUT", "30"))
TRACE_LINES = int(os.environ.get("SIGNAL_PEER_TRACE", "40"))
MAX_AUTOMATIC_ROUNDS = 50


def rust_peer_path() -> str:
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    if not os.path.isabs(target):
        target = os.path.join(REPO, target)
    return os.path.join(target, "debug", "examples", "omemo_peer")


def peer_under_test_argv() -> List[str]:
    """argv of peer X; calls pytest.fail (not skip) when there is none."""
    cmd = os.environ.get("SIGNAL_PEER_CMD", "").strip()
    if cmd:
        argv = shlex.split(cmd)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        return argv
    path = rust_peer_path()
    if os.access(path, os.X_OK):
        return [path]
    pytest.fail(
        f"no peer under test: SIGNAL_PEER_CMD is unset and the Rust peer {path} does not exist. "
        "Build it (cargo build --workspace --all-targets builds crates/strait-signal/examples/"
        "omemo_peer.rs) or set SIGNAL_PEER_CMD, e.g. "
        "SIGNAL_PEER_CMD='python tests/signal_interop/peer_python.py' for the python<->python "
        "self-check.",
        pytrace=False,
    )


class PeerFailure(AssertionError):
    """The peer process misbehaved (died, timed out, broke the protocol)."""


class PeerError(Exception):
    """A well-formed error reply: {"ok": false, "error": {"reason", "message"}}."""

    def __init__(self, peer: str, cmd: str, reason: str, message: str) -> None:
        super().__init__(f"{peer}: {cmd} failed: {reason}: {message}")
        self.reason = reason
        self.message = message


class Peer:
    """One peer process speaking PROTOCOL.md on stdin/stdout; stderr goes to a file."""

    def __init__(self, label: str, argv: List[str], workdir: str) -> None:
        self.label = label
        self.argv = argv
        self.jid = ""
        self.device_id = 0
        self.public: Dict[str, Dict[str, str]] = {}
        self.implementation = "?"
        self.trace: Deque[str] = collections.deque(maxlen=TRACE_LINES)
        self.stderr_path = os.path.join(workdir, f"{label}.stderr")
        self._stderr = open(self.stderr_path, "wb")
        env = dict(os.environ)
        env.setdefault("PEER_LOG_LEVEL", "INFO")
        env.setdefault("RUST_BACKTRACE", "1")
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
            )
        except OSError as e:
            raise PeerFailure(f"{label}: cannot start {argv}: {e}") from e
        self._lines: "queue.Queue[Optional[bytes]]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0
        self.broken = False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def __repr__(self) -> str:
        return f"<{self.label} {self.jid}/{self.device_id}>"

    def request(self, cmd: str, timeout: float = REQUEST_TIMEOUT, **fields: Any) -> Dict[str, Any]:
        """Send one request and return the reply (ok or not). Bounded by `timeout`."""
        if self.broken:
            raise PeerFailure(f"{self.label}: not usable after an earlier protocol failure")
        try:
            return self._request(cmd, timeout, fields)
        except PeerFailure:
            self.broken = True
            raise

    def _request(self, cmd: str, timeout: float, fields: Dict[str, Any]) -> Dict[str, Any]:
        self._next_id += 1
        req = {"id": self._next_id, "cmd": cmd, **fields}
        line = json.dumps(req)
        self.trace.append("> " + line[:400])
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode("utf-8") + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise PeerFailure(f"{self.label}: cannot write request {cmd} ({e}); exit={self.proc.poll()}")
        deadline = time.monotonic() + timeout
        try:
            raw = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise PeerFailure(f"{self.label}: no reply to {cmd} within {timeout}s") from None
        if raw is None:
            try:
                rc = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                rc = None
            raise PeerFailure(f"{self.label}: stdout closed while waiting for {cmd} (exit status {rc})")
        self.trace.append("< " + raw.decode("utf-8", "replace").rstrip("\n")[:400])
        try:
            reply = json.loads(raw)
        except ValueError as e:
            raise PeerFailure(f"{self.label}: reply to {cmd} is not JSON: {raw[:200]!r}") from e
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise PeerFailure(f"{self.label}: reply to {cmd} lacks a boolean 'ok': {reply!r:.300}")
        if reply.get("id") != self._next_id:
            raise PeerFailure(f"{self.label}: reply id {reply.get('id')!r}, expected {self._next_id}")
        outbox = reply.get("outbox")
        if not isinstance(outbox, list):
            raise PeerFailure(f"{self.label}: reply to {cmd} lacks the 'outbox' array")
        for item in outbox:
            if not (isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("to_jid", "ns", "xml"))):
                raise PeerFailure(f"{self.label}: malformed outbox item {item!r:.300}")
        if not reply["ok"]:
            err = reply.get("error")
            if not (isinstance(err, dict) and isinstance(err.get("reason"), str) and err["reason"]):
                raise PeerFailure(f"{self.label}: error reply without error.reason: {reply!r:.300}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            if not self.broken:
                try:
                    self.request("shutdown", timeout=5)
                except PeerFailure:
                    pass
            try:
                self.proc.wait(timeout=0.1 if self.broken else 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # by pid: our own child
                self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        self._stderr.close()

    def stderr_tail(self, lines: int = 60) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                data = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(data[-lines:])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@dataclass
class Delivery:
    ok: bool
    plaintext: Optional[bytes]
    empty: bool
    reason: Optional[str]
    reply: Dict[str, Any]


class Net:
    """The "server" between the peers: routes automatic messages (outbox) by bare JID.

    Every reply's outbox is delivered right away to the addressee (decrypt), recursively; each such
    message must decrypt and be empty. This is what a client on a live connection would see.
    """

    def __init__(self) -> None:
        self.peers: Dict[str, Peer] = {}
        self.automatic_delivered = 0

    def add(self, peer: Peer) -> None:
        self.peers[peer.jid] = peer

    def call(self, peer: Peer, cmd: str, **fields: Any) -> Dict[str, Any]:
        """A request that must succeed; its outbox is routed."""
        reply = peer.request(cmd, **fields)
        self.route(peer, reply)
        if not reply["ok"]:
            err = reply["error"]
            raise PeerError(peer.label, cmd, err["reason"], str(err.get("message", "")))
        return reply

    def route(self, sender: Peer, reply: Dict[str, Any], depth: int = 0) -> None:
        if depth > MAX_AUTOMATIC_ROUNDS:
            raise PeerFailure("automatic messages ping-pong without end")
        for item in reply["outbox"]:
            target = self.peers.get(item["to_jid"])
            if target is None:
                raise PeerFailure(f"{sender.label} sent an automatic message to unknown {item['to_jid']}")
            check_encrypted(item["ns"], item["xml"], sender, target)
            r = target.request("decrypt", ns=item["ns"], from_jid=sender.jid, xml=item["xml"])
            if not r["ok"]:
                raise AssertionError(
                    f"{target.label} could not decrypt an automatic message from {sender.label}: "
                    f"{r['error']}"
                )
            if not r.get("empty") or r.get("plaintext_b64") is not None:
                raise AssertionError(f"automatic message from {sender.label} was not empty: {r!r:.300}")
            self.automatic_delivered += 1
            self.route(target, r, depth + 1)

    def introduce(self, ns: str, a: Peer, b: Peer) -> None:
        """Each peer learns the other's bundle and device list (what PEP would give it)."""
        for me, other in ((a, b), (b, a)):
            pub = other.public[ns]
            self.call(
                me,
                "add_device",
                ns=ns,
                jid=other.jid,
                device_id=other.device_id,
                bundle_xml=pub["bundle_xml"],
                device_list_xml=pub["device_list_xml"],
            )

    def encrypt(self, ns: str, sender: Peer, receiver: Peer, text: str) -> str:
        reply = self.call(sender, "encrypt", ns=ns, to_jid=receiver.jid, plaintext_b64=b64(text.encode("utf-8")))
        xml = reply.get("xml")
        assert isinstance(xml, str), f"{sender.label}: encrypt reply without xml"
        check_encrypted(ns, xml, sender, receiver, must_have_payload=True)
        return xml

    def deliver(self, ns: str, sender: Peer, receiver: Peer, xml: str) -> Delivery:
        reply = receiver.request("decrypt", ns=ns, from_jid=sender.jid, xml=xml)
        self.route(receiver, reply)
        if not reply["ok"]:
            return Delivery(False, None, False, reply["error"]["reason"], reply)
        pt = reply.get("plaintext_b64")
        return Delivery(True, None if pt is None else unb64(pt), bool(reply.get("empty")), None, reply)

    def receive(self, ns: str, sender: Peer, receiver: Peer, xml: str, text: str) -> None:
        d = self.deliver(ns, sender, receiver, xml)
        assert d.ok, f"{receiver.label} failed to decrypt a message from {sender.label}: {d.reply['error']}"
        assert not d.empty, f"{receiver.label} decrypted a message with payload as empty"
        assert d.plaintext == text.encode("utf-8"), (
            f"{receiver.label} decrypted {d.plaintext!r:.120} but {sender.label} sent {text!r:.120}"
        )

    def send(self, ns: str, sender: Peer, receiver: Peer, text: str) -> str:
        xml = self.encrypt(ns, sender, receiver, text)
        self.receive(ns, sender, receiver, xml, text)
        return xml


# ---- wire-format checks done by the driver itself (independent of both peers) -----------------


def _q(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


def key_element(ns: str, xml: str, receiver: Peer) -> ET.Element:
    root = ET.fromstring(xml)
    header = root.find(_q(ns, "header"))
    assert header is not None
    if ns == OLD:
        keys = [k for k in header.findall(_q(ns, "key")) if k.get("rid") == str(receiver.device_id)]
    else:
        keys = [
            k
            for ke in header.findall(_q(ns, "keys"))
            if ke.get("jid") == receiver.jid
            for k in ke.findall(_q(ns, "key"))
            if k.get("rid") == str(receiver.device_id)
        ]
    assert len(keys) == 1, f"expected one <key> for {receiver.jid}/{receiver.device_id}: {xml[:400]}"
    return keys[0]


def is_key_exchange(ns: str, xml: str, receiver: Peer) -> bool:
    k = key_element(ns, xml, receiver)
    flag = k.get("prekey" if ns == OLD else "kex", "false")
    assert flag in ("true", "1", "false", "0"), f"bad boolean {flag!r}"
    return flag in ("true", "1")


def check_encrypted(ns: str, xml: str, sender: Peer, receiver: Peer, must_have_payload: bool = False) -> None:
    """Structural checks of an <encrypted> element against XEP-0384 (the version for `ns`)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise AssertionError(f"{sender.label} produced malformed XML: {e}: {xml[:300]}") from e
    assert root.tag == _q(ns, "encrypted"), f"root is {root.tag}, expected {_q(ns, 'encrypted')}"
    header = root.find(_q(ns, "header"))
    assert header is not None, "no <header>"
    assert header.get("sid") == str(sender.device_id), f"sid {header.get('sid')} != {sender.device_id}"
    key = key_element(ns, xml, receiver)
    raw = unb64((key.text or "").strip())
    kex = is_key_exchange(ns, xml, receiver)
    if ns == OLD:
        iv = header.find(_q(ns, "iv"))
        assert iv is not None and len(unb64((iv.text or "").strip())) in (12, 16), "<iv> missing or not 12/16 bytes"
        assert raw[0] == 0x33, f"OMEMO 0.3 key does not start with version byte 0x33: {raw[:4].hex()}"
    else:
        assert header.find(_q(ns, "iv")) is None, "OMEMO 2 has no <iv>"
    if kex:
        fields = pb_fields(raw[1:] if ns == OLD else raw)
        pk_field = 1
        assert pk_field in fields, "key exchange without a pre key id"
    payload = root.find(_q(ns, "payload"))
    if must_have_payload:
        assert payload is not None and unb64((payload.text or "").strip()), "message without <payload>"


def pb_fields(data: bytes) -> Dict[int, List[Any]]:
    """Tiny protobuf reader (varint and length-delimited fields only)."""
    out: Dict[int, List[Any]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            assert i < len(data), "truncated protobuf"
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    while i < len(data):
        tag = varint()
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            out.setdefault(field, []).append(varint())
        elif wire == 2:
            n = varint()
            assert i + n <= len(data), "truncated protobuf field"
            out.setdefault(field, []).append(data[i : i + n])
            i += n
        else:
            raise AssertionError(f"unexpected protobuf wire type {wire}")
    return out


def key_exchange_info(ns: str, xml: str, receiver: Peer) -> Dict[str, Any]:
    """pre key id and base/ephemeral key of the key exchange addressed to `receiver`."""
    raw = unb64((key_element(ns, xml, receiver).text or "").strip())
    if ns == OLD:  # 0x33 ‖ PreKeySignalMessage{registrationId=5, preKeyId=1, signedPreKeyId=6, baseKey=2, ...}
        f = pb_fields(raw[1:])
        return {"pk_id": f[1][0], "spk_id": f.get(6, [None])[0], "base_key": f[2][0]}
    f = pb_fields(raw)  # OMEMOKeyExchange{pk_id=1, spk_id=2, ik=3, ek=4, message=5}
    return {"pk_id": f[1][0], "spk_id": f[2][0], "base_key": f[4][0]}


def bundle_prekey_ids(ns: str, bundle_xml: str) -> List[int]:
    root = ET.fromstring(bundle_xml)
    if ns == OLD:
        return [int(e.get("preKeyId", "-1")) for e in root.iter(_q(ns, "preKeyPublic"))]
    return [int(e.get("id", "-1")) for e in root.iter(_q(ns, "pk"))]


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


class PeerFactory:
    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.peers: List[Peer] = []

    def start(self, label: str, argv: List[str]) -> Peer:
        peer = Peer(label, argv, self.workdir)
        self.peers.append(peer)
        return peer

    def python(self, label: str) -> Peer:
        return self.start(label, [sys.executable, PY_PEER])

    def under_test(self, label: str) -> Peer:
        return self.start(label, peer_under_test_argv())


@pytest.fixture
def peer_factory(request):  # type: ignore[no-untyped-def]
    workdir = tempfile.mkdtemp(prefix="signal-interop-")
    factory = PeerFactory(workdir)
    yield factory
    failed = any(getattr(request.node, f"rep_{w}", None) is not None and getattr(request.node, f"rep_{w}").failed
                 for w in ("setup", "call"))
    for peer in factory.peers:
        peer.close()
    if failed:
        for peer in factory.peers:
            print(f"----- {peer.label} ({peer.implementation}; {' '.join(peer.argv)}) "
                  f"{peer.jid}/{peer.device_id}: last protocol lines -----")
            print("\n".join(peer.trace))
            print(f"----- {peer.label}: stderr (tail) -----")
            print(peer.stderr_tail())
    for peer in factory.peers:
        try:
            os.unlink(peer.stderr_path)
        except OSError:
            pass
    try:
        os.rmdir(workdir)
    except OSError:
        pass


def init_peer(net: Net, peer: Peer, jid: str) -> None:
    hello = net.call(peer, "hello")
    peer.implementation = str(hello.get("implementation", "?"))
    reply = net.call(peer, "init", jid=jid)
    dev = reply.get("device_id")
    assert isinstance(dev, int) and 1 <= dev <= 2**31 - 1, f"{peer.label}: bad device_id {dev!r}"
    peer.jid, peer.device_id = jid, dev
    nss = reply.get("namespaces")
    assert isinstance(nss, dict) and set(nss) >= {OLD, TWO}, f"{peer.label}: init must describe both namespaces"
    for ns in (OLD, TWO):
        pub = nss[ns]
        assert isinstance(pub.get("bundle_xml"), str) and isinstance(pub.get("device_list_xml"), str)
        peer.public[ns] = pub
    net.add(peer)


@pytest.fixture
def make_pair(peer_factory):  # type: ignore[no-untyped-def]
    """make_pair(direction) -> (net, initiator, responder); direction "py_to_x" or "x_to_py"."""

    def make(direction: str):  # type: ignore[no-untyped-def]
        assert direction in ("py_to_x", "x_to_py")
        peer_under_test_argv()  # fail fast, before starting anything, when there is no X
        if direction == "py_to_x":
            a = peer_factory.python("python")
            b = peer_factory.under_test("X")
        else:
            a = peer_factory.under_test("X")
            b = peer_factory.python("python")
        net = Net()
        init_peer(net, a, "alice@a.example")
        init_peer(net, b, "bob@b.example")
        return net, a, b

    return make
