"""One-to-one messages between real clients: live, offline, across virtual hosts."""

from __future__ import annotations

import asyncio
import secrets
import time

from xmpp_helpers import Clients, delay_of, parse_stamp, run


def tok(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def send(sender, to: str, body: str, mid: str, mtype: str = "chat") -> None:
    msg = sender.make_message(mto=to, mbody=body, mtype=mtype)
    msg["id"] = mid
    msg.send()


def by_id(mid: str):
    return lambda m: m["id"] == mid


async def expect_delivery(sender, receiver, to: str, label: str) -> None:
    """sender -> `to` (receiver's bare or full JID): body, id, from, to and type arrive intact."""
    mid, body = tok(f"id-{label}"), f"hello {label} {secrets.token_hex(4)} <&> ünï"
    send(sender, to, body, mid)
    m = await receiver.wait_message(by_id(mid), f"message {mid} ({label})")
    assert m["body"] == body, f"body changed: {m['body']!r} != {body!r}"
    assert m["type"] == "chat", f"type {m['type']!r}"
    assert str(m["from"]) == sender.boundjid.full, \
        f"from={m['from']!s}, expected sender's full JID {sender.boundjid.full}"
    if "/" in to:
        assert str(m["to"]) == to, f"to={m['to']!s}, expected {to}"
    else:
        assert str(m["to"]) in (to, receiver.boundjid.full), \
            f"to={m['to']!s}, expected {to} or {receiver.boundjid.full}"
    assert delay_of(m) is None, "live message carries a <delay/> (was it stored offline?)"


def test_message_both_ways(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            cb = await cs.online(b, label="B")
            await expect_delivery(ca, cb, b.jid, "a2b-bare")
            await expect_delivery(cb, ca, a.jid, "b2a-bare")
            await expect_delivery(ca, cb, cb.boundjid.full, "a2b-full")
            await expect_delivery(cb, ca, ca.boundjid.full, "b2a-full")
            assert not ca.message_errors and not cb.message_errors, \
                f"errors: {[str(m) for m in ca.message_errors + cb.message_errors]}"
            # nothing was echoed back to the senders
            assert not [m for m in ca.messages if str(m["from"]) == ca.boundjid.full]
            assert not [m for m in cb.messages if str(m["from"]) == cb.boundjid.full]
    run(body())


def test_message_from_is_stamped_by_server(server, new_account):
    """A forged 'from' must never reach the recipient. RFC 6120 lets the server stamp the real
    full JID, bounce the stanza, or close the stream with <invalid-from/>; all are accepted."""
    a, b, d = new_account(prefix="a"), new_account(prefix="b"), new_account(prefix="d")
    forged = f"ceo{secrets.token_hex(3)}@{server.domain}/forged"

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            cb = await cs.online(b, label="B")
            spoof_id, marker_id = tok("spoof"), tok("marker")
            msg = ca.make_message(mto=b.jid, mbody="spoofed", mtype="chat", mfrom=forged)
            msg["id"] = spoof_id
            msg.send()
            try:
                await ca.sync(timeout=5)   # the forged stanza has been handled by now
            except Exception:  # noqa: BLE001 - a stream closed with invalid-from is fine
                pass
            cd = await cs.online(d, label="D")
            send(cd, b.jid, "marker", marker_id)
            await cb.wait_message(by_id(marker_id), "marker message after the forged one")
            await asyncio.sleep(0.5)
            for m in cb.messages:
                assert str(m["from"]) != forged, f"forged from delivered: {m}"
                if m["id"] == spoof_id:
                    assert str(m["from"]) == ca.boundjid.full, f"from not stamped: {m}"
    run(body())


def test_offline_messages_delivered_in_order_once(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            ids = [tok(f"off{i}") for i in range(3)]
            t0 = time.time()
            for i, mid in enumerate(ids):
                send(ca, b.jid, f"offline #{i} {mid}", mid)
            await ca.sync()   # the server has processed (stored) all three before B logs in
            assert not ca.message_errors, \
                f"offline messages bounced: {[str(m) for m in ca.message_errors]}"

            cb = await cs.online(b, label="B1")
            await cb.wait_cond(lambda: all(any(m["id"] == i for m in cb.messages) for i in ids),
                                f"all offline messages {ids}")
            got = [m for m in cb.messages if m["id"] in ids]
            assert [m["id"] for m in got] == ids, \
                f"order/duplicates: got {[m['id'] for m in got]}, sent {ids}"
            for i, m in enumerate(got):
                assert m["body"] == f"offline #{i} {ids[i]}"
                assert m["from"].bare == a.jid, f"from={m['from']!s}"
                d = delay_of(m)
                assert d is not None, f"offline message without XEP-0203 <delay/>: {m}"
                assert d.get("from") == server.domain, \
                    f"delay from={d.get('from')!r}, expected {server.domain}"
                stamp = parse_stamp(d.get("stamp"))
                assert t0 - 120 <= stamp <= time.time() + 120, \
                    f"delay stamp {d.get('stamp')} is not around the send time"
            await cb.logout()

            # a further login gets none of them again; a fresh live message proves delivery works
            cb2 = await cs.online(b, label="B2")
            live = tok("live")
            send(ca, b.jid, "live after re-login", live)
            await cb2.wait_message(by_id(live), "live message after re-login")
            await asyncio.sleep(1.0)
            again = [m["id"] for m in cb2.messages if m["id"] in ids]
            assert not again, f"offline messages delivered twice: {again}"
    run(body())


def test_message_across_virtual_hosts(server, new_account):
    a = new_account(prefix="a")                         # on the first domain
    c = new_account(domain=server.other_domain, prefix="c")

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            cc = await cs.online(c, label="C")
            assert cc.boundjid.domain == server.other_domain
            await expect_delivery(ca, cc, c.jid, "localhost-to-other")
            await expect_delivery(cc, ca, ca.boundjid.full, "other-to-localhost")
    run(body())


def test_message_to_gone_resource_is_kept(server, new_account):
    """A chat message to a full JID whose resource has gone offline is handled like one to the
    bare JID (RFC 6121 8.5.3.2.1): stored, and delivered at the next login."""
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            cb = await cs.online(b, resource="phone", label="B1")
            gone = cb.boundjid.full
            await cb.logout()
            mid = tok("to-gone")
            send(ca, gone, "are you there?", mid)
            await ca.sync()
            assert not ca.message_errors, \
                f"chat to a gone resource bounced: {[str(m) for m in ca.message_errors]}"
            cb2 = await cs.online(b, resource="laptop", label="B2")
            m = await cb2.wait_message(by_id(mid), "message sent to the gone resource")
            assert m["body"] == "are you there?"
            assert str(m["from"]) == ca.boundjid.full
            assert delay_of(m) is not None, "stored message without <delay/>"
    run(body())
