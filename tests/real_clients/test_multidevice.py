"""Multi-device features with slixmpp's own plugins: carbons (XEP-0280) from a second resource,
blocking (XEP-0191), stanza ids (XEP-0359) and client state indication (XEP-0352)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, List

from slixmpp import JID

from xmpp_helpers import Clients, run

NS_SID = "urn:xmpp:sid:0"


def tok(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


async def online_with(cs: Clients, account, plugins: List[str], **kw: Any):
    c = cs.new(account, **kw)
    for p in plugins:
        c.register_plugin(p)
    return await c.login()


def record(client, event: str) -> List[Any]:
    box: List[Any] = []

    def on(msg: Any) -> None:
        box.append(msg)
        client._changed.set()

    client.add_event_handler(event, on)
    return box


def test_carbons_reach_the_second_resource(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            a1 = await online_with(cs, a, ["xep_0280"], resource="one", label="A1")
            a2 = await online_with(cs, a, ["xep_0280"], resource="two", label="A2")
            cb = await cs.online(b, label="B")
            sent, received = record(a2, "carbon_sent"), record(a2, "carbon_received")
            await a1.plugin["xep_0280"].enable(timeout=10)
            await a2.plugin["xep_0280"].enable(timeout=10)

            t1 = tok("sent")
            a1.make_message(mto=b.jid, mbody=t1, mtype="chat").send()
            await cb.wait_message(lambda m: m["body"] == t1, "message from A1")
            c = await a2.wait_cond(
                lambda: next((x for x in sent if x["carbon_sent"]["body"] == t1), None),
                "sent carbon on A2")
            assert c["from"].bare == JID(a.jid).bare, f"carbon from {c['from']}"
            assert str(c["carbon_sent"]["from"]) == a1.boundjid.full, c["carbon_sent"]["from"]

            t2 = tok("rcvd")
            cb.make_message(mto=a1.boundjid.full, mbody=t2, mtype="chat").send()
            await a1.wait_message(lambda m: m["body"] == t2, "message to A1")
            c = await a2.wait_cond(
                lambda: next((x for x in received if x["carbon_received"]["body"] == t2), None),
                "received carbon on A2")
            assert c["from"].bare == JID(a.jid).bare, f"carbon from {c['from']}"

            # private: no copy
            t3 = tok("private")
            m = a1.make_message(mto=b.jid, mbody=t3, mtype="chat")
            m.enable("carbon_private")
            m.send()
            await cb.wait_message(lambda m: m["body"] == t3, "private message")
            await a2.sync()
            await asyncio.sleep(0.5)
            assert not [x for x in sent if x["carbon_sent"]["body"] == t3], "private was copied"
    run(body())


def test_blocking_with_slixmpp(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            cb = await online_with(cs, b, ["xep_0191"], resource="one", label="B1")
            cb2 = await online_with(cs, b, ["xep_0191"], resource="two", label="B2")
            pushes = record(cb2, "blocked")
            assert await cb2.plugin["xep_0191"].get_blocked_jids(timeout=10) == set()

            await cb.plugin["xep_0191"].block(JID(a.jid), timeout=10)
            blocked = await cb.plugin["xep_0191"].get_blocked_jids(timeout=10)
            assert JID(a.jid) in blocked, blocked
            await cb2.wait_cond(lambda: pushes, "block push on B2")

            t1 = tok("blocked")
            msg = ca.make_message(mto=b.jid, mbody=t1, mtype="chat")
            msg["id"] = t1
            msg.send()
            err = await ca.wait_cond(
                lambda: next((e for e in ca.message_errors if e["id"] == t1), None),
                "error for the blocked message")
            assert err["error"]["condition"] == "service-unavailable", err
            await cb.sync()
            await asyncio.sleep(0.5)
            assert not [m for m in cb.messages if m["body"] == t1], "blocked message delivered"

            await cb.plugin["xep_0191"].unblock(JID(a.jid), timeout=10)
            assert JID(a.jid) not in await cb.plugin["xep_0191"].get_blocked_jids(timeout=10)
            t2 = tok("unblocked")
            ca.make_message(mto=b.jid, mbody=t2, mtype="chat").send()
            await cb.wait_message(lambda m: m["body"] == t2, "message after unblock")
    run(body())


def test_stanza_ids_with_slixmpp(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = await online_with(cs, a, ["xep_0359"], label="A")
            cb = await online_with(cs, b, ["xep_0359"], label="B")
            info = await cb.plugin["xep_0030"].get_info(jid=JID(b.jid).bare, timeout=10)
            assert NS_SID in info["disco_info"]["features"], info["disco_info"]["features"]
            ids = []
            for i in range(2):
                t = tok(f"sid{i}")
                m = ca.make_message(mto=b.jid, mbody=t, mtype="chat")
                m["origin_id"]["id"] = f"origin-{t}"
                m.send()
                got = await cb.wait_message(lambda m, t=t: m["body"] == t, f"message {i}")
                stamped = got.xml.findall(f"{{{NS_SID}}}stanza-id")
                mine = [e.get("id") for e in stamped if e.get("by") == JID(b.jid).bare]
                assert len(mine) == 1 and mine[0], [e.attrib for e in stamped]
                assert got["origin_id"]["id"] == f"origin-{t}", got
                ids.append(mine[0])
            assert ids[0] != ids[1], ids
    run(body())


def test_csi_is_offered_and_accepted(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = cs.new(a, label="A")
            ca.register_plugin("xep_0352")
            enabled = record(ca, "csi_enabled")
            await ca.login()
            await ca.wait_cond(lambda: enabled, "csi stream feature")
            cb = await cs.online(b, label="B")
            ca.plugin["xep_0352"].send_inactive()
            await ca.sync()
            t = tok("urgent")
            cb.make_message(mto=a.jid, mbody=t, mtype="chat").send()
            await ca.wait_message(lambda m: m["body"] == t, "message while inactive")
            ca.plugin["xep_0352"].send_active()
            await ca.sync()
            assert "stream_error" not in " ".join(ca.events), ca.events
    run(body())
