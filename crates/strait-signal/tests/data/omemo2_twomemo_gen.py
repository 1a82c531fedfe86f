"""Generates tests/data/omemo2_twomemo_kat.txt with python-twomemo 2.1.0 (MIT) as the peer.

Run (scratch venv: pip install omemo==2.1.0 'twomemo[xml]==2.1.0'), from crates/strait-signal:

  export CARGO_TARGET_DIR=...; W=/tmp/omemo2-kat; mkdir -p $W
  OMEMO2_KAT_DIR=$W cargo test --test omemo2_twomemo_kat -- --ignored gen_rust_bob_bundle
  python tests/data/omemo2_twomemo_gen.py $W phase1
  OMEMO2_KAT_DIR=$W cargo test --test omemo2_twomemo_kat -- --ignored gen_rust_outputs
  python tests/data/omemo2_twomemo_gen.py $W phase2     # verifies Rust output, writes the KAT

Phase 1: a python Bob (random keys) publishes its bundle; a python Alice builds a session
(build_session_active) against the Rust Bob bundle and sends two OMEMOKeyExchange elements.
Phase 2: python Bob decrypts the Rust Alice key exchanges (build_session_passive, then the
resent header on the existing session) and answers with an empty message and a key; python
Alice decrypts the Rust Bob answers. Every python-side check is an assert; the KAT file pins
the python bytes plus the Rust bytes python accepted.
"""
import asyncio, json, sys
import omemo, twomemo, x3dh
from omemo.storage import Just, Nothing
from twomemo.twomemo import (BundleImpl, EncryptedKeyMaterialImpl, KeyExchangeImpl,
                             PlainKeyMaterialImpl)

W = sys.argv[1]
K = lambda a, b: PlainKeyMaterialImpl(bytes([a]) * 32, bytes([b]) * 16)


class FileStorage(omemo.Storage):
    def __init__(self, path):
        super().__init__(False)
        self.path = path
        try:
            self.d = json.load(open(path))
        except FileNotFoundError:
            self.d = {}

    async def _load(self, k):
        return Just(self.d[k]) if k in self.d else Nothing()

    async def _store(self, k, v):
        self.d[k] = v
        json.dump(self.d, open(self.path, "w"))

    async def _delete(self, k):
        self.d.pop(k, None)
        json.dump(self.d, open(self.path, "w"))


def read_kv(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#"):
            k, v = line.split(None, 1)
            out[k] = v
    return out


async def phase1():
    bob = twomemo.Twomemo(FileStorage(f"{W}/py_bob.json"))
    await bob.generate_pre_keys(3)
    b = await bob.get_bundle("bob@py.example", 2002)
    out = {
        "py_bob_ik": b.identity_key.hex(),
        "py_bob_spk_id": str(b.signed_pre_key_id),
        "py_bob_spk": b.bundle.signed_pre_key.hex(),
        "py_bob_spks": b.bundle.signed_pre_key_sig.hex(),
    }
    pk, pk_id = sorted(b.pre_key_ids.items(), key=lambda kv: kv[1])[0]
    out["py_bob_pk_id"], out["py_bob_pk"] = str(pk_id), pk.hex()

    rb = read_kv(f"{W}/rust_bob.txt")
    alice = twomemo.Twomemo(FileStorage(f"{W}/py_alice.json"))
    pre_keys = {bytes.fromhex(rb["pk_" + i]): int(i) for i in rb["pk_ids"].split(",")}
    bundle = BundleImpl("bob@rust.example", 1001, x3dh.Bundle(
        bytes.fromhex(rb["ik"]), bytes.fromhex(rb["spk"]), bytes.fromhex(rb["spks"]),
        frozenset(pre_keys)), int(rb["spk_id"]), pre_keys)
    session, ekm = await alice.build_session_active("bob@rust.example", 1001, bundle, K(0x11, 0x12))
    out["py_alice_kex1"] = session.key_exchange.serialize(ekm.serialize()).hex()
    ekm2 = await alice.encrypt_key_material(session, K(0x13, 0x14))
    out["py_alice_kex2"] = session.key_exchange.serialize(ekm2.serialize()).hex()
    out["py_alice_ik"] = session.key_exchange.identity_key.hex()
    await alice.store_session(session)
    with open(f"{W}/py_phase1.txt", "w") as f:
        for k, v in out.items():
            f.write(f"{k} {v}\n")


async def phase2():
    p1 = read_kv(f"{W}/py_phase1.txt")
    r = read_kv(f"{W}/rust_out.txt")
    bob = twomemo.Twomemo(FileStorage(f"{W}/py_bob.json"))
    # Rust Alice -> python Bob: first key exchange builds the session
    kex, auth = KeyExchangeImpl.parse(bytes.fromhex(r["rust_alice_kex1"]))
    ekm = EncryptedKeyMaterialImpl.parse(auth, "alice@rust.example", 1)
    session, pkm = await bob.build_session_passive("alice@rust.example", 1, kex, ekm)
    assert (pkm.key, pkm.auth_tag) == (b"\x31" * 32, b"\x32" * 16), pkm
    # the resent header builds the same session: decrypt on it
    kex2, auth2 = KeyExchangeImpl.parse(bytes.fromhex(r["rust_alice_kex2"]))
    assert session.key_exchange.builds_same_session(kex2)
    pkm2 = await bob.decrypt_key_material(
        session, EncryptedKeyMaterialImpl.parse(auth2, "alice@rust.example", 1))
    assert (pkm2.key, pkm2.auth_tag) == (b"\x33" * 32, b"\x34" * 16), pkm2
    e1 = await bob.encrypt_key_material(session, PlainKeyMaterialImpl.make_empty())
    e2 = await bob.encrypt_key_material(session, K(0x35, 0x36))
    # a late Rust Alice message after confirmation (plain OMEMOAuthenticatedMessage) is in phase 2 of Rust
    # Rust Bob -> python Alice
    alice = twomemo.Twomemo(FileStorage(f"{W}/py_alice.json"))
    asess = await alice.load_session("bob@rust.example", 1001)
    got = []
    for name in ("rust_bob_reply1", "rust_bob_reply2"):
        pkm = await alice.decrypt_key_material(
            asess, EncryptedKeyMaterialImpl.parse(bytes.fromhex(r[name]), "bob@rust.example", 1001))
        got.append(pkm.key + pkm.auth_tag)
    assert got == [b"\x00" * 32, b"\x15" * 32 + b"\x16" * 16], got
    out = dict(p1)
    out.update({k: v for k, v in r.items()})
    out["py_bob_reply1"] = e1.serialize().hex()
    out["py_bob_reply2"] = e2.serialize().hex()
    with open(sys.argv[3] if len(sys.argv) > 3 else f"{W}/omemo2_twomemo_kat.txt", "w") as f:
        f.write("# python-twomemo 2.1.0 cross-check, generated by tests/data/omemo2_twomemo_gen.py\n")
        f.write("# py_*: bytes produced by python-twomemo; rust_*: bytes produced by strait-signal and\n")
        f.write("# accepted (decrypted, plaintext asserted) by python-twomemo 2.1.0.\n")
        for k, v in out.items():
            f.write(f"{k} {v}\n")
    print("phase2 OK: python accepted all Rust messages")


asyncio.run({"phase1": phase1, "phase2": phase2}[sys.argv[2]]())
