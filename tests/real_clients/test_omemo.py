"""OMEMO end-to-end encryption through strait with slixmpp-omemo (real clients).

Two fresh accounts become mutual contacts, then log in with the slixmpp-omemo plugin, which
generates keys and publishes device lists and bundles over PEP (publish-options, max_items=max,
several bundle items per node). They exchange encrypted messages both ways in each protocol
version: OMEMO 0.3 (`eu.siacs.conversations.axolotl`, through the plugin's own
encrypt_message/decrypt_message) and OMEMO 2 (`urn:xmpp:omemo:2`, through the plugin's session
manager with a minimal XEP-0420 envelope). Finally the server's data directory is searched: no
plaintext of any encrypted message may be there, while a plain marker message stored for an
offline user is (positive control).
"""

from __future__ import annotations

import asyncio
import os
from typing import List

import pytest

oldmemo = pytest.importorskip("oldmemo")
twomemo = pytest.importorskip("twomemo")
slixmpp_omemo = pytest.importorskip("slixmpp_omemo")

from slixmpp import JID  # noqa: E402

from omemo_helpers import (NS_OLD, NS_TWO, OMEMO_TIMEOUT, befriend, files_containing,  # noqa: E402
                           knows_device, omemo_client, receive_encrypted, send_encrypted, tok)
from xmpp_helpers import Clients, run  # noqa: E402


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_omemo_both_namespaces_through_strait(server, new_account):
    if server.workdir is None:
        pytest.skip("needs the private strait server (its data directory is searched)")
    data_dir = os.path.join(server.workdir, "data")
    a, b, off = new_account(prefix="oa"), new_account(prefix="ob"), new_account(prefix="off")
    secrets_sent: List[str] = []
    ids_offline: List[str] = []

    async def body():
        async with Clients(server) as cs:
            pa = await cs.online(a, label="A-prep")
            pb = await cs.online(b, label="B-prep")
            await befriend(pa, pb)
            await asyncio.gather(pa.logout(), pb.logout())

            ca = await omemo_client(cs, a, "A")
            cb = await omemo_client(cs, b, "B")
            # Both device lists reach the contact by PEP +notify (caps) or on fetch.
            loop = asyncio.get_running_loop()
            end = loop.time() + 20
            while not (await knows_device(ca, cb) and await knows_device(cb, ca)):
                assert loop.time() < end, "device lists were not learned through PEP"
                await asyncio.sleep(0.3)
            # What the plugin published, as the server keeps it.
            for node in ("eu.siacs.conversations.axolotl.devicelist", "urn:xmpp:omemo:2:devices",
                         "urn:xmpp:omemo:2:bundles"):
                iq = await ca.plugin["xep_0060"].get_node_config(JID(a.jid), node, timeout=10)
                vals = iq["pubsub_owner"]["configure"]["form"].get_values()
                assert vals.get("pubsub#access_model") == "open", f"{node}: {vals}"
            sm_a = await ca.plugin["xep_0384"].get_session_manager()
            own_a = (await sm_a.get_own_device_information())[0]
            iq = await cb.plugin["xep_0060"].get_items(
                JID(a.jid), "urn:xmpp:omemo:2:bundles", item_ids=[str(own_a.device_id)], timeout=10)
            assert len(list(iq["pubsub"]["items"])) == 1, f"bundle of A by id: {iq}"

            for ns in (NS_OLD, NS_TWO):
                for snd, rcv, to in ((ca, cb, b.jid), (cb, ca, a.jid), (ca, cb, b.jid)):
                    secret = tok("SECRET")
                    secrets_sent.append(secret)
                    mid = await send_encrypted(snd, to, ns, secret)
                    await receive_encrypted(rcv, snd, mid, ns, secret)

            # An encrypted message to B while B is offline is stored as ciphertext.
            await cb.logout()
            await ca.sync()
            secret = tok("SECRET-offline")
            secrets_sent.append(secret)
            ids_offline.append(await send_encrypted(ca, b.jid, NS_OLD, secret))
            # Positive control: a plain message to an offline user is stored as is.
            marker = tok("PLAIN-MARKER")
            m = ca.make_message(mto=off.jid, mbody=marker, mtype="chat")
            marker_id = tok("plain")
            m["id"] = marker_id
            m.send()
            await ca.sync()
            ids_offline.append(marker_id)
            return marker

    marker = run(body(), timeout=3 * OMEMO_TIMEOUT)
    hits = files_containing(data_dir, [marker] + ids_offline + secrets_sent)
    assert hits[marker], f"positive control: plain marker not found under {data_dir}"
    for mid in ids_offline:
        assert hits[mid], f"offline message {mid} not found under {data_dir}"
    leaked = {s: f for s, f in hits.items() if s in secrets_sent and f}
    assert not leaked, f"plaintext of encrypted messages on the server's disk: {leaked}"
