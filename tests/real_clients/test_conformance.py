"""The conformance kit (`strait conformance`) run against a real third-party client: slixmpp
with slixmpp-omemo plays the provider's app, as a provider would check its own client. The kit
must pass it on every check, and must not pass a client that skips a step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

oldmemo = pytest.importorskip("oldmemo")
twomemo = pytest.importorskip("twomemo")
slixmpp_omemo = pytest.importorskip("slixmpp_omemo")

from conftest import free_ports, port_open  # noqa: E402
from interop_helpers import ProviderBackend  # noqa: E402
from omemo_helpers import (NS_OLD, NS_TWO, OMEMO_TIMEOUT, decrypt, omemo_client,  # noqa: E402
                           send_encrypted)
from xmpp_helpers import Account, Clients, run  # noqa: E402
from slixmpp import JID  # noqa: E402

PLATFORM = "platform.test"
PROVIDER = "provider.test"


class Kit:
    """`strait conformance` in a subprocess, on free loopback ports."""

    def __init__(self, server, backend: ProviderBackend, timeout: int,
                 check_media: bool = False) -> None:
        self.work = tempfile.mkdtemp(prefix="strait-kit-")
        jwks = os.path.join(self.work, "jwks.json")
        with open(jwks, "w") as fh:
            fh.write(backend.jwks)
        self.c2s, self.tls, self.https = free_ports(3)
        self.log_path = os.path.join(self.work, "kit.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [server.binary, "conformance", "--issuer", backend.issuer, "--jwks", jwks,
             "--provider-domain", PROVIDER, "--platform-domain", PLATFORM,
             "--listen", f"127.0.0.1:{self.c2s}", "--listen-tls", f"127.0.0.1:{self.tls}",
             "--listen-https", f"127.0.0.1:{self.https}",
             "--data-dir", os.path.join(self.work, "data"), "--timeout", str(timeout)]
            + (["--check-media"] if check_media else []),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.ca = os.path.join(self.work, "data", "tls", "ca.pem")
        deadline = time.monotonic() + 30
        while not (port_open("127.0.0.1", self.c2s) and os.path.exists(self.ca)
                   and "send an OMEMO" in self.output()):
            assert self.proc.poll() is None, f"the kit exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"the kit did not start:\n{self.output()}"
            time.sleep(0.1)
        # The clients' view of the kit's platform.
        self.server = dataclasses.replace(server, c2s_port=self.c2s, tls_port=self.tls,
                                          https_port=self.https, ca_file=self.ca,
                                          domains=[PLATFORM, PROVIDER])

    def output(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


async def talk_to_the_bot(c, ns: str) -> None:
    """What a conforming client does with the echo bot: write to it, decrypt its answer, and
    send back the code the answer carries, all encrypted in `ns`."""
    echo = f"echo@{PLATFORM}"
    # Not subscribed to the bot, the client learns its devices by asking (what a client does
    # before writing to someone new).
    sm = await c.plugin["xep_0384"].get_session_manager()
    await sm.refresh_device_lists(echo)
    await send_encrypted(c, echo, ns, "hello, kit")
    answer = await c.wait_message(
        lambda m: m["from"].bare == echo and m.xml.find(f"{{{ns}}}encrypted") is not None,
        "the echo bot's encrypted answer", timeout=OMEMO_TIMEOUT)
    text, _ = await decrypt(c, answer, ns)
    assert text.startswith("echo: hello, kit (code "), text
    code = re.search(r"code (\d{6})", text).group(1)
    await send_encrypted(c, echo, ns, f"the code is {code}")


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
@pytest.mark.parametrize("ns", [NS_OLD, NS_TWO], ids=["omemo-0.3", "omemo-2"])
def test_the_kit_passes_a_conforming_client(server, ns):
    if server.kind != "strait":
        pytest.skip("runs the strait binary's conformance kit")
    backend = ProviderBackend(PROVIDER)
    kit = Kit(server, backend, timeout=int(3 * OMEMO_TIMEOUT))
    try:
        async def body():
            async with Clients(kit.server) as cs:
                me = Account(jid=f"app-user@{PROVIDER}", password="unused")
                c = await omemo_client(cs, me, "app", token=backend.token("app-user", PLATFORM))
                await talk_to_the_bot(c, ns)
                # (Waited for on a thread: the client's loop must keep running to send.)
                status = await asyncio.get_running_loop().run_in_executor(
                    None, kit.wait, OMEMO_TIMEOUT)
                assert status == 0, kit.output()

        run(body(), timeout=3 * OMEMO_TIMEOUT)
        out = kit.output()
        for check in ("login", "device-list", "bundle", "encrypted", "reply"):
            assert f"PASS {check}:" in out, out
        assert "all 5 checks passed" in out, out
        version = "OMEMO 0.3" if ns == NS_OLD else "OMEMO 2"
        assert f"PASS encrypted: an {version} message" in out, out
    finally:
        kit.stop()


@pytest.mark.timeout(2 * OMEMO_TIMEOUT)
def test_the_kit_fails_a_client_that_does_not_answer(server):
    """A client that logs in and sends its encrypted message but never sends the code back
    does not pass: the kit ends at its time limit, naming the missing check."""
    if server.kind != "strait":
        pytest.skip("runs the strait binary's conformance kit")
    backend = ProviderBackend(PROVIDER)
    kit = Kit(server, backend, timeout=20)
    try:
        async def body():
            async with Clients(kit.server) as cs:
                me = Account(jid=f"lazy@{PROVIDER}", password="unused")
                c = await omemo_client(cs, me, "lazy", token=backend.token("lazy", PLATFORM))
                await send_encrypted(c, f"echo@{PLATFORM}", NS_OLD, "hello")
                status = await asyncio.get_running_loop().run_in_executor(
                    None, kit.wait, 40)
                assert status == 1, kit.output()

        run(body(), timeout=1.5 * OMEMO_TIMEOUT)
        out = kit.output()
        assert "PASS encrypted:" in out and "PASS reply" not in out, out
        assert "not passed within" in out and "reply" in out.split("not passed within")[1], out
    finally:
        kit.stop()


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_the_kit_checks_a_shared_file(server, monkeypatch):
    """With --check-media the client must also share a file as OMEMO clients do (XEP-0454):
    slixmpp's xep_0454 encrypts and uploads it to the kit's platform, and the link goes to the
    bot encrypted; the bot downloads it and it decrypts."""
    if server.kind != "strait":
        pytest.skip("runs the strait binary's conformance kit")
    from test_upload import session
    import slixmpp.plugins.xep_0363.http_upload as hu
    backend = ProviderBackend(PROVIDER)
    kit = Kit(server, backend, timeout=int(3 * OMEMO_TIMEOUT), check_media=True)
    monkeypatch.setattr(hu, "ClientSession", lambda *a, **kw: session(kit.server, *a, **kw))
    try:
        async def body():
            async with Clients(kit.server) as cs:
                me = Account(jid=f"sharer@{PROVIDER}", password="unused")
                c = await omemo_client(cs, me, "app", token=backend.token("sharer", PLATFORM))
                for p in ("xep_0363", "xep_0454"):
                    c.register_plugin(p)
                await talk_to_the_bot(c, NS_OLD)
                link = await c.plugin["xep_0454"].upload_file(
                    Path("photo.jpg"), input_file=io.BytesIO(b"\xff\xd8" + os.urandom(5000)),
                    domain=JID(PLATFORM))
                await send_encrypted(c, f"echo@{PLATFORM}", NS_OLD, link)
                status = await asyncio.get_running_loop().run_in_executor(
                    None, kit.wait, OMEMO_TIMEOUT)
                assert status == 0, kit.output()

        run(body(), timeout=3 * OMEMO_TIMEOUT)
        out = kit.output()
        assert "PASS media:" in out and "5018 bytes stored encrypted, 5002 bytes once" in out, out
        assert "all 6 checks passed" in out, out
    finally:
        kit.stop()


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_strait_chat_passes_the_kit(server):
    """The client SDK, as `strait chat` with a token, is itself a conforming client: it
    passes every check, the shared file included."""
    if server.kind != "strait":
        pytest.skip("runs the strait binary's conformance kit")
    backend = ProviderBackend(PROVIDER)
    kit = Kit(server, backend, timeout=int(3 * OMEMO_TIMEOUT), check_media=True)
    work = tempfile.mkdtemp(prefix="strait-chat-kit-")
    token = os.path.join(work, "token")
    with open(token, "w") as fh:
        fh.write(backend.token("sdk-user", PLATFORM))
    photo = os.path.join(work, "photo.jpg")
    with open(photo, "wb") as fh:
        fh.write(os.urandom(3000))
    echo = f"echo@{PLATFORM}"

    def chat(*args: str) -> str:
        res = subprocess.run(
            [server.binary, "chat", "--jid", f"sdk-user@{PROVIDER}", "--token-file", token,
             "--server", f"127.0.0.1:{kit.c2s}", "--ca-file", kit.ca,
             "--http-via", f"127.0.0.1:{kit.https}", "--store", os.path.join(work, "store"),
             *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"strait chat {args}: {res.stdout}\n{res.stderr}\n{kit.output()}"
        return res.stdout

    try:
        chat("send", echo, "hello, kit")
        answer = chat("listen", "--count", "1", "--timeout", "30")
        code = re.search(r"code (\d{6})", answer)
        assert code, answer
        chat("send", echo, f"the code is {code.group(1)}")
        chat("send-file", echo, photo)
        assert kit.wait(OMEMO_TIMEOUT) == 0, kit.output()
        out = kit.output()
        assert "PASS encrypted: an OMEMO 0.3 message" in out, out
        assert "PASS media:" in out and "all 6 checks passed" in out, out
    finally:
        kit.stop()
