"""Roster, presence subscription and broadcast, and basic server IQs (disco#info, ping)."""

from __future__ import annotations

import asyncio
import secrets

import pytest
from slixmpp import JID

from xmpp_helpers import Clients, run, within


def pres_from(jid_full: str, ptype: str):
    """Matcher: presence of `ptype` ('available', 'unavailable', 'subscribe', ...) from a JID
    (full JID compared exactly, bare JID compared to the sender's bare JID)."""
    def match(p) -> bool:
        frm = p["from"]
        same = str(frm) == jid_full if "/" in jid_full else frm.bare == jid_full
        # raw attribute: slixmpp reports <show/> (e.g. 'dnd') as the type of available presence
        return same and (p.xml.get("type") or "available") == ptype
    return match


async def wait_subscription(c, contact: str, want: str, timeout: float = 10.0) -> None:
    """Poll the roster (fresh IQ each time, also woken by roster pushes) until the contact's
    subscription is `want`."""
    last: dict = {}

    async def poll() -> None:
        nonlocal last
        while True:
            last = (await c.roster_items()).get(contact, {})
            if last.get("subscription") == want:
                return
            c._changed.clear()
            try:
                await asyncio.wait_for(c._changed.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
    try:
        await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"{c.label}: roster item {contact} is {last or 'absent'}, "
                             f"expected subscription={want}") from None


async def make_contacts(ca, cb) -> None:
    """Full subscribe/subscribed handshake both ways, done by hand (no client automation)."""
    a, b = ca.boundjid.bare, cb.boundjid.bare
    ca.send_presence(pto=b, ptype="subscribe")
    sub = await cb.wait_presence(pres_from(a, "subscribe"), "A's subscribe at B")
    assert JID(sub["to"]).bare == b
    cb.send_presence(pto=a, ptype="subscribed")
    cb.send_presence(pto=a, ptype="subscribe")
    await ca.wait_presence(pres_from(b, "subscribed"), "B's subscribed at A")
    await ca.wait_presence(pres_from(b, "subscribe"), "B's subscribe at A")
    ca.send_presence(pto=b, ptype="subscribed")
    await wait_subscription(ca, b, "both")
    await wait_subscription(cb, a, "both")


def test_subscription_and_presence(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            cb = await cs.online(b, label="B")
            # fresh accounts: empty rosters
            assert b.jid not in await ca.roster_items()
            assert a.jid not in await cb.roster_items()

            await make_contacts(ca, cb)

            # each side sees the other's available presence, from the full JID (sent by the
            # server on approval, RFC 6121 3.1.5 / 3.4)
            await ca.wait_presence(pres_from(cb.boundjid.full, "available"),
                                   "B's available presence at A")
            await cb.wait_presence(pres_from(ca.boundjid.full, "available"),
                                   "A's available presence at B")

            # a later broadcast reaches the contact, with its payload
            status = f"busy {secrets.token_hex(4)}"
            ca.send_presence(pshow="dnd", pstatus=status)
            p = await cb.wait_presence(lambda p: str(p["from"]) == ca.boundjid.full
                                       and p["status"] == status, "A's dnd broadcast at B")
            assert p["show"] == "dnd"

            # B goes away: A sees B's unavailable presence
            b_full = cb.boundjid.full
            await cb.logout()
            await ca.wait_presence(pres_from(b_full, "unavailable"), "B's unavailable at A")

            # the subscription is stored: B's next session still shows 'both' from the server
            cb2 = await cs.online(b, label="B2")
            await wait_subscription(cb2, a.jid, "both")
            await cb2.wait_presence(pres_from(ca.boundjid.full, "available"),
                                    "A's presence at B's new session (probe answered)")
    run(body())


def test_no_presence_without_subscription(server, new_account):
    """Presence is not leaked to a non-contact (negative control for the test above)."""
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            cb = await cs.online(b, label="B")
            status = f"secret {secrets.token_hex(4)}"
            ca.send_presence(pstatus=status)
            marker = f"m-{secrets.token_hex(4)}"
            msg = ca.make_message(mto=b.jid, mbody="marker", mtype="chat")
            msg["id"] = marker
            msg.send()
            await cb.wait_message(lambda m: m["id"] == marker, "marker message")
            await asyncio.sleep(0.5)
            leaked = [p for p in cb.presences if p["from"].bare == a.jid]
            assert not leaked, f"presence delivered to a non-contact: {[str(p) for p in leaked]}"
    run(body())


def test_disco_info_and_ping(server, new_account):
    a = new_account()

    async def body():
        async with Clients(server) as cs:
            c = await cs.online(a, label="A")
            info = await c.plugin["xep_0030"].get_info(jid=server.domain, timeout=10)
            assert info["type"] == "result"
            q = info["disco_info"]
            identities = {(i[0], i[1]) for i in q["identities"]}
            assert ("server", "im") in identities, f"identities {identities}"
            feats = set(q["features"])
            for f in ("http://jabber.org/protocol/disco#info", "urn:xmpp:ping"):
                assert f in feats, f"{f} not advertised: {sorted(feats)}"
            # XEP-0157 contact addresses, when the server under test has them
            if server.kind == "strait":
                values = [v.text for f in info.xml.iter("{jabber:x:data}field")
                          if f.get("var") == "abuse-addresses"
                          for v in f.iter("{jabber:x:data}value")]
                assert sorted(values) == ["mailto:abuse@localhost", "xmpp:abuse@localhost"], \
                    values
            rtt = await c.plugin["xep_0199"].ping(jid=JID(server.domain), timeout=10)
            assert rtt is not None and rtt >= 0
            # and the other virtual host answers for itself
            info2 = await c.plugin["xep_0030"].get_info(jid=server.other_domain, timeout=10)
            assert ("server", "im") in {(i[0], i[1]) for i in info2["disco_info"]["identities"]}
    run(body())


def test_server_caps_verified_by_slixmpp(server, new_account):
    """XEP-0115 §6.3: the server announces caps in its stream features; slixmpp's caps plugin
    fetches the node's disco#info, checks the hash and only then records it."""
    a = new_account()

    async def body():
        async with Clients(server) as cs:
            c = cs.new(a, label="A")
            c.register_plugin("xep_0115")
            await c.login()
            if "caps" not in c.features:
                pytest.skip("the server under test announces no caps in its stream features")

            async def verified():
                while not await c.plugin["xep_0115"].get_verstring(JID(server.domain)):
                    await asyncio.sleep(0.05)
                return await c.plugin["xep_0115"].get_verstring(JID(server.domain))

            ver = await within(verified(), "slixmpp verifies the server's caps")
            info = await c.plugin["xep_0115"].get_caps(jid=JID(server.domain), verstring=ver)
            assert info is not None
            assert "urn:xmpp:ping" in info["features"], info
    run(body())


def test_roster_management(server, new_account):
    """A roster item set by one session is pushed to the account's other session, stored with
    its name and group, and removed again (RFC 6121 2.3-2.5)."""
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            c1 = await cs.online(a, resource="one", label="A1")
            c2 = await cs.online(a, resource="two", label="A2")
            name, group = f"Bob {secrets.token_hex(3)}", "Friends ü"
            await c1.update_roster(JID(b.jid), name=name, groups=[group], timeout=10)
            # the other session gets the roster push
            await c2.wait_cond(lambda: b.jid in c2.client_roster
                               and c2.client_roster[b.jid]["name"] == name,
                               "roster push with the new item at the other session")
            iq = c2.Iq()
            iq["type"] = "get"
            iq.enable("roster")
            items = (await iq.send(timeout=10))["roster"]["items"]
            assert b.jid in items, f"item not stored: {list(items)}"
            assert items[b.jid]["name"] == name
            assert list(items[b.jid]["groups"]) == [group], items[b.jid]["groups"]
            assert items[b.jid]["subscription"] == "none"
            await c1.del_roster_item(JID(b.jid))
            await c2.wait_cond(lambda: b.jid not in c2.client_roster
                               or not c2.client_roster[b.jid]["name"],
                               "roster push removing the item")
            assert b.jid not in await c1.roster_items()
    run(body())


def test_iq_routing_between_clients(server, new_account):
    """An IQ to another user's full JID reaches that client and its answer comes back; an IQ to
    a resource that is not online gets an error instead of silence."""
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            cb = await cs.online(b, label="B")
            # slixmpp's XEP-0199 plugin answers pings: this is B's own reply, routed back to A
            rtt = await ca.plugin["xep_0199"].ping(jid=cb.boundjid, timeout=10)
            assert rtt is not None
            iq = ca.Iq()
            iq["type"] = "get"
            iq["to"] = f"{b.jid}/no-such-resource"
            iq.enable("ping")
            try:
                resp = await iq.send(timeout=10)
            except Exception as e:  # noqa: BLE001
                resp = getattr(e, "iq", None)
                assert resp is not None, f"no reply for an IQ to an offline resource: {e!r}"
            assert resp["type"] == "error", f"IQ to an offline resource answered: {resp}"
            assert resp["error"]["condition"] in ("service-unavailable", "item-not-found",
                                                  "recipient-unavailable"), resp
    run(body())


def test_unavailable_on_connection_loss(server, new_account):
    """A contact whose TCP connection dies (no </stream:stream>, as with a phone losing network)
    is reported unavailable once the server notices the closed socket."""
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            cb = await cs.online(b, label="B")
            await make_contacts(ca, cb)
            await ca.wait_presence(pres_from(cb.boundjid.full, "available"), "B available at A")
            b_full = cb.boundjid.full
            cb.kill()
            p = await ca.wait_presence(pres_from(b_full, "unavailable"),
                                       "B's unavailable at A after its TCP connection died")
            assert str(p["to"]) in (ca.boundjid.full, a.jid)
    run(body())
