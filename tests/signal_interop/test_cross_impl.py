"""Cross-implementation tests: peer X (strait-signal's omemo_peer, or $SIGNAL_PEER_CMD) against
python-omemo + oldmemo + twomemo, both namespaces, both directions.

"python-to-X": the python peer is the active side (builds the session from X's bundle, resets it,
sends the file); "X-to-python": X is. Both sides send and receive in every test. See PROTOCOL.md
and conftest.py.
"""

from __future__ import annotations

import random
from typing import List, Optional, Tuple

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import (
    OLD,
    TWO,
    Net,
    Peer,
    b64,
    bundle_prekey_ids,
    is_key_exchange,
    key_exchange_info,
    unb64,
)

NAMESPACES = [pytest.param(OLD, id="oldmemo"), pytest.param(TWO, id="twomemo")]
DIRECTIONS = [pytest.param("py_to_x", id="python-to-X"), pytest.param("x_to_py", id="X-to-python")]

WORDS = ["hello", "Grüße", "日本語", "🎉", "<b>not markup</b>", "a & b", "'quoted' \"twice\"", "]]>", "tab\there",
         "line\nbreak", "x" * 50, "ÆØÅ", "Ω≈ç√∫", "emoji 👩‍💻", "&amp;", "  spaced  "]


def text_for(rng: random.Random, tag: str) -> str:
    """Non-empty UTF-8 text (no CR, no control characters other than \\t and \\n)."""
    n = rng.choice([1, 2, 3, 5, 8, 20, 60])
    body = " ".join(rng.choice(WORDS) for _ in range(n))
    if rng.random() < 0.05:
        body += " " + "long" * rng.randint(200, 800)
    return f"[{tag}] {body}"


def establish(net: Net, ns: str, a: Peer, b: Peer, rng: random.Random) -> None:
    """a builds a session from b's bundle; one message each way."""
    net.introduce(ns, a, b)
    net.send(ns, a, b, text_for(rng, "hello"))
    net.send(ns, b, a, text_for(rng, "hello back"))


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("ns", NAMESPACES)
def test_session_from_bundle(make_pair, ns, direction):
    net, a, b = make_pair(direction)
    net.introduce(ns, a, b)
    rng = random.Random(1)

    first = text_for(rng, "first")
    xml = net.encrypt(ns, a, b, first)
    assert is_key_exchange(ns, xml, b), f"{a.label}'s first message is not a key exchange: {xml[:300]}"
    kex = key_exchange_info(ns, xml, b)
    assert kex["pk_id"] in bundle_prekey_ids(ns, b.public[ns]["bundle_xml"]), "pre key id not from the bundle"
    net.receive(ns, a, b, xml, first)

    # the responder removed the used pre key from its published bundle and still offers enough
    fresh = net.call(b, "refresh_bundle", ns=ns)
    ids = bundle_prekey_ids(ns, fresh["bundle_xml"])
    assert kex["pk_id"] not in ids, f"{b.label} still publishes used pre key {kex['pk_id']}"
    assert len(ids) >= (20 if ns == OLD else 25), f"{b.label} publishes only {len(ids)} pre keys"

    # the responder never sends key exchanges; a reply makes the initiator stop sending them
    reply = text_for(rng, "reply")
    xml = net.encrypt(ns, b, a, reply)
    assert not is_key_exchange(ns, xml, a), f"{b.label} (responder) sent a key exchange"
    net.receive(ns, b, a, xml, reply)
    for i in range(3):
        t = text_for(rng, f"after reply {i}")
        xml = net.encrypt(ns, a, b, t)
        assert not is_key_exchange(ns, xml, b), f"{a.label} still sends key exchanges after the reply"
        net.receive(ns, a, b, xml, t)
        net.send(ns, b, a, text_for(rng, f"and back {i}"))


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("ns", NAMESPACES)
def test_conversation_200_messages(make_pair, ns, direction):
    net, a, b = make_pair(direction)
    net.introduce(ns, a, b)
    rng = random.Random(200)
    # runs of messages from alternating sides; two long runs (60) cross python-omemo's heartbeat
    # threshold (53 messages received without sending), whose empty message the other side must take
    runs = [3, 2, 1, 4, 5, 2, 60, 60, 1, 1, 3, 2, 2, 3, 4, 1, 5, 2, 3, 4, 2, 3, 5, 4, 3, 2, 4, 3, 2, 5]
    assert sum(runs) >= 200
    total, sent = 200, {a.label: 0, b.label: 0}
    n = 0
    for r, run in enumerate(runs):
        sender, receiver = (a, b) if r % 2 == 0 else (b, a)
        run = min(run, total - n)
        if run == 0:
            break
        batched = r % 3 == 1  # every third run is encrypted completely before any delivery
        pending: List[Tuple[str, str]] = []
        for _ in range(run):
            t = text_for(rng, f"#{n} {sender.label}->{receiver.label}")
            n += 1
            sent[sender.label] += 1
            if batched:
                pending.append((net.encrypt(ns, sender, receiver, t), t))
            else:
                net.send(ns, sender, receiver, t)
        for xml, t in pending:
            net.receive(ns, sender, receiver, xml, t)
    assert n == total
    assert min(sent.values()) >= 50, sent


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("ns", NAMESPACES)
def test_out_of_order(make_pair, ns, direction):
    net, a, b = make_pair(direction)
    rng = random.Random(7)
    establish(net, ns, a, b, rng)

    # one chain delivered in reverse
    batch = [(net.encrypt(ns, a, b, t), t) for t in (text_for(rng, f"rev {i}") for i in range(10))]
    for xml, t in reversed(batch):
        net.receive(ns, a, b, xml, t)

    # two chains of the sender (a DH ratchet step between them), the newer delivered first, shuffled
    old_chain = [(net.encrypt(ns, a, b, t), t) for t in (text_for(rng, f"old chain {i}") for i in range(5))]
    net.send(ns, b, a, text_for(rng, "ratchet step"))
    new_chain = [(net.encrypt(ns, a, b, t), t) for t in (text_for(rng, f"new chain {i}") for i in range(5))]
    rng.shuffle(old_chain)
    rng.shuffle(new_chain)
    for xml, t in new_chain + old_chain:
        net.receive(ns, a, b, xml, t)

    # the other direction, shuffled
    batch = [(net.encrypt(ns, b, a, t), t) for t in (text_for(rng, f"shuffled {i}") for i in range(8))]
    rng.shuffle(batch)
    for xml, t in batch:
        net.receive(ns, b, a, xml, t)

    # interleaved: replies from both sides crossing in flight
    x1 = [(net.encrypt(ns, a, b, t), t) for t in (text_for(rng, f"cross a {i}") for i in range(3))]
    y1 = [(net.encrypt(ns, b, a, t), t) for t in (text_for(rng, f"cross b {i}") for i in range(3))]
    for (xa, ta), (xb, tb) in zip(reversed(x1), y1):
        net.receive(ns, a, b, xa, ta)
        net.receive(ns, b, a, xb, tb)

    net.send(ns, a, b, text_for(rng, "final a"))
    net.send(ns, b, a, text_for(rng, "final b"))


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("ns", NAMESPACES)
def test_dropped_messages(make_pair, ns, direction):
    net, a, b = make_pair(direction)
    net.introduce(ns, a, b)
    rng = random.Random(13)

    # the very first key exchange message is lost: the initiator keeps sending key exchanges
    lost = net.encrypt(ns, a, b, text_for(rng, "lost first"))
    assert is_key_exchange(ns, lost, b)
    second = text_for(rng, "second")
    xml = net.encrypt(ns, a, b, second)
    assert is_key_exchange(ns, xml, b), f"{a.label} stopped sending key exchanges before any reply"
    assert key_exchange_info(ns, xml, b) == key_exchange_info(ns, lost, b), "repeated key exchange differs"
    net.receive(ns, a, b, xml, second)
    net.send(ns, b, a, text_for(rng, "got your second"))

    # gaps inside a chain
    batch = [(net.encrypt(ns, a, b, t), t) for t in (text_for(rng, f"gappy {i}") for i in range(6))]
    for xml, t in batch[1::2]:
        net.receive(ns, a, b, xml, t)
    replies = [(net.encrypt(ns, b, a, t), t) for t in (text_for(rng, f"reply {i}") for i in range(2))]
    net.receive(ns, b, a, *replies[1])
    for i in range(3):
        net.send(ns, a, b, text_for(rng, f"after gaps {i}"))

    # a whole sending chain lost, then the conversation goes on in both directions
    for i in range(3):
        net.encrypt(ns, b, a, text_for(rng, f"whole chain lost {i}"))
    net.send(ns, a, b, text_for(rng, "still there?"))
    for i in range(2):
        net.send(ns, b, a, text_for(rng, f"yes {i}"))

    # many skipped keys in one go (well under every implementation's limit)
    for i in range(40):
        net.encrypt(ns, a, b, text_for(rng, f"dropped {i}"))
    net.send(ns, a, b, text_for(rng, "after 40 dropped"))
    net.send(ns, b, a, text_for(rng, "ok"))


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("ns", NAMESPACES)
def test_duplicate_rejected(make_pair, ns, direction):
    net, a, b = make_pair(direction)
    net.introduce(ns, a, b)
    rng = random.Random(21)

    def assert_duplicate(sender: Peer, receiver: Peer, xml: str, what: str, reasons=("duplicate",)) -> None:
        d = net.deliver(ns, sender, receiver, xml)
        assert not d.ok, f"{receiver.label} accepted a duplicate ({what}): {d.plaintext!r:.100}"
        assert d.reason in reasons, f"{receiver.label}: duplicate ({what}) rejected with {d.reason!r}, want {reasons}"

    # duplicate of the session-building key exchange message
    first = text_for(rng, "first")
    kx = net.send(ns, a, b, first)
    assert_duplicate(a, b, kx, "key exchange message")
    net.send(ns, b, a, text_for(rng, "reply"))

    # duplicates in the current chain, in both directions
    m2, m3 = (text_for(rng, "m2"), text_for(rng, "m3"))
    x2, x3 = net.encrypt(ns, a, b, m2), net.encrypt(ns, a, b, m3)
    net.receive(ns, a, b, x2, m2)
    net.receive(ns, a, b, x3, m3)
    assert_duplicate(a, b, x2, "older message of the current chain")
    assert_duplicate(a, b, x3, "newest message")
    r = text_for(rng, "reply 2")
    xr = net.send(ns, b, a, r)
    assert_duplicate(b, a, xr, "reply")

    # duplicate of a message whose key came from the skipped-keys store
    m5, m6 = text_for(rng, "m5"), text_for(rng, "m6")
    x5, x6 = net.encrypt(ns, a, b, m5), net.encrypt(ns, a, b, m6)
    net.receive(ns, a, b, x6, m6)
    net.receive(ns, a, b, x5, m5)
    assert_duplicate(a, b, x5, "message decrypted with a skipped key")

    # after a DH ratchet step, a message of an old chain comes again. libsignal keeps old receiver
    # chains and says "duplicate"; python-doubleratchet tries a new ratchet step and fails the MAC.
    net.send(ns, b, a, text_for(rng, "step"))
    net.send(ns, a, b, text_for(rng, "new chain"))
    assert_duplicate(a, b, x6, "message of an older chain", reasons=("duplicate", "bad_mac", "decryption_failed"))

    # nothing broke
    for i in range(3):
        net.send(ns, a, b, text_for(rng, f"later a {i}"))
        net.send(ns, b, a, text_for(rng, f"later b {i}"))


def replace_session(
    net: Net, ns: str, active: Peer, passive: Peer, rng: random.Random, used_pk: Optional[int]
) -> int:
    """`active` forgets its session with `passive` and builds a new one from the current bundle."""
    fresh = net.call(passive, "refresh_bundle", ns=ns)
    if used_pk is not None:
        assert used_pk not in bundle_prekey_ids(ns, fresh["bundle_xml"]), "used pre key still published"
    net.call(active, "add_device", ns=ns, jid=passive.jid, device_id=passive.device_id,
             bundle_xml=fresh["bundle_xml"], device_list_xml=fresh["device_list_xml"])
    dropped = net.call(active, "reset_session", ns=ns, jid=passive.jid)
    assert dropped.get("sessions_dropped", 0) >= 1, f"{active.label} had no session to drop: {dropped}"

    t = text_for(rng, f"new session from {active.label}")
    xml = net.encrypt(ns, active, passive, t)
    assert is_key_exchange(ns, xml, passive), f"{active.label}: first message of the new session is no key exchange"
    info = key_exchange_info(ns, xml, passive)
    assert info["pk_id"] in bundle_prekey_ids(ns, fresh["bundle_xml"])
    net.receive(ns, active, passive, xml, t)  # replaces the existing session
    t = text_for(rng, f"reply on the new session from {passive.label}")
    xml = net.encrypt(ns, passive, active, t)
    assert not is_key_exchange(ns, xml, active)
    net.receive(ns, passive, active, xml, t)
    for i in range(4):
        t = text_for(rng, f"continues {i}")
        xml = net.encrypt(ns, active, passive, t)
        assert not is_key_exchange(ns, xml, passive)
        net.receive(ns, active, passive, xml, t)
        net.send(ns, passive, active, text_for(rng, f"continues back {i}"))
    return info["pk_id"]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("ns", NAMESPACES)
def test_session_replaced_by_new_prekey_message(make_pair, ns, direction):
    net, a, b = make_pair(direction)
    net.introduce(ns, a, b)
    rng = random.Random(34)
    xml = net.encrypt(ns, a, b, "original session")
    pk = key_exchange_info(ns, xml, b)["pk_id"]
    net.receive(ns, a, b, xml, "original session")
    for i in range(3):
        net.send(ns, b, a, text_for(rng, f"old b {i}"))
        net.send(ns, a, b, text_for(rng, f"old a {i}"))

    # the active side (the initiator) replaces the session ...
    pk2 = replace_session(net, ns, a, b, rng, pk)
    assert pk2 != pk
    # ... and then the other side replaces it again, from its side (initiator roles swap)
    replace_session(net, ns, b, a, rng, None)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_file_encrypted_by_one_decrypted_by_other(make_pair, direction):
    net, a, b = make_pair(direction)
    rng = random.Random(55)
    for size in (0, 1, 1000, 300_000):
        data = rng.randbytes(size)
        https_url = f"https://upload.example/{size}/f%C3%BCr%20dich.bin"
        r = net.call(a, "encrypt_file", https_url=https_url, plaintext_b64=b64(data))
        url, ct = r["url"], unb64(r["ciphertext_b64"])
        prefix, _, frag = url.partition("#")
        assert prefix == "aesgcm" + https_url[len("https"):], f"URL {url!r} does not keep the https URL"
        assert len(frag) == 88 and frag == frag.lower() and all(c in "0123456789abcdef" for c in frag), frag
        assert len(ct) == size + 16, "ciphertext must be the data plus a 16-byte tag"
        iv, key = bytes.fromhex(frag[:24]), bytes.fromhex(frag[24:])
        assert AESGCM(key).decrypt(iv, ct, None) == data, "not AES-256-GCM per XEP-0454"
        r = net.call(b, "decrypt_file", url=url, ciphertext_b64=b64(ct))
        assert unb64(r["plaintext_b64"]) == data

        if size:
            bad = bytearray(ct)
            bad[rng.randrange(len(bad))] ^= 0x01
            r = b.request("decrypt_file", url=url, ciphertext_b64=b64(bytes(bad)))
            assert not r["ok"] and r["error"]["reason"] == "decryption_failed", r

    # the other way round, and a legacy 16-byte IV (96 hex digits) made by the driver
    data = rng.randbytes(5000)
    r = net.call(b, "encrypt_file", https_url="https://h.example/x", plaintext_b64=b64(data))
    assert unb64(net.call(a, "decrypt_file", url=r["url"], ciphertext_b64=r["ciphertext_b64"])["plaintext_b64"]) == data
    iv, key = rng.randbytes(16), rng.randbytes(32)
    ct = AESGCM(key).encrypt(iv, data, None)
    for peer in (a, b):
        r = net.call(peer, "decrypt_file", url=f"aesgcm://h.example/legacy#{iv.hex()}{key.hex()}",
                     ciphertext_b64=b64(ct))
        assert unb64(r["plaintext_b64"]) == data, f"{peer.label} failed the legacy 16-byte IV"
