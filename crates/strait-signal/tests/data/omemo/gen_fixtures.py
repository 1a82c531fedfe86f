"""Generate the python-produced fixtures in this directory (see README.md).

    python3 -m venv /tmp/omemo-venv
    /tmp/omemo-venv/bin/pip install omemo==2.1.0 'oldmemo[xml]==2.1.0' 'twomemo[xml]==2.1.0'
    /tmp/omemo-venv/bin/python gen_fixtures.py
"""
import asyncio
import hashlib
import os
import secrets
import sys
import xml.etree.ElementTree as ET

import xeddsa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyomemo_common import *  # noqa: E402,F401,F403
import pyomemo_common as C  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, text):
    with open(os.path.join(HERE, name), "w") as f:
        f.write(text)


def xml(elt):
    return ET.tostring(elt, encoding="unicode")


def safety_half(key33, ident):
    h = (0).to_bytes(2, "big") + key33 + ident
    for _ in range(5200):
        h = hashlib.sha512(h + key33).digest()
    return "".join("%05d" % (int.from_bytes(h[i:i + 5], "big") % 100000) for i in range(0, 30, 5))


async def main():
    sa, sb = C.MemStorage(), C.MemStorage()
    alice = await C.make_manager(C.ALICE, sa)
    bob = await C.make_manager(C.BOB, sb)
    for ns in (C.NS_OLD, C.NS_TWO):
        await alice.refresh_device_list(ns, C.BOB)
        await bob.refresh_device_list(ns, C.ALICE)

    bob_dev = (await bob.get_own_device_information())[0].device_id
    alice_dev = (await alice.get_own_device_information())[0].device_id
    write("py_ids.txt", f"alice {alice_dev}\nbob {bob_dev}\n")

    write("py_v03_devicelist.xml", xml(C.oldmemo.etree.serialize_device_list(C.DEVLISTS[(C.NS_OLD, C.BOB)])))
    write("py_v2_devicelist.xml", xml(C.twomemo.etree.serialize_device_list(C.DEVLISTS[(C.NS_TWO, C.BOB)])))
    # A labelled (signed label, XEP-0384 v0.9) OMEMO 2 device list needs a twomemo-only manager.
    carol = await C.make_manager("carol@example.org", C.MemStorage(), label="Carol's laptop \"<&>\"", only_two=True)
    write("py_v2_devicelist_labelled.xml",
          xml(C.twomemo.etree.serialize_device_list(C.DEVLISTS[(C.NS_TWO, "carol@example.org")])))
    await carol.shutdown()
    write("py_v03_bundle.xml", xml(C.oldmemo.etree.serialize_bundle(C.BUNDLES[(C.NS_OLD, C.BOB, bob_dev)])))
    write("py_v2_bundle.xml", xml(C.twomemo.etree.serialize_bundle(C.BUNDLES[(C.NS_TWO, C.BOB, bob_dev)])))

    for ns, et, name in ((C.NS_OLD, C.oldmemo.etree, "py_v03_encrypted.xml"),
                         (C.NS_TWO, C.twomemo.etree, "py_v2_encrypted.xml")):
        msgs, errs = await alice.encrypt(frozenset({C.BOB}), {ns: b"Hello, Bob!"}, [ns])
        assert not errs, errs
        write(name, xml(et.serialize_message(next(iter(msgs)))))
    # Bob's private state, so that check_rust_xml.py can decrypt our re-serialization of the
    # messages above (nothing was decrypted yet).
    C.dump_state(os.path.join(HERE, "py_state.json"), sa, sb)

    # Payload crypto vectors straight from the backends.
    old = C.oldmemo.Oldmemo(C.MemStorage())
    two = C.twomemo.Twomemo(C.MemStorage())
    lines = []
    for pt in (b"Hello, Bob!", b"", "ünïcødé ✓".encode() * 7):
        content, km = await old.encrypt_plaintext(pt)
        lines.append(f"v03 {km.key.hex()} {km.auth_tag.hex()} {content.initialization_vector.hex()} "
                     f"{content.ciphertext.hex() or '-'} {pt.hex() or '-'}")
        content, km = await two.encrypt_plaintext(pt)
        lines.append(f"v2 {km.key.hex()} {km.auth_tag.hex()} {content.ciphertext.hex()} {pt.hex() or '-'}")
    write("py_payloads.txt", "\n".join(lines) + "\n")

    # Fingerprints: python-omemo's format_identity_key on Ed25519 keys.
    lines = []
    for _ in range(4):
        ed = xeddsa.priv_to_ed25519_pub(secrets.token_bytes(32))
        lines.append(f"{ed.hex()} {' '.join(C.omemo.SessionManager.format_identity_key(ed))}")
    write("py_fingerprints.txt", "\n".join(lines) + "\n")

    # Safety numbers recomputed with hashlib from the published description.
    lines = []
    for ida, idb in (("alice@example.org", "bob@example.org"), ("+14155550100@strait.example", "zed@x.example")):
        ka = b"\x05" + secrets.token_bytes(32)
        kb = b"\x05" + secrets.token_bytes(32)
        ha, hb = safety_half(ka, ida.encode()), safety_half(kb, idb.encode())
        lines.append(f"{ka.hex()} {ida} {kb.hex()} {idb} {min(ha, hb) + max(ha, hb)}")
    write("py_safety.txt", "\n".join(lines) + "\n")

    await alice.shutdown()
    await bob.shutdown()


asyncio.run(main())
