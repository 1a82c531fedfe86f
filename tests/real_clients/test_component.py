"""External components (XEP-0114) as slixmpp writes them: a ComponentXMPP bot connects with the
shared secret, clients talk to it (messages, disco, presence subscription) and it talks to them
(also while they are offline); a wrong secret is refused. And push notifications (XEP-0357) to a
slixmpp app server reached as a component."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import Any, List

import pytest
from slixmpp import ComponentXMPP
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from xmpp_helpers import Clients, delay_of, run, within


class EchoBot(ComponentXMPP):
    """Answers every chat message with its body reversed; disco and ping via slixmpp plugins."""

    def __init__(self, server: Any, secret: str) -> None:
        super().__init__(server.component_domain, secret, server.host, server.component_port)
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self["xep_0030"].add_identity(category="component", itype="generic", name="Echo bot")
        self.received: List[Any] = []
        self.presences: List[Any] = []
        self.errors: List[str] = []
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self.started.set())
        self.add_event_handler("disconnected", lambda _: self.ended.set())
        self.add_event_handler("stream_error",
                               lambda e: self.errors.append(e["condition"]))
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("presence_subscribe", self.on_subscribe)

    def on_message(self, msg: Any) -> None:
        self.received.append(msg)
        if msg["type"] in ("chat", "normal") and msg["body"]:
            msg.reply(msg["body"][::-1]).send()

    def on_subscribe(self, pres: Any) -> None:
        self.presences.append(pres)
        self.send_presence(pto=pres["from"].bare, pfrom=pres["to"].bare, ptype="subscribed")


def needs_component(server: Any) -> None:
    if not server.component_port:
        pytest.skip("the server under test has no component configured")


async def start_bot(server: Any, secret: str) -> EchoBot:
    bot = EchoBot(server, secret)
    bot.connect()
    await within(bot.started.wait(), "component handshake")
    return bot


def test_component_and_clients_talk(server, new_account):
    needs_component(server)
    a, c = new_account(prefix="a"), new_account(prefix="c")
    dom = server.component_domain

    async def body():
        bot = await start_bot(server, server.component_secret)
        try:
            async with Clients(server) as cs:
                ca = await cs.online(a, label="A")
                # messages both ways
                ca.send_message(mto=f"echo@{dom}", mbody="stressed", mtype="chat")
                reply = await ca.wait_message(
                    lambda m: m["body"] == "desserts", "the bot's reply")
                assert reply["from"].bare == f"echo@{dom}"
                got = bot.received[-1]
                assert got["from"] == ca.boundjid, got
                # discovery answered by the component's own slixmpp plugin
                info = await within(ca["xep_0030"].get_info(jid=dom), "disco#info of the bot")
                idents = info["disco_info"]["identities"]
                assert ("component", "generic", None, "Echo bot") in idents, idents
                # and a ping, the other way round: the bot pings the client
                await within(bot["xep_0199"].ping(ca.boundjid, ifrom=dom), "bot pings client")
                # the server lists the component among its services
                items = await within(ca["xep_0030"].get_items(jid=server.domain), "disco#items")
                assert dom in [i[0] for i in items["disco_items"]["items"]], items
                # presence subscription to the bot, approved by the bot
                ca.send_presence(pto=f"echo@{dom}", ptype="subscribe")
                await ca.wait_presence(lambda p: p["type"] == "subscribed"
                                       and p["from"].bare == f"echo@{dom}", "bot approves")
                roster = await ca.roster_items()
                assert roster.get(f"echo@{dom}", {}).get("subscription") == "to", roster
                # a message from the bot to an account that is offline waits for it
                bot.send_message(mto=c.jid, mfrom=f"news@{dom}", mbody="while you were away",
                                 mtype="chat")
                # the bot's stanzas are handled in order: its ping's answer means stored
                await within(bot["xep_0199"].ping(server.domain, ifrom=dom), "bot pings server")
                cc = await cs.online(c, label="C")
                m = await cc.wait_message(lambda m: m["body"] == "while you were away",
                                          "offline message from the bot")
                assert m["from"].bare == f"news@{dom}"
                assert delay_of(m) is not None
        finally:
            bot.disconnect()
            await within(bot.ended.wait(), "bot disconnects")

    run(body())


def test_component_gone_and_wrong_secret(server, new_account):
    needs_component(server)
    a = new_account(prefix="a")
    dom = server.component_domain

    async def body():
        # a wrong secret: no session, a stream error
        bad = EchoBot(server, "not-the-secret-at-all")
        bad.connect()
        await within(bad.ended.wait(), "refused component disconnected")
        assert not bad.started.is_set()
        assert "not-authorized" in bad.errors, bad.errors
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            # nobody serves the domain now: the client is told, not left waiting
            try:
                await within(ca["xep_0030"].get_info(jid=dom), "disco#info without the bot")
                raise AssertionError("an answer from a component that is not connected")
            except IqError as e:
                # Strait: service-unavailable (tests/component_raw.rs); Prosody 0.12 says
                # remote-server-timeout. Either way an error, at once.
                assert e.iq["error"]["condition"] in ("service-unavailable",
                                                      "remote-server-timeout"), e.iq

    run(body())


class PushAppServer(ComponentXMPP):
    """A XEP-0357 app server: records the notifications it gets (slixmpp parses the pubsub
    publish) and acknowledges them."""

    def __init__(self, server: Any) -> None:
        super().__init__(server.component_domain, server.component_secret, server.host,
                         server.component_port)
        self.register_plugin("xep_0004")
        self.register_plugin("xep_0060")
        self.notifications: List[Any] = []
        self.got = asyncio.Event()
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.add_event_handler("session_start", lambda _: self.started.set())
        self.add_event_handler("disconnected", lambda _: self.ended.set())
        self.register_handler(Callback("push notification",
                                       StanzaPath("iq@type=set/pubsub/publish"),
                                       self.on_publish))

    def on_publish(self, iq: Any) -> None:
        self.notifications.append(iq)
        self.got.set()
        iq.reply().send()


def test_push_notifications_to_an_app_server(server, new_account):
    needs_component(server)
    a, b = new_account(prefix="a"), new_account(prefix="b")
    dom = server.component_domain

    async def body():
        app = PushAppServer(server)
        app.connect()
        await within(app.started.wait(), "app server handshake")
        try:
            async with Clients(server) as cs:
                ca = await cs.online(a, resource="phone", label="A")
                info = await within(ca["xep_0030"].get_info(jid=a.jid), "account disco#info")
                if "urn:xmpp:push:0" not in info["disco_info"]["features"]:
                    pytest.skip("the server under test does not advertise XEP-0357")
                iq = ca.make_iq_set()
                iq.append(ET.fromstring(
                    f"<enable xmlns='urn:xmpp:push:0' jid='{dom}' node='device-a'>"
                    "<x xmlns='jabber:x:data' type='submit'>"
                    "<field var='FORM_TYPE'><value>"
                    "http://jabber.org/protocol/pubsub#publish-options</value></field>"
                    "<field var='secret'><value>tok-123</value></field></x></enable>"))
                await within(iq.send(), "enable push")
                await ca.logout()
                cb = await cs.online(b, label="B")
                cb.send_message(mto=a.jid, mbody="wake up, the kettle is on", mtype="chat")
                await within(app.got.wait(), "the notification at the app server")
                n = app.notifications[0]
                assert n["from"].bare == a.jid and n["from"].resource == "", n
                assert n["pubsub"]["publish"]["node"] == "device-a", n
                form = n["pubsub"]["publish_options"]
                assert form.get_values().get("secret") == "tok-123", n
                assert "kettle" not in str(n) and b.jid not in str(n), n
                assert "urn:xmpp:push:summary" in str(n), n
        finally:
            app.disconnect()
            await within(app.ended.wait(), "app server disconnects")

    run(body())
