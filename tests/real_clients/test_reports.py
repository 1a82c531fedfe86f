"""Blocking and abuse reports across the boundary, with slixmpp's own XEP-0191 and XEP-0377
plugins: a platform user blocks and reports a provider's user; the block holds across the
boundary, and the operator reviews the report with `strait report` and sees it counted
against the provider (`strait provider show`).

The provider's user sends an OMEMO-shaped message (the boundary checks the shape, not the
cryptography; test_interop.py holds real OMEMO conversations): what matters here is that the
report names it by the stanza-id the platform gave it, and that the server records what it
saw of it: who sent it, through which provider, encrypted.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from interop_helpers import condition_of, register_provider  # noqa: F401  (also registers OAUTHBEARER)
from test_interop import enlisted
from xmpp_helpers import Clients, run

NS_REPORTING = "urn:xmpp:reporting:1"
OMEMO = ("<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='7'>"
         "<key rid='9'>AAAA</key><iv>AAAAAAAAAAAAAAAA</iv></header><payload>AAAA</payload>"
         "</encrypted>")


def reports(server, *args: str):
    res = server.cli("report", "list", "--json", *args)
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def test_a_platform_user_blocks_and_reports_a_provider_user(server, new_account):
    if server.kind != "strait":
        import pytest
        pytest.skip("needs strait's provider registry and reports")
    pid, domain, backend = register_provider(server)
    a = new_account(prefix="rep")
    server.cli("user", "consent", a.jid, "--on", "--allow", pid)

    async def body():
        async with Clients(server) as cs:
            ca = cs.new(a, label="A")
            for plugin in ("xep_0191", "xep_0377", "xep_0359"):
                ca.register_plugin(plugin)
            await ca.login()
            b = await enlisted(cs, server, backend, domain, "B")
            bob = b.boundjid.bare

            info = await ca.plugin["xep_0030"].get_info(jid=server.domain)
            assert NS_REPORTING in info["disco_info"]["features"], info

            msg = b.make_message(mto=a.jid, mtype="chat")
            msg["id"] = "spam-1"
            msg["body"] = "I sent you an OMEMO encrypted message"  # as OMEMO clients do
            msg.append(ET.fromstring(OMEMO))
            msg.send()
            got = await ca.wait_message(lambda m: m["id"] == "spam-1", "the provider's message")
            sid = got["stanza_id"]
            assert sid["by"] == a.jid and sid["id"], got
            stanza_id = sid["id"]

            # slixmpp's own report: a block with a reason and nothing else.
            await ca.plugin["xep_0377"].report(bob, reason="spam")
            blocked = await ca.plugin["xep_0191"].get_blocked()
            assert bob in {str(i["jid"]) for i in blocked["blocklist"]["items"]}, blocked
            first = reports(server, "--provider", pid)
            assert len(first) == 1, first
            assert (first[0]["reporter"], first[0]["reported"], first[0]["reason"]) == \
                (a.jid, bob, "spam")
            assert first[0]["messages"] == [] and first[0]["closed"] is None, first

            # The block holds across the boundary: bob learns nothing but that it failed.
            msg = b.make_message(mto=a.jid, mtype="chat")
            msg["id"] = "spam-2"
            msg["body"] = "I sent you an OMEMO encrypted message"
            msg.append(ET.fromstring(OMEMO))
            msg.send()
            err = await b.wait_cond(lambda: next((e for e in b.message_errors
                                                  if e["id"] == "spam-2"), None), "the bounce")
            assert condition_of(err) == "service-unavailable", err

            # Unblock, then block again with a fuller report (the text and the message, by
            # its stanza-id), built on slixmpp's stanza classes: it replaces the open one.
            await ca.plugin["xep_0191"].unblock([bob])
            iq = ca.make_iq_set()
            item = ET.SubElement(iq.xml, "{urn:xmpp:blocking}block")
            item = ET.SubElement(item, "{urn:xmpp:blocking}item", {"jid": bob})
            rep = ET.SubElement(item, f"{{{NS_REPORTING}}}report",
                                {"reason": "urn:xmpp:reporting:abuse"})
            ET.SubElement(rep, "{urn:xmpp:sid:0}stanza-id", {"by": a.jid, "id": stanza_id})
            text = ET.SubElement(rep, f"{{{NS_REPORTING}}}text",
                                 {"{http://www.w3.org/XML/1998/namespace}lang": "en"})
            text.text = "threatening messages"
            await iq.send()

            now = reports(server, "--provider", pid, "--open")
            assert len(now) == 1 and now[0]["id"] != first[0]["id"], now
            r = now[0]
            assert (r["reason"], r["text"]) == ("abuse", "threatening messages"), r
            [m] = r["messages"]
            assert m["stanza_id"] == stanza_id and m["found"], m
            assert m["from"] == f"{bob}/{b.boundjid.resource}" and m["from_reported"], m
            assert m["origin"] == pid and m["encrypted"], m

            # A report the server cannot take is refused whole: nothing is blocked.
            iq = ca.make_iq_set()
            item = ET.SubElement(iq.xml, "{urn:xmpp:blocking}block")
            item = ET.SubElement(item, "{urn:xmpp:blocking}item", {"jid": f"eve@{domain}"})
            ET.SubElement(item, f"{{{NS_REPORTING}}}report", {"reason": "rude"})
            try:
                await iq.send()
                raise AssertionError("a report with an unknown reason was accepted")
            except Exception as e:  # slixmpp's IqError
                assert getattr(e, "condition", "") == "bad-request", e
                assert "unknown report reason" in e.text, e.text
            blocked = await ca.plugin["xep_0191"].get_blocked()
            assert f"eve@{domain}" not in {str(i["jid"]) for i in blocked["blocklist"]["items"]}

            # The operator: the provider's count, the report whole, then closed.
            show = server.cli("provider", "show", pid).stdout
            assert "reports:     1 open about 1 of its users" in show, show
            whole = server.cli("report", "show", str(r["id"])).stdout
            assert "threatening messages (the reporter's words)" in whole, whole
            assert f"via provider {pid}, end-to-end encrypted" in whole, whole
            server.cli("report", "close", str(r["id"]), "--note", "sent to the provider",
                       "--actor", "test")
            assert reports(server, "--provider", pid, "--open") == []
            again = server.cli("report", "close", str(r["id"]), "--note", "x", check=False)
            assert again.returncode == 1 and "already closed" in again.stderr, again

    run(body())
