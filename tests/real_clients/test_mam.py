"""Message Archive Management (XEP-0313) with slixmpp's own xep_0313 plugin: the archive holds
both directions of a conversation, in order, and pages (XEP-0059) without gaps or duplicates."""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime, timedelta, timezone
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
            # Archive metadata (#extended), as slixmpp asks for it: the first and last ids.
            if "urn:xmpp:mam:2#extended" in info["disco_info"]["features"]:
                md = await within(ca.plugin["xep_0313"].get_archive_metadata(), "metadata")
                start = md.xml.find("{urn:xmpp:mam:2}metadata/{urn:xmpp:mam:2}start")
                end = md.xml.find("{urn:xmpp:mam:2}metadata/{urn:xmpp:mam:2}end")
                assert (start.get("id"), end.get("id")) == (ids[0], ids[-1]), md
                assert start.get("timestamp") and end.get("timestamp"), md

    run(body())


def test_mam_filters_by_time(server, new_account):
    """`start` and `end` (XEP-0313 §4.1.2) select by the server's archive time, with and
    without `with`, and page (XEP-0059) inside the time range in both directions."""
    a, b, c = new_account(prefix="a"), new_account(prefix="b"), new_account(prefix="c")
    plugins = ["xep_0059", "xep_0297", "xep_0313", "xep_0359"]

    def texts(got):
        return [m["mam_result"]["forwarded"]["stanza"]["body"] for m in got]

    async def body():
        async with Clients(server) as cs:
            ca = await online_with(cs, a, plugins, label="A")
            cb = await online_with(cs, b, plugins, label="B")
            cc = await online_with(cs, c, plugins, label="C")

            async def send(sender, receiver, to, text):
                sender.make_message(mto=to, mbody=text, mtype="chat").send()
                await receiver.wait_message(lambda m, t=text: m["body"] == t, f"message {text}")

            before = [tok(f"early{i}") for i in range(3)]
            for text in before:
                await send(ca, cb, b.jid, text)
            # A gap of more than a second on each side of the boundary, so that the
            # boundary's precision (XEP-0082 allows whole seconds) does not matter.
            await asyncio.sleep(1.3)
            boundary = datetime.now(timezone.utc)
            await asyncio.sleep(1.3)
            after = []
            for i in range(5):
                if i == 2:
                    text = tok("from-c")
                    await send(cc, ca, a.jid, text)
                else:
                    text = tok(f"late{i}")
                    await send(cb, ca, a.jid, text)
                after.append(text)
            after_b = [t for t in after if not t.startswith("from-c")]

            got = await archived(ca, with_jid=JID(b.jid), start=boundary, rsm={"max": 2})
            assert texts(got) == after_b, texts(got)
            got = await archived(ca, with_jid=JID(b.jid), end=boundary, rsm={"max": 2})
            assert texts(got) == before, texts(got)
            # Everyone's, from the boundary on, by pages of 2, forwards and backwards (slixmpp
            # stops paging backwards at a page whose first index plus its length is the
            # count: the server sends no index on the last page).
            got = await archived(ca, start=boundary, rsm={"max": 2})
            assert texts(got) == after, texts(got)
            got = await archived(ca, start=boundary, reverse=True, rsm={"max": 2})
            assert texts(got) == list(reversed(after)), texts(got)
            got = await archived(ca, end=boundary, reverse=True, rsm={"max": 2})
            assert texts(got) == list(reversed(before)), texts(got)
            # Nothing after the newest message, nothing before the oldest.
            future = datetime.now(timezone.utc) + timedelta(hours=1)
            assert await archived(ca, start=future, rsm={"max": 5}) == []
            got = await archived(ca, end=boundary - timedelta(hours=1), rsm={"max": 5})
            assert got == [], texts(got)

    run(body())
