"""Private storage as slixmpp does it: bookmarks (XEP-0048) kept through private XML storage
(XEP-0049) and through PEP with the XEP-0223 profile (persist_items, whitelist), read back by
another resource of the same account and refused to everybody else."""

from __future__ import annotations

from typing import Any, List

from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0048.stanza import Bookmarks

from xmpp_helpers import Clients, run, within

PLUGINS = ["xep_0048", "xep_0049", "xep_0223"]


async def online_with(cs: Clients, account, **kw: Any):
    c = cs.new(account, **kw)
    for p in PLUGINS:
        c.register_plugin(p)
    return await c.login()


def bookmarks() -> Bookmarks:
    b = Bookmarks()
    b.add_conference("lobby@muc.example.test", "al", name="The lobby", autojoin=True)
    b.add_conference("r&d@muc.example.test", "al", name="R & D <team>")
    b.add_url("https://example.test/notes?a=1&b=2", name="Notes")
    return b


def conferences(stored: Any) -> List[tuple]:
    return sorted((str(c["jid"]), c["nick"], c["name"], c["autojoin"])
                  for c in stored["conferences"])


EXPECTED = [("lobby@muc.example.test", "al", "The lobby", True),
            ("r&d@muc.example.test", "al", "R & D <team>", False)]


def test_bookmarks_in_private_xml_storage(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            a1 = await online_with(cs, a, resource="phone", label="A1")
            # nothing stored yet: the empty element comes back
            r = await within(a1.plugin["xep_0048"].get_bookmarks(method="xep_0049"),
                             "empty bookmarks")
            assert conferences(r["private"]["bookmarks"]) == []

            await within(a1.plugin["xep_0048"].set_bookmarks(bookmarks(), method="xep_0049"),
                         "storing bookmarks (XEP-0049)")
            # another resource of the same account reads them back
            a2 = await online_with(cs, a, resource="laptop", label="A2")
            r = await within(a2.plugin["xep_0048"].get_bookmarks(method="xep_0049"),
                             "bookmarks from the second resource")
            stored = r["private"]["bookmarks"]
            assert conferences(stored) == EXPECTED
            assert [(u["url"], u["name"]) for u in stored["urls"]] == [
                ("https://example.test/notes?a=1&b=2", "Notes")]

            # another account can neither read nor overwrite them
            cb = await online_with(cs, b, label="B")
            iq = cb.make_iq_get(ito=a.jid)
            iq["private"].enable("bookmarks")
            try:
                await within(iq.send(), "B reading A's private storage")
                raise AssertionError("B read A's private storage")
            except IqError as e:
                assert e.iq["error"]["condition"] in ("forbidden", "service-unavailable"), e.iq
            evil = Bookmarks()
            evil.add_conference("evil@muc.example.test", "mallory")
            iq = cb.make_iq_set(ito=a.jid)
            iq["private"].append(evil)
            try:
                await within(iq.send(), "B writing A's private storage")
                raise AssertionError("B wrote A's private storage")
            except IqError as e:
                assert e.iq["error"]["condition"] in ("forbidden", "service-unavailable"), e.iq
            # B's own storage is his, and empty
            r = await within(cb.plugin["xep_0048"].get_bookmarks(method="xep_0049"),
                             "B's own bookmarks")
            assert conferences(r["private"]["bookmarks"]) == []
            r = await within(a1.plugin["xep_0048"].get_bookmarks(method="xep_0049"),
                             "A's bookmarks, unchanged")
            assert conferences(r["private"]["bookmarks"]) == EXPECTED

    run(body())


def test_bookmarks_in_pep_private_storage(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            a1 = await online_with(cs, a, resource="phone", label="A1")
            await within(a1.plugin["xep_0048"].set_bookmarks(bookmarks(), method="xep_0223"),
                         "storing bookmarks (XEP-0223)")
            a2 = await online_with(cs, a, resource="laptop", label="A2")
            r = await within(a2.plugin["xep_0048"].get_bookmarks(method="xep_0223"),
                             "bookmarks from the second resource")
            items = list(r["pubsub"]["items"])
            assert len(items) == 1, r
            assert conferences(items[0]["bookmarks"]) == EXPECTED
            # the node is whitelisted: another account cannot read it
            cb = await online_with(cs, b, label="B")
            try:
                await within(cb.plugin["xep_0060"].get_items(a.jid, "storage:bookmarks"),
                             "B reading A's PEP bookmarks")
                raise AssertionError("B read A's whitelisted node")
            except IqError as e:
                # XEP-0060 asks for not-allowed with closed-node (what Strait sends, see
                # tests/pep_raw.rs); Prosody 0.12 answers forbidden. Either way, no items.
                assert e.iq["error"]["condition"] in ("not-allowed", "forbidden"), e.iq
            # storing again replaces the one item (same publish-options, no conflict)
            fewer = Bookmarks()
            fewer.add_conference("lobby@muc.example.test", "al2")
            await within(a1.plugin["xep_0048"].set_bookmarks(fewer, method="xep_0223"),
                         "storing bookmarks again")
            r = await within(a2.plugin["xep_0048"].get_bookmarks(method="xep_0223"),
                             "bookmarks after the second store")
            items = list(r["pubsub"]["items"])
            assert [conferences(i["bookmarks"]) for i in items] == [
                [("lobby@muc.example.test", "al2", "lobby@muc.example.test", False)]], r

    run(body())
