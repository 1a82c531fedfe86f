#!/usr/bin/env python3
"""Reference peer for the strait-signal cross-implementation tests (see PROTOCOL.md).

One process = one OMEMO device (one bare JID, one device id, both namespaces). It speaks the
line-oriented JSON "peer protocol" on stdin/stdout and logs to stderr only. Underneath is
python-omemo's SessionManager with the oldmemo (eu.siacs.conversations.axolotl) and twomemo
(urn:xmpp:omemo:2) backends, in-memory storage, and dicts standing in for PEP. oldmemo (AGPL)
and twomemo are used as installed black boxes from PyPI.

    python tests/signal_interop/peer_python.py      # then write requests to stdin

Environment: PEER_LOG_LEVEL (default WARNING) for the stderr log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import secrets
import sys
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

# Only protocol replies go to the real stdout; anything a library prints lands on stderr.
PROTO_OUT = sys.stdout
sys.stdout = sys.stderr

import doubleratchet  # noqa: E402
import doubleratchet.aead  # noqa: E402
import omemo  # noqa: E402
import oldmemo  # noqa: E402
import oldmemo.etree  # noqa: E402
import twomemo  # noqa: E402
import twomemo.etree  # noqa: E402
import x3dh  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

OLD = "eu.siacs.conversations.axolotl"
TWO = "urn:xmpp:omemo:2"
NAMESPACES = (OLD, TWO)
SCE = "urn:xmpp:sce:1"
JABBER_CLIENT = "jabber:client"
PROTOCOL_VERSION = 1

log = logging.getLogger("peer_python")


class PeerError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------------
# helpers


def b64d(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise PeerError("bad_request", f"{field}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise PeerError("bad_request", f"{field}: invalid base64: {e}") from e


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def req_str(req: Dict[str, Any], field: str) -> str:
    value = req.get(field)
    if not isinstance(value, str) or not value:
        raise PeerError("bad_request", f"missing or empty string field '{field}'")
    return value


def req_ns(req: Dict[str, Any]) -> str:
    ns = req_str(req, "ns")
    if ns not in NAMESPACES:
        raise PeerError("unknown_namespace", f"unknown namespace {ns!r}")
    return ns


def req_device_id(req: Dict[str, Any], field: str = "device_id") -> int:
    value = req.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**31 - 1:
        raise PeerError("bad_request", f"'{field}' must be an integer in 1..2^31-1")
    return value


def to_xml(elt: ET.Element, ns: str = "") -> str:  # ns: unused, kept for call sites
    """Serialize with default-namespace declarations only (no prefixes): <encrypted xmlns='...'>.

    ElementTree itself would write ns0: prefixes (legal, but needlessly unusual on the wire).
    """
    out: List[str] = []

    def emit(e: ET.Element, parent_ns: str) -> None:
        tag = e.tag
        if not isinstance(tag, str):
            raise ValueError("comments/processing instructions are not serialized")
        e_ns, local = (tag[1:].split("}", 1) if tag.startswith("{") else ("", tag))
        out.append("<" + local)
        if e_ns != parent_ns:
            out.append(" xmlns=" + quoteattr(e_ns))
        for key, value in e.attrib.items():
            if key.startswith("{"):
                raise ValueError(f"namespaced attribute {key} not supported")
            out.append(f" {key}={quoteattr(value)}")
        if e.text is None and len(e) == 0:
            out.append("/>")
        else:
            out.append(">" + escape(e.text or ""))
            for child in e:
                emit(child, e_ns)
                out.append(escape(child.tail or ""))
            out.append(f"</{local}>")

    emit(elt, "")
    return "".join(out)


def parse_xml(text: Any, field: str, expected_tag: str) -> ET.Element:
    if not isinstance(text, str):
        raise PeerError("bad_request", f"{field}: expected an XML string")
    try:
        elt = ET.fromstring(text)
    except ET.ParseError as e:
        raise PeerError("bad_xml", f"{field}: not well-formed XML: {e}") from e
    if elt.tag != expected_tag:
        raise PeerError("bad_xml", f"{field}: root element is {elt.tag}, expected {expected_tag}")
    return elt


def make_envelope(text: str, from_jid: str) -> bytes:
    """The XEP-0420 SCE envelope carried by OMEMO 2 (see PROTOCOL.md, "OMEMO 2 payload")."""
    rpad = secrets.token_urlsafe(secrets.randbelow(32) + 1)[: secrets.randbelow(40) + 1]
    body = escape(text, {"\r": "&#13;"})
    return (
        f"<envelope xmlns='{SCE}'><content><body xmlns='{JABBER_CLIENT}'>{body}</body></content>"
        f"<rpad>{escape(rpad)}</rpad><from jid={quoteattr(from_jid)}/></envelope>"
    ).encode("utf-8")


def open_envelope(data: bytes, from_jid: str) -> str:
    try:
        elt = ET.fromstring(data)
    except ET.ParseError as e:
        raise PeerError("envelope_invalid", f"SCE envelope is not well-formed XML: {e}") from e
    if elt.tag != f"{{{SCE}}}envelope":
        raise PeerError("envelope_invalid", f"SCE envelope root is {elt.tag}")
    content = elt.find(f"{{{SCE}}}content")
    if content is None:
        raise PeerError("envelope_invalid", "SCE envelope without <content>")
    body = content.find(f"{{{JABBER_CLIENT}}}body")
    if body is None:
        raise PeerError("envelope_invalid", "SCE <content> without a jabber:client <body>")
    frm = elt.find(f"{{{SCE}}}from")
    if frm is not None and frm.get("jid") != from_jid:
        raise PeerError("envelope_invalid", f"SCE <from jid='{frm.get('jid')}'> does not match {from_jid}")
    return body.text or ""


def classify(exc: BaseException) -> str:
    """Map a python-omemo exception (and its cause chain) to a protocol reason code."""
    chain: List[BaseException] = []
    e: Optional[BaseException] = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    ordered = [
        (doubleratchet.DuplicateMessageException, "duplicate"),
        (omemo.NoSession, "no_session"),
        (omemo.MessageNotForUs, "not_for_us"),
        (omemo.SenderNotFound, "unknown_sender"),
        (omemo.PublicDataInconsistency, "identity_mismatch"),
        (omemo.NoEligibleDevices, "no_devices"),
        (omemo.TooManySkippedMessageKeys, "too_many_skipped"),
        (doubleratchet.DoSProtectionException, "too_many_skipped"),
        (doubleratchet.aead.AuthenticationFailedException, "bad_mac"),
        (omemo.KeyExchangeFailed, "key_exchange_failed"),
        (x3dh.KeyAgreementException, "key_exchange_failed"),
        (omemo.DecryptionFailed, "decryption_failed"),
        (doubleratchet.aead.DecryptionFailedException, "decryption_failed"),
    ]
    for cls, reason in ordered:
        if any(isinstance(c, cls) for c in chain):
            return reason
    try:
        import xmlschema

        if any(isinstance(c, xmlschema.XMLSchemaValidationError) for c in chain):
            return "bad_xml"
    except ImportError:  # pragma: no cover
        pass
    return "internal"


# ---------------------------------------------------------------------------------------------
# python-omemo glue


class MemStorage(omemo.Storage):
    def __init__(self) -> None:
        super().__init__(True)
        self.data: Dict[str, Any] = {}

    async def _load(self, key: str) -> omemo.Maybe[omemo.JSONType]:
        return omemo.Just(self.data[key]) if key in self.data else omemo.Nothing()

    async def _store(self, key: str, value: omemo.JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


TRUSTED = "trusted"
UNDECIDED = "undecided"


class Peer:
    def __init__(self) -> None:
        self.jid: Optional[str] = None
        self.sm: Optional[omemo.SessionManager] = None
        self.storage = MemStorage()
        # "PEP": bundles by (ns, jid, device_id), device lists by (ns, jid) -- ours and learned ones
        self.bundles: Dict[Tuple[str, str, int], omemo.Bundle] = {}
        self.devlists: Dict[Tuple[str, str], Dict[int, Optional[omemo.SignedLabel]]] = {}
        self.outbox: List[Dict[str, str]] = []

    def make_sm_class(self) -> type:
        peer = self

        class SM(omemo.SessionManager):
            @staticmethod
            async def _upload_bundle(bundle: omemo.Bundle) -> None:
                peer.bundles[(bundle.namespace, bundle.bare_jid, bundle.device_id)] = bundle

            @staticmethod
            async def _download_bundle(namespace: str, bare_jid: str, device_id: int) -> omemo.Bundle:
                try:
                    return peer.bundles[(namespace, bare_jid, device_id)]
                except KeyError as e:
                    raise omemo.BundleNotFound(f"no bundle for {namespace} {bare_jid} {device_id}") from e

            @staticmethod
            async def _delete_bundle(namespace: str, device_id: int) -> None:
                peer.bundles.pop((namespace, peer.jid, device_id), None)

            @staticmethod
            async def _upload_device_list(namespace: str, device_list: omemo.DeviceList) -> None:
                peer.devlists[(namespace, peer.jid)] = dict(device_list)

            @staticmethod
            async def _download_device_list(namespace: str, bare_jid: str) -> omemo.DeviceList:
                return dict(peer.devlists.get((namespace, bare_jid), {}))

            async def _evaluate_custom_trust_level(self, device: omemo.DeviceInformation) -> omemo.TrustLevel:
                if device.trust_level_name == TRUSTED:
                    return omemo.TrustLevel.TRUSTED
                if device.trust_level_name == UNDECIDED:
                    return omemo.TrustLevel.UNDECIDED
                raise omemo.UnknownTrustLevel(device.trust_level_name)

            async def _make_trust_decision(self, undecided: Any, identifier: Optional[str]) -> None:
                # Blind trust: the tests are about the protocol, not about trust UI.
                for device in undecided:
                    await self.set_trust(device.bare_jid, device.identity_key, TRUSTED)

            @staticmethod
            async def _send_message(message: omemo.Message, bare_jid: str) -> None:
                # Automatic empty messages (key exchange completion, heartbeats): handed to the driver.
                ns = message.namespace
                etree = oldmemo.etree if ns == OLD else twomemo.etree
                xml = to_xml(etree.serialize_message(message), ns)
                log.info("automatic message to %s (%s)", bare_jid, ns)
                peer.outbox.append({"to_jid": bare_jid, "ns": ns, "xml": xml})

        return SM

    def need_init(self) -> omemo.SessionManager:
        if self.sm is None:
            raise PeerError("not_initialized", "send 'init' first")
        return self.sm

    def own_public(self, ns: str) -> Dict[str, str]:
        sm = self.need_init()
        assert self.jid is not None
        etree = oldmemo.etree if ns == OLD else twomemo.etree
        dev = self.own_device_id
        bundle = self.bundles.get((ns, self.jid, dev))
        if bundle is None:
            raise PeerError("internal", f"own bundle for {ns} not published")
        devlist = self.devlists.get((ns, self.jid), {})
        del sm
        return {
            "bundle_xml": to_xml(etree.serialize_bundle(bundle), ns),
            "device_list_xml": to_xml(etree.serialize_device_list(devlist), ns),
        }

    # ---- commands -------------------------------------------------------------------------

    async def cmd_hello(self, req: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "implementation": f"python-omemo {omemo.__version__} (oldmemo {oldmemo.__version__},"
            f" twomemo {twomemo.__version__})",
            "protocol": PROTOCOL_VERSION,
            "namespaces": list(NAMESPACES),
        }

    async def cmd_init(self, req: Dict[str, Any]) -> Dict[str, Any]:
        if self.sm is not None:
            raise PeerError("bad_request", "already initialized")
        jid = req_str(req, "jid")
        if "/" in jid or "@" not in jid:
            raise PeerError("bad_request", "jid must be a bare JID local@domain")
        if req.get("device_id") is not None:
            req_device_id(req)
            log.info("device_id hint ignored: python-omemo always picks a random device id")
        self.jid = jid
        st = self.storage
        self.sm = await self.make_sm_class().create(
            [oldmemo.Oldmemo(st), twomemo.Twomemo(st)], st, jid, None, UNDECIDED
        )
        await self.sm.after_history_sync()
        own, _others = await self.sm.get_own_device_information()
        self.own_device_id = own.device_id
        return {
            "device_id": own.device_id,
            "namespaces": {ns: self.own_public(ns) for ns in NAMESPACES},
        }

    async def cmd_refresh_bundle(self, req: Dict[str, Any]) -> Dict[str, Any]:
        self.need_init()
        return self.own_public(req_ns(req))

    async def cmd_add_device(self, req: Dict[str, Any]) -> Dict[str, Any]:
        sm = self.need_init()
        ns = req_ns(req)
        jid = req_str(req, "jid")
        if jid == self.jid:
            raise PeerError("bad_request", "add_device is for other accounts' devices")
        device_id = req_device_id(req)
        etree = oldmemo.etree if ns == OLD else twomemo.etree
        elt = parse_xml(req.get("bundle_xml"), "bundle_xml", f"{{{ns}}}bundle")
        try:
            bundle = etree.parse_bundle(elt, jid, device_id)
        except Exception as e:
            raise PeerError("bad_bundle", f"bundle rejected: {type(e).__name__}: {e}") from e
        devlist = dict(self.devlists.get((ns, jid), {}))
        if req.get("device_list_xml") is not None:
            root = "list" if ns == OLD else "devices"
            dl_elt = parse_xml(req.get("device_list_xml"), "device_list_xml", f"{{{ns}}}{root}")
            try:
                parsed = etree.parse_device_list(dl_elt)
            except Exception as e:
                raise PeerError("bad_xml", f"device list rejected: {type(e).__name__}: {e}") from e
            if device_id not in parsed:
                raise PeerError("bad_request", f"device list does not contain device {device_id}")
            devlist.update(parsed)
        else:
            devlist.setdefault(device_id, None)
        self.bundles[(ns, jid, device_id)] = bundle
        self.devlists[(ns, jid)] = devlist
        await sm.refresh_device_list(ns, jid)
        devices = await sm.get_device_information(jid)
        if not any(d.device_id == device_id and ns in d.namespaces for d in devices):
            raise PeerError("bad_bundle", "python-omemo did not accept the device")
        return {}

    async def cmd_encrypt(self, req: Dict[str, Any]) -> Dict[str, Any]:
        sm = self.need_init()
        assert self.jid is not None
        ns = req_ns(req)
        to_jid = req_str(req, "to_jid")
        plaintext = b64d(req.get("plaintext_b64"), "plaintext_b64")
        if not plaintext:
            raise PeerError("bad_request", "plaintext must not be empty")
        if ns == TWO:
            try:
                text = plaintext.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PeerError("bad_request", "OMEMO 2 plaintext must be UTF-8 text") from e
            payload = make_envelope(text, self.jid)
        else:
            payload = plaintext
        messages, errors = await sm.encrypt(frozenset({to_jid}), {ns: payload}, [ns])
        for err in errors:
            log.warning("non-critical encryption error: %s", err)
        msg = next((m for m in messages if m.namespace == ns), None)
        if msg is None:
            raise PeerError("no_devices", f"nothing encrypted for {to_jid} in {ns}")
        etree = oldmemo.etree if ns == OLD else twomemo.etree
        return {"xml": to_xml(etree.serialize_message(msg), ns)}

    async def cmd_decrypt(self, req: Dict[str, Any]) -> Dict[str, Any]:
        sm = self.need_init()
        assert self.jid is not None
        ns = req_ns(req)
        from_jid = req_str(req, "from_jid")
        elt = parse_xml(req.get("xml"), "xml", f"{{{ns}}}encrypted")
        if ns == OLD:
            message = await oldmemo.etree.parse_message(elt, from_jid, self.jid, sm)
        else:
            message = twomemo.etree.parse_message(elt, from_jid)
        plaintext, _device, _key_material = await sm.decrypt(message)
        if plaintext is None:
            return {"plaintext_b64": None, "empty": True}
        if ns == TWO:
            text = open_envelope(plaintext, from_jid)
            return {
                "plaintext_b64": b64e(text.encode("utf-8")),
                "empty": False,
                "envelope_b64": b64e(plaintext),
            }
        return {"plaintext_b64": b64e(plaintext), "empty": False}

    async def cmd_reset_session(self, req: Dict[str, Any]) -> Dict[str, Any]:
        sm = self.need_init()
        ns = req_ns(req)
        jid = req_str(req, "jid")
        backend = next(b for b in sm._SessionManager__backends if b.namespace == ns)  # type: ignore
        dropped = 0
        for device in await sm.get_device_information(jid):
            if await backend.load_session(jid, device.device_id) is not None:
                # load_session() returns None once the ratchet state is gone; the next encrypt()
                # then builds a fresh session from the (re-)downloaded bundle.
                await self.storage.delete(f"/{ns}/{jid}/{device.device_id}/double_ratchet")
                dropped += 1
        return {"sessions_dropped": dropped}

    async def cmd_encrypt_file(self, req: Dict[str, Any]) -> Dict[str, Any]:
        https_url = req_str(req, "https_url")
        parts = urlsplit(https_url)
        if parts.scheme != "https" or not parts.netloc or parts.fragment:
            raise PeerError("bad_request", "https_url must be an https:// URL without fragment")
        data = b64d(req.get("plaintext_b64"), "plaintext_b64")
        key, iv = secrets.token_bytes(32), secrets.token_bytes(12)
        ciphertext = AESGCM(key).encrypt(iv, data, None)  # tag appended
        url = "aesgcm" + https_url[len("https"):] + "#" + iv.hex() + key.hex()
        return {"url": url, "ciphertext_b64": b64e(ciphertext)}

    async def cmd_decrypt_file(self, req: Dict[str, Any]) -> Dict[str, Any]:
        url = req_str(req, "url")
        if not url.startswith("aesgcm://") or "#" not in url:
            raise PeerError("bad_url", "expected aesgcm://...#<hex iv><hex key>")
        fragment = url.rsplit("#", 1)[1]
        if len(fragment) not in (88, 96):
            raise PeerError("bad_url", f"fragment must be 88 or 96 hex digits, got {len(fragment)}")
        try:
            raw = bytes.fromhex(fragment)
        except ValueError as e:
            raise PeerError("bad_url", "fragment is not hex") from e
        iv, key = raw[:-32], raw[-32:]
        ciphertext = b64d(req.get("ciphertext_b64"), "ciphertext_b64")
        if len(ciphertext) < 16:
            raise PeerError("decryption_failed", "ciphertext shorter than the GCM tag")
        try:
            data = AESGCM(key).decrypt(iv, ciphertext, None)
        except Exception as e:
            raise PeerError("decryption_failed", "AES-256-GCM authentication failed") from e
        return {"plaintext_b64": b64e(data)}

    async def cmd_shutdown(self, req: Dict[str, Any]) -> Dict[str, Any]:
        if self.sm is not None:
            await self.sm.shutdown()
        return {}


async def main() -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("PEER_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    peer = Peer()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            log.info("stdin closed")
            break
        if not line.strip():
            continue
        req_id: Any = None
        cmd = "?"
        try:
            try:
                req = json.loads(line)
            except json.JSONDecodeError as e:
                raise PeerError("bad_request", f"not JSON: {e}") from e
            if not isinstance(req, dict):
                raise PeerError("bad_request", "a request is a JSON object")
            req_id = req.get("id")
            cmd = req.get("cmd")
            handler = getattr(peer, f"cmd_{cmd}", None) if isinstance(cmd, str) else None
            if handler is None:
                raise PeerError("unknown_command", f"unknown command {cmd!r}")
            log.debug("request %s", line.strip()[:500])
            reply: Dict[str, Any] = {"id": req_id, "ok": True}
            reply.update(await handler(req))
        except PeerError as e:
            log.info("%s failed: %s: %s", cmd, e.reason, e.message)
            reply = {"id": req_id, "ok": False, "error": {"reason": e.reason, "message": e.message}}
        except Exception as e:  # python-omemo errors
            reason = classify(e)
            log.info("%s failed: %s", cmd, reason, exc_info=True)
            reply = {
                "id": req_id,
                "ok": False,
                "error": {"reason": reason, "message": f"{type(e).__name__}: {e}"},
            }
        reply["outbox"], peer.outbox = peer.outbox, []
        PROTO_OUT.write(json.dumps(reply) + "\n")
        PROTO_OUT.flush()
        if cmd == "shutdown" and reply["ok"]:
            break
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
