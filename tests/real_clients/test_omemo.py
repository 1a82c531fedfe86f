"""OMEMO end-to-end encryption through strait with slixmpp-omemo (real clients).

Two fresh accounts become mutual contacts, then log in with the slixmpp-omemo plugin, which
generates keys and publishes device lists and bundles over PEP (publish-options, max_items=max,
several bundle items per node). They exchange encrypted messages both ways in each protocol
version: OMEMO 0.3 (`eu.siacs.conversations.axolotl`, through the plugin's own
encrypt_message/decrypt_message) and OMEMO 2 (`urn:xmpp:omemo:2`, through the plugin's session
manager with a minimal XEP-0420 envelope). Finally the server's data directory is searched: no
plaintext of any encrypted message may be there, while a plain marker message stored for an
offline user is (positive control).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import sys
import xml.etree.ElementTree as ET
from typing import Any, Dict, FrozenSet, List, Optional

import pytest

oldmemo = pytest.importorskip("oldmemo")
twomemo = pytest.importorskip("twomemo")
slixmpp_omemo = pytest.importorskip("slixmpp_omemo")

import oldmemo.etree  # noqa: E402
import twomemo.etree  # noqa: E402
from omemo.storage import Just, Maybe, Nothing, Storage  # noqa: E402
from omemo.types import DeviceInformation, JSONType  # noqa: E402
from slixmpp import JID  # noqa: E402
from slixmpp.plugins import register_plugin  # noqa: E402  # type: ignore[attr-defined]
from slixmpp_omemo import XEP_0384  # noqa: E402

from xmpp_helpers import Clients, run, within  # noqa: E402

NS_OLD = "eu.siacs.conversations.axolotl"
NS_TWO = "urn:xmpp:omemo:2"
NS_SCE = "urn:xmpp:sce:1"
FALLBACK = "This message is OMEMO encrypted (strait test)."
OMEMO_TIMEOUT = 60.0


class DictStorage(Storage):
    """python-omemo storage kept in a dict (one per simulated device)."""

    def __init__(self) -> None:
        super().__init__()
        self.data: Dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class TestOMEMO(XEP_0384):  # pylint: disable=invalid-name
    """The plugin with per-client storage and blind trust before verification."""

    __test__ = False  # not a pytest test class
    default_config = {"fallback_message": FALLBACK, "storage_obj": None}

    @property
    def storage(self) -> Storage:
        return self.storage_obj

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(self, blindly_trusted: FrozenSet[DeviceInformation],
                                       identifier: Optional[str]) -> None:
        pass

    async def _prompt_manual_trust(self, manually_trusted: FrozenSet[DeviceInformation],
                                   identifier: Optional[str]) -> None:
        raise AssertionError(f"unexpected manual trust prompt for {manually_trusted}")


TestOMEMO.name = "xep_0384"
register_plugin(TestOMEMO)


def tok(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


async def omemo_client(cs: Clients, account, label: str):
    """A logged-in client whose OMEMO keys are generated and published."""
    c = cs.new(account, label=label, resource=f"omemo-{label}")
    for p in ("xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0280", "xep_0334", "xep_0380"):
        c.register_plugin(p)
    c.register_plugin("xep_0384", {"storage_obj": DictStorage()}, module=sys.modules[__name__])
    await c.login()
    await within(c.plugin["xep_0384"].get_session_manager(),
                 f"{label}: OMEMO key generation and publication", OMEMO_TIMEOUT)
    return c


async def befriend(ca, cb) -> None:
    """Mutual presence subscription, handshake by hand."""
    a, b = ca.boundjid.bare, cb.boundjid.bare

    def sub_of(c, contact: str):
        return lambda: c.client_roster.has_jid(contact) and \
            c.client_roster[contact]["subscription"] == "both"

    def pres(frm: str, ptype: str):
        return lambda p: p["from"].bare == frm and p["type"] == ptype

    ca.send_presence(pto=b, ptype="subscribe")
    await cb.wait_presence(pres(a, "subscribe"), "A's subscribe at B")
    cb.send_presence(pto=a, ptype="subscribed")
    cb.send_presence(pto=a, ptype="subscribe")
    await ca.wait_presence(pres(b, "subscribe"), "B's subscribe at A")
    ca.send_presence(pto=b, ptype="subscribed")
    await ca.wait_cond(sub_of(ca, b), "A's roster: B both")
    await cb.wait_cond(sub_of(cb, a), "B's roster: A both")


async def knows_device(receiver, sender) -> bool:
    sm = await receiver.plugin["xep_0384"].get_session_manager()
    own = (await (await sender.plugin["xep_0384"].get_session_manager())
           .get_own_device_information())[0]
    devs = await sm.get_device_information(sender.boundjid.bare)
    return any(d.device_id == own.device_id and d.identity_key == own.identity_key for d in devs)


def sce_envelope(body: str, to: str, frm: str) -> bytes:
    rpad = secrets.token_urlsafe(secrets.randbelow(32) + 1)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    env = ET.Element(f"{{{NS_SCE}}}envelope")
    content = ET.SubElement(env, f"{{{NS_SCE}}}content")
    ET.SubElement(content, "{jabber:client}body").text = body
    ET.SubElement(env, f"{{{NS_SCE}}}rpad").text = rpad
    ET.SubElement(env, f"{{{NS_SCE}}}time", stamp=stamp)
    ET.SubElement(env, f"{{{NS_SCE}}}to", jid=to)
    ET.SubElement(env, f"{{{NS_SCE}}}from", jid=frm)
    return ET.tostring(env)


def sce_body(data: bytes) -> Optional[str]:
    env = ET.fromstring(data)
    body = env.find(f"{{{NS_SCE}}}content/{{jabber:client}}body")
    return body.text if body is not None else None


async def send_encrypted(sender, to: str, ns: str, secret: str) -> str:
    xep = sender.plugin["xep_0384"]
    mid = tok("omemo")
    if ns == NS_OLD:
        msg = sender.make_message(mto=to, mtype="chat")
        msg["id"] = mid
        msg["body"] = secret
        enc, errors = await xep.encrypt_message(msg, JID(to))
        assert enc is not None, "encrypt_message produced nothing"
        assert not errors, f"encryption errors: {errors}"
    else:
        sm = await xep.get_session_manager()
        env = sce_envelope(secret, to, sender.boundjid.full)
        messages, errors = await sm.encrypt(frozenset({to}), {NS_TWO: env},
                                            backend_priority_order=[NS_TWO])
        assert not errors, f"encryption errors: {errors}"
        enc = sender.make_message(mto=to, mtype="chat")
        enc["body"] = FALLBACK
        for m in messages:
            assert m.namespace == NS_TWO, m.namespace
            enc.append(twomemo.etree.serialize_message(m))
        enc.enable("store")
    enc["id"] = mid
    assert enc.xml.find(f"{{{ns}}}encrypted") is not None, f"no {ns} <encrypted/>: {enc}"
    assert secret not in str(enc), "plaintext in the outgoing stanza"
    enc.send()
    return mid


async def receive_encrypted(receiver, sender, mid: str, ns: str, secret: str) -> None:
    m = await receiver.wait_message(lambda m: m["id"] == mid, f"encrypted message {mid}")
    assert secret not in str(m), "plaintext in the delivered stanza"
    assert m.xml.find(f"{{{ns}}}encrypted") is not None, f"<encrypted/> lost on the way: {m}"
    assert m["from"].bare == sender.boundjid.bare, f"from={m['from']}"
    xep = receiver.plugin["xep_0384"]
    if ns == NS_OLD:
        dec, dev = await xep.decrypt_message(m)
        body = dec["body"]
    else:
        sm = await xep.get_session_manager()
        elt = m.xml.find(f"{{{NS_TWO}}}encrypted")
        plaintext, dev, _ = await sm.decrypt(twomemo.etree.parse_message(elt, m["from"].bare))
        assert plaintext is not None, "no payload in the OMEMO 2 message"
        body = sce_body(plaintext)
    assert body == secret, f"decrypted {body!r}, sent {secret!r}"
    assert dev.bare_jid == sender.boundjid.bare, f"sender device of {dev.bare_jid}"


def files_containing(root: str, needles: List[str]) -> Dict[str, List[str]]:
    """needle -> files under root whose bytes contain it (the database, its WAL, anything)."""
    hits: Dict[str, List[str]] = {n: [] for n in needles}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            for n in needles:
                if n.encode() in data:
                    hits[n].append(path)
    return hits


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_omemo_both_namespaces_through_strait(server, new_account):
    if server.workdir is None:
        pytest.skip("needs the private strait server (its data directory is searched)")
    data_dir = os.path.join(server.workdir, "data")
    a, b, off = new_account(prefix="oa"), new_account(prefix="ob"), new_account(prefix="off")
    secrets_sent: List[str] = []
    ids_offline: List[str] = []

    async def body():
        async with Clients(server) as cs:
            pa = await cs.online(a, label="A-prep")
            pb = await cs.online(b, label="B-prep")
            await befriend(pa, pb)
            await asyncio.gather(pa.logout(), pb.logout())

            ca = await omemo_client(cs, a, "A")
            cb = await omemo_client(cs, b, "B")
            # Both device lists reach the contact by PEP +notify (caps) or on fetch.
            loop = asyncio.get_running_loop()
            end = loop.time() + 20
            while not (await knows_device(ca, cb) and await knows_device(cb, ca)):
                assert loop.time() < end, "device lists were not learned through PEP"
                await asyncio.sleep(0.3)
            # What the plugin published, as the server keeps it.
            for node in ("eu.siacs.conversations.axolotl.devicelist", "urn:xmpp:omemo:2:devices",
                         "urn:xmpp:omemo:2:bundles"):
                iq = await ca.plugin["xep_0060"].get_node_config(JID(a.jid), node, timeout=10)
                vals = iq["pubsub_owner"]["configure"]["form"].get_values()
                assert vals.get("pubsub#access_model") == "open", f"{node}: {vals}"
            sm_a = await ca.plugin["xep_0384"].get_session_manager()
            own_a = (await sm_a.get_own_device_information())[0]
            iq = await cb.plugin["xep_0060"].get_items(
                JID(a.jid), "urn:xmpp:omemo:2:bundles", item_ids=[str(own_a.device_id)], timeout=10)
            assert len(list(iq["pubsub"]["items"])) == 1, f"bundle of A by id: {iq}"

            for ns in (NS_OLD, NS_TWO):
                for snd, rcv, to in ((ca, cb, b.jid), (cb, ca, a.jid), (ca, cb, b.jid)):
                    secret = tok("SECRET")
                    secrets_sent.append(secret)
                    mid = await send_encrypted(snd, to, ns, secret)
                    await receive_encrypted(rcv, snd, mid, ns, secret)

            # An encrypted message to B while B is offline is stored as ciphertext.
            await cb.logout()
            await ca.sync()
            secret = tok("SECRET-offline")
            secrets_sent.append(secret)
            ids_offline.append(await send_encrypted(ca, b.jid, NS_OLD, secret))
            # Positive control: a plain message to an offline user is stored as is.
            marker = tok("PLAIN-MARKER")
            m = ca.make_message(mto=off.jid, mbody=marker, mtype="chat")
            marker_id = tok("plain")
            m["id"] = marker_id
            m.send()
            await ca.sync()
            ids_offline.append(marker_id)
            return marker

    marker = run(body(), timeout=3 * OMEMO_TIMEOUT)
    hits = files_containing(data_dir, [marker] + ids_offline + secrets_sent)
    assert hits[marker], f"positive control: plain marker not found under {data_dir}"
    for mid in ids_offline:
        assert hits[mid], f"offline message {mid} not found under {data_dir}"
    leaked = {s: f for s, f in hits.items() if s in secrets_sent and f}
    assert not leaked, f"plaintext of encrypted messages on the server's disk: {leaked}"
