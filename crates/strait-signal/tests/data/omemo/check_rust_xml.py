"""Black-box check of strait-signal's OMEMO XML and payload crypto against python-oldmemo /
python-twomemo 2.1.0. Run by tests/omemo_python_interop.rs when STRAIT_OMEMO_PYTHON names a
python with omemo==2.1.0, oldmemo[xml]==2.1.0, twomemo[xml]==2.1.0 installed:

    python check_rust_xml.py <dir with rust_* files written by the Rust test>

Exits non-zero (with a message) on the first mismatch; prints OK lines otherwise."""
import asyncio
import os
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyomemo_common as C  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1]


def load(path):
    with open(path) as f:
        return ET.fromstring(f.read())


def ours(name):
    return load(os.path.join(OUT, name))


def theirs(name):
    return load(os.path.join(HERE, name))


def ids():
    with open(os.path.join(HERE, "py_ids.txt")) as f:
        return {k: int(v) for k, v in (line.split() for line in f if line.strip())}


def ok(what):
    print("OK", what)


async def main():
    dev = ids()

    # Device lists.
    for mod, name in ((C.oldmemo.etree, "v03_devicelist.xml"), (C.twomemo.etree, "v2_devicelist.xml"),
                      (C.twomemo.etree, "v2_devicelist_labelled.xml")):
        a = mod.parse_device_list(ours("rust_" + name))
        b = mod.parse_device_list(theirs("py_" + name))
        norm = lambda d: {k: (None if v is None else (v.label, v.signature)) for k, v in d.items()}
        assert norm(a) == norm(b), (name, a, b)
        ok(name)
    # A synthetic device list with several devices (Rust-made).
    d = C.twomemo.etree.parse_device_list(ours("rust_v2_devicelist_synthetic.xml"))
    assert sorted(d) == [1, 4223, 2147483647], d
    d = C.oldmemo.etree.parse_device_list(ours("rust_v03_devicelist_synthetic.xml"))
    assert sorted(d) == [1, 4223, 2147483647], d
    ok("synthetic device lists")

    # Bundles: parse ours, re-serialize with python, compare with python's own serialization.
    for mod, name in ((C.oldmemo.etree, "v03_bundle.xml"), (C.twomemo.etree, "v2_bundle.xml")):
        a = mod.parse_bundle(ours("rust_" + name), C.BOB, dev["bob"])
        b = mod.parse_bundle(theirs("py_" + name), C.BOB, dev["bob"])
        sa = ET.tostring(mod.serialize_bundle(a))
        sb = ET.tostring(mod.serialize_bundle(b))
        assert sa == sb, name
        assert a.identity_key == b.identity_key
        ok(name)

    # Messages: restore Alice's and Bob's state from the fixture and let Bob decrypt our
    # re-serialization of Alice's messages.
    sa, sb = C.load_state(os.path.join(HERE, "py_state.json"))
    alice = await C.make_manager(C.ALICE, sa)
    bob = await C.make_manager(C.BOB, sb)
    for ns in (C.NS_OLD, C.NS_TWO):
        await bob.refresh_device_list(ns, C.ALICE)
    for ns, name in ((C.NS_OLD, "v03_encrypted.xml"), (C.NS_TWO, "v2_encrypted.xml")):
        elt = ours("rust_" + name)
        if ns == C.NS_OLD:
            msg = await C.oldmemo.etree.parse_message(elt, C.ALICE, C.BOB, bob)
        else:
            msg = C.twomemo.etree.parse_message(elt, C.ALICE)
        pt, _, _ = await bob.decrypt(msg)
        assert pt == b"Hello, Bob!", pt
        ok(name + " decrypted by python")
    # Synthetic OMEMO 2 empty message with two recipient groups: schema + parse only.
    msg = C.twomemo.etree.parse_message(ours("rust_v2_encrypted_synthetic.xml"), C.ALICE)
    assert msg.content.empty and len(msg.keys) == 3, msg
    ok("synthetic OMEMO 2 empty message")
    await alice.shutdown()
    await bob.shutdown()

    # Payload crypto made by Rust, decrypted by the python backends.
    old = C.oldmemo.Oldmemo(C.MemStorage())
    two = C.twomemo.Twomemo(C.MemStorage())
    with open(os.path.join(OUT, "rust_payloads.txt")) as f:
        for line in f:
            p = [None if x == "-" else bytes.fromhex(x) for x in line.split()[1:]]
            p = [b"" if x is None else x for x in p]
            if line.startswith("v03 "):
                km, iv, ct, pt = p
                content = C.oldmemo.oldmemo.ContentImpl(ct, iv)
                got = await old.decrypt_plaintext(content, C.oldmemo.oldmemo.PlainKeyMaterialImpl(km[:16], km[16:]))
            else:
                km, ct, pt = p
                content = C.twomemo.twomemo.ContentImpl(ct)
                got = await two.decrypt_plaintext(content, C.twomemo.twomemo.PlainKeyMaterialImpl(km[:32], km[32:]))
            assert got == pt, (line, got)
    ok("payloads decrypted by python")


asyncio.run(main())
