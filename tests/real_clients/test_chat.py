"""`strait chat` (the client SDK on the command line) against real clients.

slixmpp with slixmpp-omemo, an OMEMO implementation none of us wrote, is the other end: a
message `strait chat send` encrypts must decrypt there, and one the plugin encrypts must come
out of `strait chat listen` in clear, including after it waited offline. Then a provider's user
runs `strait chat` with a token (OAUTHBEARER) and talks to a platform user across the interop
boundary: refused with the server's reason before consent, which the platform user then gives
from `strait chat consent`, then delivered with the platform's origin stamp, which `strait chat` shows as a third-party chat. Files go both ways as
XEP-0454 media: `strait chat send-file` uploads ciphertext that slixmpp's xep_0454 decrypts, and
what slixmpp uploads and links is saved decrypted by `strait chat listen --save`.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

oldmemo = pytest.importorskip("oldmemo")
slixmpp_omemo = pytest.importorskip("slixmpp_omemo")

from conftest import strait_binary  # noqa: E402
from interop_helpers import register_provider  # noqa: E402
from omemo_helpers import (NS_OLD, NS_TWO, OMEMO_TIMEOUT, decrypt, omemo_client,  # noqa: E402
                           own_device, send_encrypted, tok)
from xmpp_helpers import Account, Clients, run, within  # noqa: E402
from test_upload import http, uploads_through_loopback  # noqa: E402,F401  (a fixture)
from slixmpp import JID  # noqa: E402

CHAT_TIMEOUT = 60


def chat(server, account: Account, store: str, *args: str, token: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    """`strait chat` as `account` with its own store; the password by environment, or a
    token file."""
    cmd = [server.binary or strait_binary(), "chat", "--jid", account.jid,
           "--server", f"{server.host}:{server.c2s_port}", "--ca-file", server.ca_file,
           "--store", store]
    if server.https_port:
        # upload.<domain> need not resolve here: file transfers go to the server's address.
        cmd += ["--http-via", f"{server.host}:{server.https_port}"]
    env = dict(os.environ, STRAIT_CHAT_PASSWORD=account.password)
    if token is not None:
        path = os.path.join(store + ".token")
        with open(path, "w") as fh:
            fh.write(token)
        cmd += ["--token-file", path]
        env.pop("STRAIT_CHAT_PASSWORD")
    res = subprocess.run(cmd + list(args), env=env, capture_output=True, text=True,
                         timeout=CHAT_TIMEOUT)
    if check and res.returncode != 0:
        raise AssertionError(f"strait chat {' '.join(args)} exited {res.returncode}\n"
                             f"stdout: {res.stdout}\nstderr: {res.stderr}")
    return res


def fingerprint(ed25519_identity: bytes) -> str:
    """An OMEMO fingerprint as clients show it: the Curve25519 form of the Ed25519 identity key
    (u = (1 + y) / (1 - y) mod 2^255 - 19, RFC 7748), hex, in groups of eight."""
    p = 2 ** 255 - 19
    y = int.from_bytes(ed25519_identity, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, p - 2, p) % p
    h = u.to_bytes(32, "little").hex()
    return " ".join(h[i:i + 8] for i in range(0, 64, 8))


def sent_id(res: subprocess.CompletedProcess) -> str:
    m = re.search(r"id (\S+)$", res.stdout.strip())
    assert m, f"no message id in {res.stdout!r}"
    return m.group(1)


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_strait_chat_and_slixmpp_omemo_both_ways(server, new_account):
    a, b = new_account(prefix="ca"), new_account(prefix="cb")
    store = tempfile.mkdtemp(prefix="strait-chat-")
    sa = os.path.join(store, "a")
    first, second = tok("CHAT-one"), tok("CHAT-two")
    back, offline = tok("OMEMO-back"), tok("OMEMO-offline")

    async def body():
        async with Clients(server) as cs:
            cb = await omemo_client(cs, b, "B")
            # strait chat -> slixmpp-omemo: a new session (a key exchange), then on it.
            for secret in (first, second):
                res = await asyncio.to_thread(chat, server, a, sa, "send", b.jid, secret)
                assert "encrypted for 1 device(s)" in res.stdout, res.stdout
                mid = sent_id(res)
                m = await cb.wait_message(lambda m, mid=mid: m["id"] == mid, f"message {mid}")
                assert secret not in str(m), "plaintext on the wire"
                assert m.xml.find(f"{{{NS_OLD}}}encrypted") is not None, m
                body, dev = await decrypt(cb, m, NS_OLD)
                assert body == secret, (body, secret)
                assert dev.bare_jid == a.jid
            # slixmpp-omemo -> strait chat, while strait chat is offline: queued, then
            # delivered and decrypted when it comes online.
            await send_encrypted(cb, a.jid, NS_OLD, back)
            await cb.sync()
            res = await asyncio.to_thread(chat, server, a, sa, "listen", "--count", "1",
                                          "--timeout", "30")
            assert f"{b.jid} [encrypted, sent " in res.stdout, res.stdout
            assert res.stdout.rstrip().endswith(f": {back}"), res.stdout
            # And once more with strait chat online, listening.
            listen = asyncio.create_task(asyncio.to_thread(
                chat, server, a, sa, "listen", "--count", "1", "--timeout", "30"))
            await asyncio.sleep(2)
            await send_encrypted(cb, a.jid, NS_OLD, offline)
            res = await listen
            assert f"{b.jid} [encrypted]: {offline}" in res.stdout, res.stdout
            return await own_device(cb)

    dev_b = run(body(), timeout=3 * OMEMO_TIMEOUT)
    # The fingerprint strait chat shows for B's device is the one B's own client has.
    out = chat(server, a, sa, "fingerprints", b.jid).stdout
    assert (f"{b.jid} device {dev_b.device_id} (OMEMO 0.3): "
            f"{fingerprint(dev_b.identity_key)}") in out, out
    hist = chat(server, a, sa, "history", "--with", b.jid).stdout
    lines = [l for l in hist.splitlines() if l.strip()]
    assert [l.rsplit(": ", 1)[1] for l in lines] == [first, second, back, offline], hist
    assert lines[0].split(" ", 1)[1].startswith(f"to {b.jid}"), hist
    assert lines[2].split(" ", 1)[1].startswith(f"from {b.jid}"), hist
    assert "NOT ENCRYPTED" not in hist


def test_strait_chat_refuses_wrong_password_unknown_ca_and_a_foreign_store(server, new_account):
    a = new_account(prefix="cw")
    store = tempfile.mkdtemp(prefix="strait-chat-")
    wrong = Account(jid=a.jid, password="not-" + a.password)
    res = chat(server, wrong, os.path.join(store, "a"), "send", a.jid, "x", check=False)
    assert res.returncode != 0
    assert "not-authorized" in res.stderr, res.stderr
    # Without the server's CA, the certificate does not verify, and the error says what to do.
    res = subprocess.run(
        [server.binary or strait_binary(), "chat", "--jid", a.jid,
         "--server", f"{server.host}:{server.c2s_port}", "--store", os.path.join(store, "n"),
         "send", a.jid, "x"],
        env=dict(os.environ, STRAIT_CHAT_PASSWORD=a.password), capture_output=True, text=True,
        timeout=CHAT_TIMEOUT)
    assert res.returncode != 0
    assert "UnknownIssuer" in res.stderr and "give --ca-file" in res.stderr, res.stderr
    # A store belongs to one account.
    other = new_account(prefix="cx")
    chat(server, other, os.path.join(store, "o"), "listen", "--timeout", "1")
    res = chat(server, a, os.path.join(store, "o"), "listen", "--timeout", "1", check=False)
    assert res.returncode != 0
    assert f"belongs to {other.jid}" in res.stderr, res.stderr


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_strait_chat_as_a_providers_user_across_the_boundary(server, new_account):
    if server.kind != "strait":
        pytest.skip("needs strait's provider registry")
    pid, domain, backend = register_provider(server)
    a = new_account(prefix="cp")
    e = Account(jid=f"e{secrets.token_hex(4)}@{domain}", password="unused")
    store = tempfile.mkdtemp(prefix="strait-chat-")
    sa, se = os.path.join(store, "a"), os.path.join(store, "e")

    def as_e(*args: str, check: bool = True):
        return chat(server, e, se, *args, token=backend.token(e.jid.split("@")[0], server.domain),
                    check=check)

    # The platform user's keys are published; the provider's user logs in with its token
    # (retried while the running server has not yet read the new provider: it polls each
    # second).
    chat(server, a, sa, "listen", "--timeout", "1")
    deadline = time.monotonic() + 10
    while True:
        res = as_e("send", a.jid, "hello?", check=False)
        if "login failed" not in res.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # Without the platform user's consent: refused, with the server's reason.
    assert res.returncode != 0, res.stdout
    assert "not-allowed" in res.stderr and "does not accept chats" in res.stderr, res.stderr
    # The platform user opts in from their own client (the consent IQ), not the operator.
    out = chat(server, a, sa, "consent").stdout
    assert "third-party chats: off (separate inbox)" in out, out
    assert f"  {pid} ({pid} Chat, active): not allowed" in out, out
    out = chat(server, a, sa, "consent", "--on", "--allow", pid).stdout
    assert "third-party chats: on (separate inbox)" in out, out
    assert f"  {pid} ({pid} Chat, active): allowed" in out, out
    # A provider's user has no consent of its own to set.
    res = as_e("consent", "--on", check=False)
    assert res.returncode != 0 and "consent: not-allowed" in res.stderr, res.stderr
    secret = tok("FROM-PROVIDER")
    as_e("send", a.jid, secret)
    out = chat(server, a, sa, "listen", "--count", "1", "--timeout", "30").stdout
    assert f"{e.jid} [encrypted, third-party: {pid} Chat, sent " in out, out
    assert out.rstrip().endswith(f": {secret}"), out
    reply = tok("FROM-PLATFORM")
    chat(server, a, sa, "send", e.jid, reply)
    out = as_e("listen", "--count", "1", "--timeout", "30").stdout
    assert f"{a.jid} [encrypted, sent " in out and "third-party" not in out, out
    assert out.rstrip().endswith(f": {reply}"), out
    hist = chat(server, a, sa, "history").stdout
    assert f"from {e.jid} [third-party: {pid} Chat]: {secret}" in hist, hist
    # The platform user's chat list puts the provider's user in the third-party section.
    chats = chat(server, a, sa, "chats").stdout
    own, third = chats.split("third-party chats:\n")
    assert e.jid not in own and f"  {e.jid} ({pid} Chat)  " in third, chats
    assert third.rstrip().endswith(f"you: {reply}"), chats
    combined = chat(server, a, sa, "chats", "--combined").stdout
    assert "third-party chats:" not in combined
    assert f"  {e.jid} [third-party: {pid} Chat]  " in combined, combined


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_strait_chat_shares_files_with_slixmpp_omemo(server, new_account,
                                                      uploads_through_loopback):
    a, b = new_account(prefix="fa"), new_account(prefix="fb")
    store = tempfile.mkdtemp(prefix="strait-chat-")
    sa, saved = os.path.join(store, "a"), os.path.join(store, "saved")
    photo = os.urandom(3000) + b"a photo only the two ends can see"
    path = os.path.join(store, "beach photo.jpg")
    with open(path, "wb") as fh:
        fh.write(photo)
    voice = os.urandom(4000) + b"a voice note only the two ends can hear"

    async def body():
        async with Clients(server) as cs:
            cb = await omemo_client(cs, b, "B")
            for p in ("xep_0363", "xep_0454"):
                cb.register_plugin(p)
            # strait chat -> slixmpp: the link arrives encrypted; the file is ciphertext.
            res = await asyncio.to_thread(chat, server, a, sa, "send-file", b.jid, path)
            assert f"sent beach photo.jpg ({len(photo)} bytes)" in res.stdout, res.stdout
            mid = sent_id(res)
            m = await cb.wait_message(lambda m: m["id"] == mid, f"message {mid}")
            assert "aesgcm" not in str(m), "the link (and its key) crossed in clear"
            link, dev = await decrypt(cb, m, NS_OLD)
            assert link.startswith("aesgcm://") and "/beach%20photo.jpg#" in link, link
            url, key = "https://" + link[len("aesgcm://"):].split("#")[0], link.split("#", 1)[1]
            status, _, stored = await http(server, "GET", url)
            assert status == 200
            assert b"only the two ends" not in stored
            assert cb.plugin["xep_0454"].decrypt(io.BytesIO(stored), key) == photo
            # slixmpp -> strait chat: what its xep_0454 uploads, strait chat saves decrypted.
            link = await within(cb.plugin["xep_0454"].upload_file(
                Path("voice note.m4a"), input_file=io.BytesIO(voice), domain=JID(server.domain)),
                "aesgcm upload")
            await send_encrypted(cb, a.jid, NS_OLD, link)
            await cb.sync()
            res = await asyncio.to_thread(chat, server, a, sa, "listen", "--count", "1",
                                          "--timeout", "30", "--save", saved)
            # (slixmpp's uploader names the file at random, keeping the extension.)
            m = re.search(r"\[encrypted, sent [^,]+, file (\w+\.m4a)\]", res.stdout)
            assert m, res.stdout
            assert f"saved {saved}/{m.group(1)} ({len(voice)} bytes)" in res.stdout, res.stdout
            return m.group(1)

    name = run(body(), timeout=3 * OMEMO_TIMEOUT)
    assert os.listdir(saved) == [name]
    with open(os.path.join(saved, name), "rb") as fh:
        assert fh.read() == voice


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_strait_chat_speaks_omemo_2_with_a_client_that_has_only_omemo_2(server, new_account):
    """strait chat writes OMEMO 0.3 to a contact that lists 0.3 devices and OMEMO 2 to one that
    lists only OMEMO 2 devices; it reads both. slixmpp-omemo publishes both, so its OMEMO 0.3
    device list is deleted first."""
    pytest.importorskip("twomemo")
    a, b = new_account(prefix="ta"), new_account(prefix="tb")
    store = tempfile.mkdtemp(prefix="strait-chat-")
    sa = os.path.join(store, "a")
    to_b, to_a = tok("TWO-to-b"), tok("TWO-to-a")

    async def body():
        async with Clients(server) as cs:
            cb = await omemo_client(cs, b, "B")
            await cb.plugin["xep_0060"].delete_node(
                JID(b.jid), "eu.siacs.conversations.axolotl.devicelist", timeout=10)
            res = await asyncio.to_thread(chat, server, a, sa, "send", b.jid, to_b)
            mid = sent_id(res)
            m = await cb.wait_message(lambda m: m["id"] == mid, f"message {mid}")
            assert m.xml.find(f"{{{NS_TWO}}}encrypted") is not None, m
            assert m.xml.find(f"{{{NS_OLD}}}encrypted") is None, m
            assert to_b not in str(m)
            body, dev = await decrypt(cb, m, NS_TWO)
            assert body == to_b, (body, to_b)
            # And back, in OMEMO 2 (the plugin encrypts for the devices strait chat listed).
            await send_encrypted(cb, a.jid, NS_TWO, to_a)
            await cb.sync()
            res = await asyncio.to_thread(chat, server, a, sa, "listen", "--count", "1",
                                          "--timeout", "30")
            assert res.stdout.rstrip().endswith(f": {to_a}"), res.stdout
            assert "[encrypted" in res.stdout, res.stdout

    run(body(), timeout=3 * OMEMO_TIMEOUT)


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_strait_chat_with_is_a_conversation(server, new_account):
    """`strait chat with` (interactive): lines typed go out encrypted, what arrives is printed
    while it waits for the next line, and end of input ends it."""
    a, b = new_account(prefix="wa"), new_account(prefix="wb")
    store = tempfile.mkdtemp(prefix="strait-chat-")
    first, answer, second = tok("WITH-one"), tok("WITH-answer"), tok("WITH-two")
    cmd = [server.binary or strait_binary(), "chat", "--jid", a.jid,
           "--server", f"{server.host}:{server.c2s_port}", "--ca-file", server.ca_file,
           "--store", os.path.join(store, "a"), "with", b.jid]

    async def body():
        async with Clients(server) as cs:
            cb = await omemo_client(cs, b, "B")
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(os.environ, STRAIT_CHAT_PASSWORD=a.password))
            try:
                proc.stdin.write(f"{first}\n".encode())
                await proc.stdin.drain()
                def encrypted(m):
                    return m.xml.find(f"{{{NS_OLD}}}encrypted") is not None
                m1 = await cb.wait_message(encrypted, "the first line, encrypted")
                body, _ = await decrypt(cb, m1, NS_OLD)
                assert body == first, body
                # An answer arrives while strait chat waits for the next line.
                await send_encrypted(cb, a.jid, NS_OLD, answer)
                line = await asyncio.wait_for(proc.stdout.readline(), OMEMO_TIMEOUT)
                assert line.decode().rstrip().endswith(f"[encrypted]: {answer}"), line
                proc.stdin.write(f"{second}\n".encode())
                await proc.stdin.drain()
                m2 = await cb.wait_message(lambda m: encrypted(m) and m["id"] != m1["id"],
                                           "the second line", timeout=OMEMO_TIMEOUT)
                body, _ = await decrypt(cb, m2, NS_OLD)
                assert body == second, body
                proc.stdin.close()
                assert await asyncio.wait_for(proc.wait(), 30) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    run(body(), timeout=3 * OMEMO_TIMEOUT)
