"""OMEMO clients for the real-client tests: slixmpp with the slixmpp-omemo plugin (python-omemo,
oldmemo and twomemo), each simulated device with its own key storage.

Test modules must `pytest.importorskip("oldmemo")`, `("twomemo")` and `("slixmpp_omemo")` before
importing this module, so that a missing OMEMO stack skips the tests instead of erroring.

Two protocol versions are driven:
- OMEMO 0.3 (`eu.siacs.conversations.axolotl`) through the plugin's own encrypt_message /
  decrypt_message (the body is encrypted);
- OMEMO 2 (`urn:xmpp:omemo:2`) through the plugin's session manager with a minimal XEP-0420
  envelope (slixmpp-omemo 2.x has no SCE support of its own).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import sys
import xml.etree.ElementTree as ET
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Tuple

import twomemo.etree
from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType
from slixmpp import JID
from slixmpp.plugins import register_plugin  # type: ignore[attr-defined]
from slixmpp_omemo import XEP_0384

from xmpp_helpers import Clients, within

NS_OLD = "eu.siacs.conversations.axolotl"
NS_TWO = "urn:xmpp:omemo:2"
NS_SCE = "urn:xmpp:sce:1"
FALLBACK = "This message is OMEMO encrypted (strait test)."
OMEMO_TIMEOUT = 60.0
# plugins an OMEMO client loads next to xep_0384 (xep_0280 carbons is one of its dependencies)
OMEMO_PLUGINS = ("xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0280", "xep_0334",
                 "xep_0380")


class DictStorage(Storage):
    """python-omemo storage kept in a dict (one per simulated device). Reusing the object for a
    later connection of the same device is what a client restarting with its key store does."""

    def __init__(self) -> None:
        super().__init__()
        self.data: Dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self.data[key]) if key in self.data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class TrustingOMEMO(XEP_0384):
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


TrustingOMEMO.name = "xep_0384"
register_plugin(TrustingOMEMO)


def tok(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


async def omemo_client(cs: Clients, account, label: str, *, storage: Optional[DictStorage] = None,
                       resource: Optional[str] = None, extra_plugins: Iterable[str] = (),
                       token: Optional[str] = None):
    """A logged-in client whose OMEMO keys are generated (or loaded from `storage`) and
    published. The storage is `client.plugin["xep_0384"].storage_obj`. With `token`, it logs
    in with SASL OAUTHBEARER (a provider's enlisted user, test_interop.py) instead of its
    password."""
    c = cs.new(account, label=label, resource=resource or f"omemo-{label}",
               mech="OAUTHBEARER" if token else None)
    if token:
        c.credentials["access_token"] = token
    for p in (*OMEMO_PLUGINS, *extra_plugins):
        c.register_plugin(p)
    store = storage if storage is not None else DictStorage()
    c.register_plugin("xep_0384", {"storage_obj": store}, module=sys.modules[__name__])
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


async def own_device(client) -> DeviceInformation:
    sm = await client.plugin["xep_0384"].get_session_manager()
    return (await sm.get_own_device_information())[0]


async def knows_device(receiver, sender) -> bool:
    """Whether `receiver` knows `sender`'s device (id and identity key); works for two devices
    of the same account too."""
    sm = await receiver.plugin["xep_0384"].get_session_manager()
    own = await own_device(sender)
    devs = await sm.get_device_information(sender.boundjid.bare)
    return any(d.device_id == own.device_id and d.identity_key == own.identity_key for d in devs)


async def wait_devices_known(pairs: List[Tuple[Any, Any]], timeout: float = 20.0) -> None:
    """Wait until, for every (receiver, sender), the receiver knows the sender's device. Device
    lists arrive by PEP +notify (caps) or on the plugin's own fetch; nothing is forced here."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        missing = [f"{r.label} does not know {s.label}" for r, s in pairs
                   if not await knows_device(r, s)]
        if not missing:
            return
        assert loop.time() < end, f"device lists not learned through PEP: {missing}"
        await asyncio.sleep(0.2)


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
    """Encrypt `secret` for every device of `to`'s account and the sender's own other devices
    (python-omemo adds the own account), send it, return the message id."""
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
        messages, errors = await sm.encrypt(frozenset({JID(to).bare}), {NS_TWO: env},
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


async def decrypt(receiver, stanza, ns: str) -> Tuple[Optional[str], DeviceInformation]:
    """Decrypt one message stanza with `receiver`'s OMEMO device: a delivered message, the
    message inside a carbon, or one forwarded by MAM. The sender is the stanza's `from`.
    Returns (body, sending device)."""
    assert stanza.xml.find(f"{{{ns}}}encrypted") is not None, f"no {ns} <encrypted/> in {stanza}"
    xep = receiver.plugin["xep_0384"]
    if ns == NS_OLD:
        dec, dev = await xep.decrypt_message(stanza)
        return dec["body"], dev
    sm = await xep.get_session_manager()
    elt = stanza.xml.find(f"{{{NS_TWO}}}encrypted")
    plaintext, dev, _ = await sm.decrypt(twomemo.etree.parse_message(elt, stanza["from"].bare))
    assert plaintext is not None, "no payload in the OMEMO 2 message"
    return sce_body(plaintext), dev


async def receive_encrypted(receiver, sender, mid: str, ns: str, secret: str) -> None:
    m = await receiver.wait_message(lambda m: m["id"] == mid, f"encrypted message {mid}")
    assert secret not in str(m), "plaintext in the delivered stanza"
    assert m.xml.find(f"{{{ns}}}encrypted") is not None, f"<encrypted/> lost on the way: {m}"
    assert m["from"].bare == sender.boundjid.bare, f"from={m['from']}"
    body, dev = await decrypt(receiver, m, ns)
    assert body == secret, f"decrypted {body!r}, sent {secret!r}"
    assert dev.bare_jid == sender.boundjid.bare, f"sender device of {dev.bare_jid}"


def files_containing(root: str, needles: List[str]) -> Dict[str, List[str]]:
    """needle -> files under root whose bytes contain it as UTF-8 (the database, its WAL and
    shared-memory files, anything)."""
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
                if n.encode("utf-8") in data:
                    hits[n].append(path)
    return hits
