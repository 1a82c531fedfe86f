"""One avatar, whichever way a client sets it (XEP-0398): slixmpp sets a vCard photo
(XEP-0153) and another slixmpp client reads it as a PEP avatar (XEP-0084); slixmpp publishes an
open PEP avatar and the other reads it from the vCard (XEP-0054)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from slixmpp.plugins.xep_0004.stanza import Form

from xmpp_helpers import Clients, run, within

PLUGINS = ["xep_0004", "xep_0054", "xep_0060", "xep_0084", "xep_0153", "xep_0163"]
# Not real images: the server treats avatars as bytes and checks only their SHA-1.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3
JPEG = b"\xff\xd8\xff\xe0" + bytes(reversed(range(256))) * 2


async def online_with(cs: Clients, account, **kw: Any):
    c = cs.new(account, **kw)
    for p in PLUGINS:
        c.register_plugin(p)
    return await c.login()


def open_access() -> Form:
    f = Form()
    f["type"] = "submit"
    f.add_field(var="FORM_TYPE", ftype="hidden",
                value="http://jabber.org/protocol/pubsub#publish-options")
    f.add_field(var="pubsub#access_model", value="open")
    return f


def test_vcard_photo_and_pep_avatar_are_one(server, new_account):
    a, b = new_account(prefix="a"), new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            ca = await online_with(cs, a, label="A")
            cb = await online_with(cs, b, label="B")
            info = await within(ca["xep_0030"].get_info(jid=a.jid), "account disco#info")
            if "urn:xmpp:pep-vcard-conversion:0" not in info["disco_info"]["features"]:
                pytest.skip("the server under test does not convert avatars (XEP-0398)")

            # vCard photo (XEP-0153) -> PEP avatar (XEP-0084)
            await within(ca["xep_0153"].set_avatar(avatar=PNG, mtype="image/png"),
                         "A sets a vCard avatar")
            png_id = hashlib.sha1(PNG).hexdigest()
            meta = await within(cb["xep_0060"].get_items(a.jid, "urn:xmpp:avatar:metadata"),
                                "B reads A's avatar metadata")
            info0 = meta.xml.find(".//{urn:xmpp:avatar:metadata}info")
            assert info0 is not None, meta
            assert (info0.get("id"), info0.get("type"), int(info0.get("bytes"))) == \
                (png_id, "image/png", len(PNG)), meta
            data = await within(cb["xep_0084"].retrieve_avatar(a.jid, png_id),
                                "B fetches A's avatar data")
            assert data["pubsub"]["items"]["item"]["avatar_data"]["value"] == PNG

            # open PEP avatar (XEP-0084) -> vCard photo (XEP-0054)
            jpeg_id = ca["xep_0084"].generate_id(JPEG)
            await within(ca["xep_0084"].publish_avatar(JPEG, options=open_access()),
                         "A publishes avatar data")
            await within(ca["xep_0084"].publish_avatar_metadata(
                items=[{"id": jpeg_id, "type": "image/jpeg", "bytes": len(JPEG)}],
                options=open_access()), "A publishes avatar metadata")
            vcard = await within(cb["xep_0054"].get_vcard(a.jid, cached=False),
                                 "B reads A's vCard")
            photo = vcard["vcard_temp"]["PHOTO"]
            assert photo["TYPE"] == "image/jpeg", vcard
            assert photo["BINVAL"] == JPEG

    run(body())
