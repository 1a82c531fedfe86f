"""The reliability contract under a crash: a message the server acknowledged (XEP-0198 <a h/>)
is delivered, even if the server process is killed with SIGKILL right after.

Several slixmpp clients with stream management send a stream of messages to an online contact
(whose own client acknowledges what it receives, then stops reading its socket, as a phone
whose network went away) and to an offline one. Mid-stream the server
gets SIGKILL. It is restarted on the same data directory, the recipients log in, and every
message whose acknowledgement reached its sender must arrive:

- the offline recipient gets each exactly once;
- the online recipient gets each at least once, and any message it sees twice (received before
  the crash, but the crash came before its acknowledgement reached the server) carries the same
  XEP-0359 stanza-id every time, so the client de-duplicates it to exactly once.

This test starts its own server (it kills it), like conftest's, and stops it by pid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import defaultdict
from typing import Any, Dict, List, Set, Tuple

import pytest

from conftest import STARTUP_TIMEOUT, port_open, start_strait, stop_strait
from xmpp_helpers import Account, Clients, run, within

NS_SID = "urn:xmpp:sid:0"
SENDERS = ("alice", "carol", "dave")
PER_SENDER = 60          # 30 to each recipient: below the server's offline quota in total
KILL_AFTER_ACKS = 45     # acknowledged messages (all senders) before the SIGKILL


def restart(server: Any) -> None:
    """Start the same binary on the same config and data directory, wait until it listens."""
    env = dict(os.environ, STRAIT_LOG="info", NO_COLOR="1", RUST_BACKTRACE="1")
    log = open(server.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
    server.proc = subprocess.Popen([server.binary, "serve", "--config", server.config_path],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    log.close()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not (port_open(server.host, server.c2s_port) and port_open(server.host, server.tls_port)):
        if server.proc.poll() is not None:
            raise AssertionError(f"restarted server exited ({server.proc.returncode}):\n"
                                 f"{server.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"restarted server not listening:\n{server.log_tail()}")
        time.sleep(0.1)


def stanza_ids(msg: Any, by: str) -> List[str]:
    return [el.get("id") for el in msg.xml.findall(f"{{{NS_SID}}}stanza-id") if el.get("by") == by]


@pytest.fixture
def own_server():
    srv = start_strait()
    try:
        yield srv
    finally:
        stop_strait(srv)


def test_sigkill_loses_no_acknowledged_message(own_server):
    srv = own_server
    domain = srv.domain
    accounts = {}
    for name in (*SENDERS, "bob", "erin"):
        acc = Account(f"{name}-{os.getpid()}@{domain}", f"pw-{name}-rel")
        srv.add_user(acc.jid, acc.password)
        accounts[name] = acc
    bob, erin = accounts["bob"].jid, accounts["erin"].jid

    acked: Set[Tuple[str, str]] = set()        # (recipient bare JID, message id)
    sent: Set[Tuple[str, str]] = set()
    bounced: Set[str] = set()
    stalled: List[int] = []                     # messages bob had read when he stopped reading

    async def before_crash() -> List[Any]:
        async with Clients(srv) as cs:
            receiver = cs.new(accounts["bob"], resource="phone", label="bob")
            receiver.register_plugin("xep_0198")
            await receiver.login()
            senders = []
            for name in SENDERS:
                c = cs.new(accounts[name], resource="pc", label=name)
                c.register_plugin("xep_0198")

                def on_acked(stanza: Any) -> None:
                    if stanza.name == "message" and stanza["id"]:
                        acked.add((stanza["to"].bare, stanza["id"]))
                c.add_event_handler("stanza_acked", on_acked)
                c.add_event_handler(
                    "message_error", lambda m: bounced.add(m["id"]))
                await c.login(presence=False)
                await c.wait_cond(lambda c=c: c.plugin["xep_0198"].enabled_in,
                                  f"{name}: stream management enabled")
                senders.append((name, c))
            await receiver.wait_cond(lambda: receiver.plugin["xep_0198"].enabled_in,
                                     "bob: stream management enabled")

            # Our own message ids, to match acknowledgements with deliveries.
            async def send_all_with_ids(name: str, c: Any) -> None:
                for n in range(PER_SENDER):
                    to = bob if n % 2 == 0 else erin
                    mid = f"{name}-{n}"
                    m = c.make_message(mto=to, mbody=f"reliable {mid}", mtype="chat")
                    m["id"] = mid
                    m.send()
                    sent.add((to, mid))
                    await asyncio.sleep(0.01)
                    if srv.proc.poll() is not None:
                        return

            async def stall_receiver() -> None:
                # Once bob has read a few messages his client stops reading its socket, like a
                # phone whose radio went away: what the server writes to him from then on sits
                # in buffers and is lost with the connection. Only storage can bring it back.
                await receiver.wait_cond(lambda: len(receiver.messages) >= 5,
                                         "bob's first messages", timeout=30)
                receiver.transport.pause_reading()
                stalled.append(len(receiver.messages))

            tasks = [asyncio.ensure_future(send_all_with_ids(n, c)) for n, c in senders]
            tasks.append(asyncio.ensure_future(stall_receiver()))
            await within(_until(lambda: len(acked) >= KILL_AFTER_ACKS),
                         f"{KILL_AFTER_ACKS} acknowledgements", timeout=30)
            os.kill(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait(timeout=10)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            received = list(receiver.messages)
            for c in cs.all:
                c.kill()
            return received

    bob_before = run(before_crash(), timeout=60)
    acked_at_kill = set(acked)
    sent_at_kill = set(sent)
    assert len(acked_at_kill) >= KILL_AFTER_ACKS
    assert stalled, "bob never stopped reading before the kill"
    assert sent_at_kill > acked_at_kill, \
        "every message was acknowledged before the kill: the crash did not hit mid-stream"

    restart(srv)

    async def after_restart() -> Tuple[List[Any], List[Any]]:
        async with Clients(srv) as cs:
            b = await cs.online(accounts["bob"], resource="phone2", label="bob2")
            e = await cs.online(accounts["erin"], resource="tablet", label="erin")
            want_bob = {mid for to, mid in acked_at_kill if to == bob} - bounced
            want_erin = {mid for to, mid in acked_at_kill if to == erin} - bounced
            seen_bob = {m["id"] for m in bob_before}
            await b.wait_cond(lambda: want_bob <= seen_bob | {m["id"] for m in b.messages},
                              "every acknowledged message to bob", timeout=20)
            await e.wait_cond(lambda: want_erin <= {m["id"] for m in e.messages},
                              "every acknowledged message to erin", timeout=20)
            # Let anything extra (a duplicate) arrive too before judging.
            await b.sync()
            await e.sync()
            return list(b.messages), list(e.messages)

    bob_after, erin_after = run(after_restart(), timeout=60)
    assert not bounced, f"messages bounced with errors: {sorted(bounced)}"

    # erin was offline all along: exactly once each, from storage.
    erin_counts: Dict[str, int] = defaultdict(int)
    for m in erin_after:
        erin_counts[m["id"]] += 1
    for to, mid in acked_at_kill:
        if to == erin:
            assert erin_counts[mid] == 1, f"{mid} reached erin {erin_counts[mid]} times"
    assert all(n == 1 for n in erin_counts.values()), \
        f"duplicates for erin: {[k for k, n in erin_counts.items() if n > 1]}"

    # bob was online: at least once, and copies of one message share one stanza-id.
    copies: Dict[str, Set[str]] = defaultdict(set)
    for m in bob_before + bob_after:
        ids = stanza_ids(m, bob)
        assert len(ids) == 1, f"message {m['id']} to bob has stanza-ids {ids}"
        copies[m["id"]].add(ids[0])
    for to, mid in acked_at_kill:
        if to == bob:
            assert mid in copies, f"acknowledged message {mid} never reached bob"
    split = {mid: sids for mid, sids in copies.items() if len(sids) > 1}
    assert not split, f"one message delivered as different messages (stanza-ids): {split}"
    dups = sum(1 for m in bob_before + bob_after) - len(copies)
    print(f"sent {len(sent_at_kill)}, acknowledged {len(acked_at_kill)} before SIGKILL; "
          f"bob read {stalled[0]} then stalled; bob got {len(copies)} distinct ({dups} redelivered), erin {len(erin_counts)}")
    # Nothing arrives that was not sent.
    assert set(copies) <= {mid for to, mid in sent_at_kill if to == bob}
    assert set(erin_counts) <= {mid for to, mid in sent_at_kill if to == erin}


async def _until(pred: Any) -> None:
    while not pred():
        await asyncio.sleep(0.01)
