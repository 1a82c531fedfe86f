"""Stream resumption (XEP-0198) with slixmpp's own stream management: a client whose network
goes away, and comes back within the window, resumes its session and gets what it missed —
the stanzas the server wrote that never reached it, and those sent during the outage — once
each, without binding a new session.
"""

from __future__ import annotations

import asyncio
from typing import Any

from xmpp_helpers import Clients, run, within


def bodies(c: Any) -> list:
    return [m["body"] for m in c.messages]


def test_resumed_stream_gets_what_it_missed(server, new_account):
    alice, bob = new_account(prefix="alice"), new_account(prefix="bob")

    async def body() -> None:
        async with Clients(server) as cs:
            a = await cs.online(alice, label="alice")
            b = cs.new(bob, resource="phone", label="bob")
            b.register_plugin("xep_0198")
            await b.login()
            sm = b.plugin["xep_0198"]
            assert sm.sm_id, "the server offered no resumable session"
            full = b.boundjid.full

            a.send_message(mto=full, mbody="before", mtype="chat")
            await b.wait_message(lambda m: m["body"] == "before", "the first message")
            await within(_until(lambda: sm.handled >= 1), "bob handled it")

            # The radio goes: bob stops reading (what the server writes now stays in buffers)
            # and then the connection dies without a closing tag.
            b.transport.pause_reading()
            a.send_message(mto=full, mbody="unread", mtype="chat")
            await a.sync()
            b.transport.abort()
            await asyncio.sleep(0.2)
            a.send_message(mto=full, mbody="during", mtype="chat")
            # Sent to bob's bare JID as well: the waiting session is still bob's device.
            a.send_message(mto=bob.jid, mbody="to-bare", mtype="chat")
            await a.sync()
            assert not a.message_errors, [str(m) for m in a.message_errors]

            resumed = asyncio.get_running_loop().create_future()
            b.add_event_handler("session_resumed",
                                lambda _e: resumed.done() or resumed.set_result(True))
            b._closing = False
            b.connect(server.host, server.c2s_port)
            await within(resumed, "session_resumed")
            assert b.boundjid.full == full, "resumption keeps the bound resource"
            await b.wait_cond(lambda: {"unread", "during", "to-bare"} <= set(bodies(b)),
                              "the missed messages")
            await b.sync()
            got = bodies(b)
            assert got.count("before") == 1, got
            assert got.count("unread") == 1, got
            assert got.index("unread") < got.index("during"), got
            # The resumed session is a working session both ways.
            b.send_message(mto=alice.jid, mbody="back", mtype="chat")
            await a.wait_message(lambda m: m["body"] == "back", "bob's reply")

    run(body())


async def _until(pred: Any) -> None:
    while not pred():
        await asyncio.sleep(0.01)
