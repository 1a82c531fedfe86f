"""The conformance kit (`strait conformance`) run against a real third-party client: slixmpp
with slixmpp-omemo plays the provider's app, as a provider would check its own client. The kit
must pass it on every check, and must not pass a client that skips a step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import subprocess
import tempfile
import time

import pytest

oldmemo = pytest.importorskip("oldmemo")
twomemo = pytest.importorskip("twomemo")
slixmpp_omemo = pytest.importorskip("slixmpp_omemo")

from conftest import free_ports, port_open  # noqa: E402
from interop_helpers import ProviderBackend  # noqa: E402
from omemo_helpers import (NS_OLD, NS_TWO, OMEMO_TIMEOUT, decrypt, omemo_client,  # noqa: E402
                           send_encrypted)
from xmpp_helpers import Account, Clients, run  # noqa: E402

PLATFORM = "platform.test"
PROVIDER = "provider.test"


class Kit:
    """`strait conformance` in a subprocess, on free loopback ports."""

    def __init__(self, server, backend: ProviderBackend, timeout: int) -> None:
        self.work = tempfile.mkdtemp(prefix="strait-kit-")
        jwks = os.path.join(self.work, "jwks.json")
        with open(jwks, "w") as fh:
            fh.write(backend.jwks)
        self.c2s, self.tls = free_ports(2)
        self.log_path = os.path.join(self.work, "kit.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [server.binary, "conformance", "--issuer", backend.issuer, "--jwks", jwks,
             "--provider-domain", PROVIDER, "--platform-domain", PLATFORM,
             "--listen", f"127.0.0.1:{self.c2s}", "--listen-tls", f"127.0.0.1:{self.tls}",
             "--data-dir", os.path.join(self.work, "data"), "--timeout", str(timeout)],
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
                                          ca_file=self.ca, domains=[PLATFORM, PROVIDER])

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
                echo = f"echo@{PLATFORM}"
                # Not subscribed to the bot, the client learns its devices by asking (what a
                # client does before writing to someone new).
                sm = await c.plugin["xep_0384"].get_session_manager()
                await sm.refresh_device_lists(echo)
                await send_encrypted(c, echo, ns, "hello, kit")
                answer = await c.wait_message(
                    lambda m: m["from"].bare == echo
                    and m.xml.find(f"{{{ns}}}encrypted") is not None,
                    "the echo bot's encrypted answer", timeout=OMEMO_TIMEOUT)
                text, _ = await decrypt(c, answer, ns)
                assert text.startswith("echo: hello, kit (code "), text
                code = re.search(r"code (\d{6})", text).group(1)
                await send_encrypted(c, echo, ns, f"the code is {code}")
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
