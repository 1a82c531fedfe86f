"""Helpers for driving real XMPP clients (slixmpp) against the server under test.

Every wait here has a time limit, so a broken or silent server gives a failing test with a reason,
never a hang. Tests run their coroutine with `run()`, which also bounds the whole test body.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from slixmpp import JID, ClientXMPP

# Default bound for a single wait (login, one stanza, one IQ) and for one whole test body.
STEP_TIMEOUT = 10.0
TEST_TIMEOUT = 45.0

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_DELAY = "urn:xmpp:delay"
NS_ROSTER = "jabber:iq:roster"


@dataclass
class Account:
    jid: str        # bare JID, as the server stores it
    password: str

    @property
    def domain(self) -> str:
        return JID(self.jid).domain


def run(coro: Any, timeout: float = TEST_TIMEOUT) -> Any:
    """Run one test body on a fresh event loop, bounded by `timeout` seconds."""
    async def bounded() -> Any:
        try:
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"test body did not finish within {timeout:g}s") from None
    return asyncio.run(bounded())


async def within(aw: Any, what: str, timeout: float = STEP_TIMEOUT) -> Any:
    """await `aw` with a time limit; on timeout fail with a message that says what was awaited."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}") from None


class LoginFailed(AssertionError):
    """The client did not reach session start; `.events` says what happened instead."""

    def __init__(self, msg: str, events: List[str]) -> None:
        super().__init__(f"{msg}; events: {', '.join(events) or 'none'}")
        self.events = events


class Client(ClientXMPP):
    """A slixmpp client with a strict TLS policy, inboxes and bounded waits.

    - Never plaintext. STARTTLS on the c2s port, or XEP-0368 direct TLS (ALPN xmpp-client) when
      `direct_tls` is set; slixmpp's automatic direct-TLS-first attempt is turned off otherwise.
    - The certificate is verified against the test CA with the JID's domain as server name, while
      the TCP connection goes to the configured loopback address.
    - Subscription requests are never answered automatically (tests do the handshake themselves).
    """

    def __init__(self, server: Any, account: Account, *, direct_tls: bool = False,
                 mech: Optional[str] = None, resource: Optional[str] = None,
                 label: str = "client", alpn: bool = True) -> None:
        jid = f"{account.jid}/{resource}" if resource else account.jid
        super().__init__(jid, account.password, sasl_mech=mech)
        self.srv = server
        self.label = label
        self.direct_tls = direct_tls
        ctx = ssl.create_default_context(cafile=server.ca_file)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if direct_tls and alpn:   # slixmpp itself sends no ALPN; XEP-0368 clients like Conversations do
            ctx.set_alpn_protocols(["xmpp-client"])
        self.ssl_context = ctx
        self.enable_plaintext = False
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.whitespace_keepalive = False
        self.auto_authorize = None
        self.auto_subscribe = False
        self.use_message_ids = True

        self.messages: List[Any] = []
        self.presences: List[Any] = []
        self.message_errors: List[Any] = []  # <message type='error'/> (bounces)
        self.events: List[str] = []          # coarse history, for failure messages
        self.sasl_failures: List[str] = []   # SASL <failure/> conditions received
        self.mechs_offered: List[List[str]] = []
        self.features_seen: List[List[str]] = []
        self.bound_jid: Optional[str] = None
        self.session_started = False
        self._changed = asyncio.Event()
        self._closing = False

        self.add_event_handler("message", self._on_message)
        self.add_event_handler("presence", self._on_presence)
        self.add_event_handler("message_error", self._on_message_error)
        self.add_event_handler("failed_auth", self._on_failed_auth)
        self.add_event_handler("session_bind", self._on_bind)
        for ev in ("connected", "tls_success", "auth_success", "failed_all_auth", "session_start",
                   "connection_failed", "ssl_invalid_chain", "ssl_invalid_cert", "stream_error",
                   "disconnected", "killed"):
            self.add_event_handler(ev, self._recorder(ev))
        # registered so that disco/ping are real client features, not hand-written XML
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")

    # ---------------------------------------------------------------- recording
    def _recorder(self, name: str) -> Callable[[Any], None]:
        def rec(data: Any = None) -> None:
            detail = ""
            if name == "stream_error" and data is not None:
                detail = f"({data['condition']}: {data['text']})"
            elif name in ("connection_failed", "ssl_invalid_chain", "disconnected") and data:
                detail = f"({data})"
            self.events.append(name + detail)
            self._changed.set()
        return rec

    def _on_message(self, msg: Any) -> None:
        self.messages.append(msg)
        self._changed.set()

    def _on_message_error(self, msg: Any) -> None:
        self.message_errors.append(msg)
        self.events.append(f"message_error({msg['error']['condition']})")
        self._changed.set()

    def _on_presence(self, pres: Any) -> None:
        self.presences.append(pres)
        self._changed.set()

    def _on_failed_auth(self, failure: Any) -> None:
        self.sasl_failures.append(failure["condition"] or "?")
        self.events.append(f"sasl_failure({failure['condition']})")
        self._changed.set()

    def _on_bind(self, jid: Any) -> None:
        self.bound_jid = str(jid)
        self._changed.set()

    async def _handle_stream_features(self, features: Any) -> Any:  # type: ignore[override]
        names = [child.tag for child in features.xml]
        self.features_seen.append(names)
        mechs = features.xml.find(f"{{{NS_SASL}}}mechanisms")
        if mechs is not None:
            self.mechs_offered.append([(m.text or "").strip() for m in mechs])
        return await super()._handle_stream_features(features)

    # ---------------------------------------------------------------- connect
    async def login(self, *, presence: bool = True, timeout: float = STEP_TIMEOUT) -> "Client":
        """Connect and wait for session start (resource bound). Raises LoginFailed otherwise."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def finish(exc: Optional[BaseException]) -> Callable[[Any], None]:
            def h(_data: Any = None) -> None:
                if not done.done():
                    if exc is None:
                        done.set_result(None)
                    else:
                        done.set_exception(exc)
            return h

        handlers = {
            "session_start": finish(None),
            "failed_all_auth": finish(LoginFailed(f"{self.label}: SASL failed", self.events)),
            "disconnected": finish(LoginFailed(f"{self.label}: disconnected before session start",
                                               self.events)),
            "ssl_invalid_chain": finish(LoginFailed(f"{self.label}: TLS certificate not trusted",
                                                    self.events)),
            "connection_failed": finish(LoginFailed(f"{self.label}: connection failed", self.events)),
            "stream_error": finish(LoginFailed(f"{self.label}: stream error", self.events)),
        }
        for ev, h in handlers.items():
            self.add_event_handler(ev, h)
        port = self.srv.tls_port if self.direct_tls else self.srv.c2s_port
        try:
            self.connect(self.srv.host, port)
            await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            self.kill()
            raise LoginFailed(f"{self.label}: no session within {timeout:g}s", self.events) from None
        except BaseException:
            self.kill()
            raise
        finally:
            for ev, h in handlers.items():
                self.del_event_handler(ev, h)
        self.session_started = True
        if presence:
            # what IM clients do: fetch the roster (making this an "interested resource" that
            # gets roster pushes, RFC 6121 2.1.6), then send initial presence
            await asyncio.wait_for(self.get_roster(timeout=timeout), timeout)
            self.send_presence()
            # once the ping returns, the server has processed the initial presence: from now on
            # messages to our bare JID are delivered live, not stored offline
            await self.sync(timeout)
        return self

    def kill(self) -> None:
        """Stop any connection attempt and drop the TCP connection without a stream close."""
        self._closing = True
        try:
            self.cancel_connection_attempt()
        except Exception:  # noqa: BLE001
            pass
        if self.transport is not None:
            self.abort()

    async def logout(self, timeout: float = 5.0) -> None:
        """Close the stream politely (</stream:stream>), falling back to abort."""
        self._closing = True
        if self.transport is None:
            self.kill()
            return
        try:
            await asyncio.wait_for(self.disconnect(wait=2.0), timeout)
        except Exception:  # noqa: BLE001
            self.kill()

    # ---------------------------------------------------------------- TLS / SASL facts
    def tls_version(self) -> Optional[str]:
        obj = self.transport.get_extra_info("ssl_object") if self.transport else None
        return obj.version() if obj is not None else None

    def alpn(self) -> Optional[str]:
        obj = self.transport.get_extra_info("ssl_object") if self.transport else None
        return obj.selected_alpn_protocol() if obj is not None else None

    def sasl_mechanism(self) -> Optional[str]:
        mech = getattr(self.plugin["feature_mechanisms"], "mech", None)
        return getattr(mech, "name", None)

    # ---------------------------------------------------------------- waiting
    async def wait_cond(self, pred: Callable[[], Any], what: str,
                         timeout: float = STEP_TIMEOUT) -> Any:
        """Wait until pred() returns something truthy (re-evaluated whenever a stanza arrives)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            res = pred()
            if res:
                return res
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{self.label}: timed out after {timeout:g}s waiting for {what}"
                                     f"; events: {', '.join(self.events[-6:])}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def wait_message(self, pred: Callable[[Any], bool], what: str,
                           timeout: float = STEP_TIMEOUT) -> Any:
        return await self.wait_cond(lambda: next((m for m in self.messages if pred(m)), None),
                                     what, timeout)

    async def wait_presence(self, pred: Callable[[Any], bool], what: str,
                            timeout: float = STEP_TIMEOUT) -> Any:
        return await self.wait_cond(lambda: next((p for p in self.presences if pred(p)), None),
                                     what, timeout)

    async def roster_items(self, timeout: float = STEP_TIMEOUT) -> dict:
        """Fetch the roster with a fresh IQ; {bare jid: {'subscription':..., 'ask':...}}."""
        iq = self.Iq()
        iq["type"] = "get"
        iq.enable("roster")
        resp = await iq.send(timeout=timeout)
        query = resp.xml.find(f"{{{NS_ROSTER}}}query")
        assert query is not None, f"roster result without query: {resp}"
        out = {}
        for item in query.findall(f"{{{NS_ROSTER}}}item"):
            out[item.get("jid")] = {"subscription": item.get("subscription", "none"),
                                    "ask": item.get("ask")}
        return out

    async def sync(self, timeout: float = STEP_TIMEOUT) -> None:
        """Round-trip a ping to our own server: everything we sent before has been processed."""
        await self.plugin["xep_0199"].ping(jid=JID(self.boundjid.domain), timeout=timeout)


class Clients:
    """Async context manager that owns clients and always tears them down, even on failure."""

    def __init__(self, server: Any) -> None:
        self.srv = server
        self.all: List[Client] = []

    def new(self, account: Account, **kw: Any) -> Client:
        c = Client(self.srv, account, **kw)
        self.all.append(c)
        return c

    async def online(self, account: Account, **kw: Any) -> Client:
        return await self.new(account, **kw).login()

    async def __aenter__(self) -> "Clients":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.gather(*(c.logout() for c in self.all), return_exceptions=True)
        for c in self.all:
            c.kill()
        await asyncio.sleep(0)


def delay_of(msg: Any) -> Optional[ET.Element]:
    return msg.xml.find(f"{{{NS_DELAY}}}delay")


STAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def parse_stamp(stamp: str) -> float:
    """XEP-0082 DateTime -> POSIX seconds."""
    from datetime import datetime
    assert STAMP_RE.match(stamp or ""), f"delay stamp {stamp!r} is not a XEP-0082 DateTime"
    s = stamp.replace("Z", "+00:00")
    if "." in s:
        head, rest = s.split(".", 1)
        frac = re.match(r"\d+", rest).group(0)  # type: ignore[union-attr]
        s = f"{head}.{frac[:6].ljust(6, '0')}{rest[len(frac):]}"
    return datetime.fromisoformat(s).timestamp()


# -------------------------------------------------------------------- raw socket
class RawStream:
    """A hand-driven XMPP client stream over a plain socket (no XMPP library), for checks on
    what the server says before TLS. Reads are bounded by a deadline."""

    def __init__(self, host: str, port: int, timeout: float = STEP_TIMEOUT) -> None:
        self.sock: Any = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""

    def send(self, data: str) -> None:
        self.sock.sendall(data.encode())

    def open_stream(self, domain: str) -> None:
        self.send("<?xml version='1.0'?><stream:stream to='%s' version='1.0' xml:lang='en' "
                  "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>" % domain)

    def read_until(self, pattern: bytes, what: str) -> bytes:
        """Read until `pattern` (regex) matches the buffer or the peer closes; return the buffer."""
        deadline = time.monotonic() + self.timeout
        rx = re.compile(pattern, re.S)
        while not rx.search(self.buf):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {self.timeout:g}s waiting for {what}; "
                                     f"got so far: {self.buf[-2000:]!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            self.buf += chunk
        return self.buf

    def take(self) -> bytes:
        out, self.buf = self.buf, b""
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def parse_features(raw: bytes) -> ET.Element:
    """Extract and parse the <stream:features/> element from raw stream bytes."""
    m = re.search(rb"<(\w+:)?features[\s>].*?</(\w+:)?features>|<(\w+:)?features[^>]*/>", raw, re.S)
    assert m, f"no <stream:features/> in {raw[-2000:]!r}"
    frag = m.group(0)
    prefix = (m.group(1) or b"").rstrip(b":").decode()
    # re-declare the stream prefix so the fragment parses on its own
    if prefix:
        frag = frag.replace(f"<{prefix}:features".encode(),
                            f"<{prefix}:features xmlns:{prefix}='{NS_STREAM}'".encode(), 1)
    return ET.fromstring(frag)
