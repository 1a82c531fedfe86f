"""OMEMO over a resumed stream (XEP-0198 with slixmpp's xep_0198 and slixmpp-omemo).

Alice and Bob hold an established OMEMO conversation (each side has sent and received, so
Alice's messages are no longer key exchanges). Then Bob's network goes away: he stops reading,
Alice's next encrypted message is written by the server onto his connection (its bytes arrive
at his socket but are never parsed), and the connection dies without a closing tag. Alice sends
two more encrypted messages while he is away, one to his full JID and one to his bare JID.

Bob reconnects with the same client object (same OMEMO key store and sessions) and resumes the
stream: `session_resumed`, no second `session_start`, no new resource bind, same full JID. He
must get each missed message exactly once and in the order sent, and decrypt each with the
session he already had (none of them is a key exchange). Since the Double Ratchet consumes a
message key on decryption, a message delivered twice could not be decrypted twice, and one that
was lost could not be recovered from anywhere else here (no MAM, no offline storage: the session
is still Bob's). Finally Bob answers encrypted over the resumed stream and Alice decrypts it.

A server without resumption answers `<resume/>` with `<failed/>`: slixmpp then binds a new
session (second `session_start`), and this test fails at once, saying so.
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

import pytest

oldmemo = pytest.importorskip("oldmemo")
twomemo = pytest.importorskip("twomemo")
slixmpp_omemo = pytest.importorskip("slixmpp_omemo")

from omemo_helpers import (NS_OLD, NS_TWO, OMEMO_TIMEOUT, befriend, decrypt,  # noqa: E402
                           omemo_client, own_device, receive_encrypted, send_encrypted, tok,
                           wait_devices_known)
from xmpp_helpers import STEP_TIMEOUT, Clients, run, within  # noqa: E402

NAMESPACES = [pytest.param(NS_OLD, id="omemo0.3"), pytest.param(NS_TWO, id="omemo2")]

# Bytes of TLS records that must pile up, unparsed, on Bob's paused connection once the server
# has written Alice's encrypted message to it. Any OMEMO message stanza (header, key, iv,
# payload, fallback body) is larger; an SM <r/> alone is not.
WRITTEN_BYTES = 300


def secret_text(label: str) -> str:
    return f"{tok(label)} grüße, ключ ✓"


def ids_received(client: Any, mids: List[str]) -> List[str]:
    """The ids of `mids` among the messages `client` received, in arrival order, repeats kept."""
    return [m["id"] for m in client.messages if m["id"] in mids]


def key_for(stanza: Any, ns: str, rid: int) -> Optional[Any]:
    """The <key/> element of an OMEMO message addressed to device `rid`."""
    enc = stanza.xml.find(f"{{{ns}}}encrypted")
    assert enc is not None, f"no {ns} <encrypted/> in {stanza}"
    for key in enc.iter(f"{{{ns}}}key"):
        if key.get("rid") == str(rid):
            return key
    return None


def is_key_exchange(key: Any, ns: str) -> bool:
    attr = "prekey" if ns == NS_OLD else "kex"
    return key.get(attr) in ("true", "1")


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.timeout(2 * OMEMO_TIMEOUT)
def test_omemo_resumed_stream_decrypts_what_it_missed(server, new_account, ns):
    a, b = new_account(prefix="ora"), new_account(prefix="orb")

    async def body() -> None:
        async with Clients(server) as cs:
            pa = await cs.online(a, label="A-prep")
            pb = await cs.online(b, label="B-prep")
            await befriend(pa, pb)
            await asyncio.gather(pa.logout(), pb.logout())

            alice = await omemo_client(cs, a, "alice")
            # xep_0198 is registered before login, so SM is enabled right after the bind
            bob = await omemo_client(cs, b, "bob", resource="phone", extra_plugins=("xep_0198",))
            sm = bob.plugin["xep_0198"]
            assert sm.sm_id, "the server offered no resumable session to bob"
            assert "stream_management" in bob.features, bob.features
            binds: List[str] = []
            starts: List[str] = []
            bob.add_event_handler("session_bind", lambda j: binds.append(str(j)))
            bob.add_event_handler("session_start", lambda _e: starts.append("session_start"))
            full = bob.boundjid.full
            await wait_devices_known([(alice, bob), (bob, alice)])
            alice_dev, bob_dev = await own_device(alice), await own_device(bob)

            # The conversation: a key exchange each way, then one ordinary message from alice.
            for snd, rcv, to in ((alice, bob, full), (bob, alice, a.jid), (alice, bob, full)):
                secret = secret_text("SECRET-live")
                mid = await send_encrypted(snd, to, ns, secret)
                await receive_encrypted(rcv, snd, mid, ns, secret)
            await bob.sync()   # bob has handled (and counted) everything up to here
            handled_before = sm.handled
            assert handled_before > 0, "SM counts nothing on bob's side"

            # The radio goes. Bob stops reading: the server's next write reaches his connection
            # (TLS records pile up in its read buffer) but is never parsed.
            old_transport = bob.transport
            old_transport.pause_reading()
            base = old_transport.get_read_buffer_size()
            sent: List[tuple] = []   # (id, plaintext), in sending order
            secret = secret_text("SECRET-unread")
            sent.append((await send_encrypted(alice, full, ns, secret), secret))
            await alice.sync()
            await bob.wait_cond(lambda: old_transport.get_read_buffer_size() >= base + WRITTEN_BYTES,
                                "the server to write alice's message onto bob's connection")
            assert not ids_received(bob, [sent[0][0]]), "bob parsed a message while not reading"
            assert sm.handled == handled_before, (sm.handled, handled_before)
            old_transport.abort()   # no </stream:stream>: the connection is just gone
            await asyncio.sleep(0.2)

            # While bob is away: to his full JID, and to his bare JID (his session still waits).
            for to in (full, b.jid):
                secret = secret_text("SECRET-outage")
                sent.append((await send_encrypted(alice, to, ns, secret), secret))
            await alice.sync()
            assert not alice.message_errors, [str(m) for m in alice.message_errors]
            mids = [mid for mid, _ in sent]
            assert not ids_received(bob, mids), "bob got a message while disconnected"

            # Bob's network is back: the same client, key store and SM state connect again.
            loop = asyncio.get_running_loop()
            outcome: asyncio.Future = loop.create_future()

            def settle(what: str) -> Any:
                return lambda _e=None: outcome.done() or outcome.set_result(what)

            bob.add_event_handler("session_resumed", settle("resumed"))
            bob.add_event_handler("session_start", settle("new session (session_start again)"))
            bob.add_event_handler("sm_failed", settle("<failed/> to <resume/>"))
            bob._closing = False
            bob.connect(server.host, server.c2s_port)
            got = await within(outcome, "bob to resume or start a session")
            assert got == "resumed", f"bob's stream was not resumed: {got}; events {bob.events}"
            assert bob.boundjid.full == full, f"resumed as {bob.boundjid.full}, was {full}"
            assert not binds, f"a resource was bound again: {binds}"
            assert not starts, "session_start fired on resumption"
            assert bob.events.count("session_start") == 1, bob.events

            # Every missed message, once each, in order, without asking for anything.
            await bob.wait_cond(lambda: set(mids) <= set(ids_received(bob, mids)),
                                f"the missed messages {mids}", timeout=STEP_TIMEOUT)
            await bob.sync()   # anything the server still had queued has arrived by now
            order = ids_received(bob, mids)
            assert order == mids, f"bob received {order}, alice sent {mids}"

            by_id = {m["id"]: m for m in bob.messages if m["id"] in mids}
            for mid, secret in sent:
                m = by_id[mid]
                assert secret not in str(m), f"plaintext in the delivered stanza: {m}"
                assert m["from"] == alice.boundjid, f"{mid} from {m['from']}"
                key = key_for(m, ns, bob_dev.device_id)
                assert key is not None, f"{mid} is not encrypted for bob's device: {m}"
                assert not is_key_exchange(key, ns), \
                    f"{mid} is a key exchange: a new session, not the existing one: {m}"
                text, dev = await decrypt(bob, m, ns)
                assert text == secret, f"bob decrypted {text!r} from {mid}, sent {secret!r}"
                assert (dev.bare_jid, dev.device_id) == \
                    (alice_dev.bare_jid, alice_dev.device_id), f"{mid}: sender device {dev}"

            # The resumed stream works both ways, encrypted.
            secret = secret_text("SECRET-answer")
            mid = await send_encrypted(bob, a.jid, ns, secret)
            await receive_encrypted(alice, bob, mid, ns, secret)
            assert (await own_device(bob)).device_id == bob_dev.device_id
            assert not binds and bob.events.count("session_start") == 1, (binds, bob.events)

    run(body(), timeout=OMEMO_TIMEOUT)
