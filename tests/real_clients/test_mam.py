"""Message Archive Management (XEP-0313) with slixmpp's own xep_0313 plugin: the archive holds
both directions of a conversation, in order, and pages (XEP-0059) without gaps or duplicates."""

from __future__ import annotations

import secrets
from typing import Any, List

from slixmpp import JID

from xmpp_helpers import Clients, run, within

NS_MAM = "urn:xmpp:mam:2"


def tok(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


async def online_with(cs: Clients, account, plugins: List[str], **kw: Any):
    c = cs.new(account, **kw)
    for p in plugins:
        c.register_plugin(p)
    return await c.login()


async def archived(client, **kw: Any) -> List[Any]:
    """Every archived message matching the filters, paged by slixmpp (XEP-0059)."""
    out: List[Any] = []

    async def collect() -> None:
        async for m in client.plugin["xep_0313"].iterate(**kw):
            out.append(m)

    await within(collect(), f"MAM query {kw}")
    return out


def test_mam_archives_and_pages(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")
    plugins = ["xep_0059", "xep_0297", "xep_0313", "xep_0359"]

    async def body():
        async with Clients(server) as cs:
            ca = await online_with(cs, a, plugins, label="A")
            cb = await online_with(cs, b, plugins, label="B")
            info = await within(ca.plugin["xep_0030"].get_info(jid=JID(a.jid)), "disco#info")
            assert NS_MAM in info["disco_info"]["features"], info

            bodies = []
            for i in range(13):
                sender, to = (ca, b.jid) if i % 3 else (cb, a.jid)
                text = tok(f"m{i}")
                bodies.append(text)
                receiver = cb if sender is ca else ca
                sender.make_message(mto=to, mbody=text, mtype="chat").send()
                await receiver.wait_message(lambda m, t=text: m["body"] == t, f"message {text}")

            # All of it, in order, paged by 5.
            got = await archived(ca, with_jid=JID(b.jid), rsm={"max": 5})
            texts = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in got]
            assert texts == bodies, texts
            ids = [m["mam_result"]["id"] for m in got]
            assert len(set(ids)) == len(ids), ids
            # Bob's side: the same conversation, under his own ids.
            got_b = await archived(cb, rsm={"max": 4})
            assert [m["mam_result"]["forwarded"]["stanza"]["body"] for m in got_b] == bodies
            # From the end backwards.
            last = await archived(ca, with_jid=JID(b.jid), reverse=True, rsm={"max": 5}, total=5)
            assert [m["mam_result"]["forwarded"]["stanza"]["body"] for m in last] == \
                list(reversed(bodies))[:5]

    run(body())
