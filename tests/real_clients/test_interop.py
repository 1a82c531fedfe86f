"""The interop layer with real clients: a provider's user (enlisted with a token the provider
signed) and a platform user chat end to end encrypted with slixmpp-omemo, across the boundary.

The provider is registered the way an operator does it (`strait provider add/terms/activate`,
`strait user consent`); the running server notices within its registry poll. The provider's
backend and slixmpp's missing OAUTHBEARER come from interop_helpers.py; everything else (TLS,
the stream, bind, PEP, OMEMO) is slixmpp and slixmpp-omemo as shipped.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import pytest

oldmemo = pytest.importorskip("oldmemo")
twomemo = pytest.importorskip("twomemo")
slixmpp_omemo = pytest.importorskip("slixmpp_omemo")

from interop_helpers import (ProviderBackend, condition_of, refusal_after_consent,  # noqa: E402  (also registers OAUTHBEARER)
                             register_provider)

from omemo_helpers import (NS_OLD, NS_TWO, OMEMO_TIMEOUT, befriend, omemo_client,  # noqa: E402
                           receive_encrypted, send_encrypted, tok, wait_devices_known)
from xmpp_helpers import Account, Clients, LoginFailed, run  # noqa: E402

NS_INTEROP = "urn:strait:interop:0"


async def enlisted(cs: Clients, server, backend: ProviderBackend, domain: str, label: str):
    """A new user of the provider, logged in with a token; retried while the server has not
    yet read the registry (it polls once a second)."""
    account = Account(jid=f"e{secrets.token_hex(4)}@{domain}", password="unused")
    deadline = time.monotonic() + 8
    while True:
        try:
            return await enlisted_again(cs, server, backend, account, label)
        except LoginFailed:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def enlisted_again(cs, server, backend, account, label):
    c = cs.new(account, label=label, mech="OAUTHBEARER")
    c.credentials["access_token"] = backend.token(account.jid.split("@")[0], server.domain)
    return await c.login()




def origin_of(msg):
    return msg.xml.find(f"{{{NS_INTEROP}}}origin")


@pytest.mark.timeout(4 * OMEMO_TIMEOUT)
def test_platform_and_provider_users_chat_end_to_end_encrypted(server, new_account):
    if server.kind != "strait":
        pytest.skip("needs strait's provider registry")
    pid, domain, backend = register_provider(server)
    a = new_account(prefix="ia")

    async def body():
        async with Clients(server) as cs:
            b = await enlisted(cs, server, backend, domain, "B-probe")
            assert b.sasl_mechanism() == "OAUTHBEARER"
            assert b.boundjid.domain == domain
            assert ["OAUTHBEARER"] in b.mechs_offered, b.mechs_offered
            # Before alice opts in, bob's messages bounce with the reason.
            pa = await cs.online(a, label="A-prep")
            b.send_message(mto=a.jid, mbody="hello?", mtype="chat")
            err = await b.wait_cond(lambda: b.message_errors and b.message_errors[-1],
                                    "bounce before consent")
            assert condition_of(err) == "not-allowed", err
            assert "does not accept chats" in err["error"]["text"], err
            server.cli("user", "consent", a.jid, "--on", "--allow", pid)
            # Plaintext is refused even with consent; nothing arrives.
            err = await refusal_after_consent(
                b, lambda: b.send_message(mto=a.jid, mbody="plain words", mtype="chat"))
            assert condition_of(err) == "policy-violation", err
            assert "must be end-to-end encrypted" in err["error"]["text"], err
            assert not [m for m in pa.messages if "plain words" in str(m)]
            bob = Account(jid=b.boundjid.bare, password="unused")
            await b.logout()

            pb = await enlisted_again(cs, server, backend, bob, "B-prep")
            await befriend(pa, pb)
            await asyncio.gather(pa.logout(), pb.logout())
            ca = await omemo_client(cs, a, "A")
            cb = await omemo_client(cs, bob, "B",
                                    token=backend.token(bob.jid.split("@")[0], server.domain))
            await wait_devices_known([(ca, cb), (cb, ca)])
            for ns in (NS_OLD, NS_TWO):
                secret = tok("to-bob")
                mid = await send_encrypted(ca, bob.jid, ns, secret)
                await receive_encrypted(cb, ca, mid, ns, secret)
                m = next(m for m in cb.messages if m["id"] == mid)
                assert origin_of(m) is None, f"a platform user's message has no origin: {m}"
                secret = tok("to-alice")
                mid = await send_encrypted(cb, a.jid, ns, secret)
                await receive_encrypted(ca, cb, mid, ns, secret)
                m = next(m for m in ca.messages if m["id"] == mid)
                o = origin_of(m)
                assert o is not None and o.get("provider") == pid, f"origin stamp: {m}"
                assert o.get("name") == f"{pid} Chat"
                # The sender's fallback text stays behind; the server's own goes instead.
                assert m["body"].startswith("This message is end-to-end encrypted"), m
                assert "OMEMO encrypted (strait test)" not in str(m), m

    run(body(), timeout=4 * OMEMO_TIMEOUT)



def test_suspension_ends_enlisted_sessions(server, new_account):
    if server.kind != "strait":
        pytest.skip("needs strait's provider registry")
    pid, domain, backend = register_provider(server)

    async def body():
        async with Clients(server) as cs:
            b = await enlisted(cs, server, backend, domain, "B")
            bob = Account(jid=b.boundjid.bare, password="unused")
            server.cli("provider", "suspend", pid, "--reason", "abuse report", "--actor", "test")
            await b.wait_cond(lambda: any(e.startswith("stream_error(policy-violation")
                                          for e in b.events), "the stream error", timeout=8)
            assert any(f"{pid} is suspended" in e for e in b.events), b.events
            with pytest.raises(LoginFailed):
                await enlisted_again(cs, server, backend, bob, "B-again")
            res = server.cli("provider", "audit", pid)
            actions = [line.split("\t")[3] for line in res.stdout.splitlines()]
            assert actions == ["add", "terms", "activate", "suspend"], res.stdout

    run(body())


def test_provider_users_through_the_providers_proxy(server, new_account):
    """`strait proxy run` as a provider runs it: its key pinned in the registry; slixmpp
    connects to it with direct TLS, logs in with the provider's token and reaches a platform
    user, and another connects with STARTTLS; the same login straight to the platform is
    refused."""
    if server.kind != "strait":
        pytest.skip("needs strait's provider registry and proxy")
    import dataclasses
    import subprocess

    from conftest import free_ports, port_open

    pid, domain, backend = register_provider(server)
    # (`strait proxy` takes no server configuration: it runs on the provider's side.)
    keygen = subprocess.run([server.binary, "proxy", "keygen", "--out",
                             os.path.join(server.workdir, f"{pid}-proxy"),
                             "--name", f"proxy.{domain}"],
                            capture_output=True, text=True, timeout=30, check=True)
    pin = keygen.stdout.split("pin ")[1].strip()
    server.cli("provider", "set", pid, "--pin", pin, "--actor", "test")
    tls_dir = os.path.join(server.workdir, "data", "tls")
    deadline = time.monotonic() + 8
    while not os.path.exists(os.path.join(tls_dir, f"{domain}.key")):
        assert time.monotonic() < deadline, "the provider domain's certificate was not made"
        time.sleep(0.2)
    port, port_starttls = free_ports(2)
    log = open(os.path.join(server.workdir, f"{pid}-proxy.log"), "wb")
    proxy = subprocess.Popen(
        [server.binary, "proxy", "run", "--listen", f"127.0.0.1:{port}",
         "--listen-starttls", f"127.0.0.1:{port_starttls}",
         "--cert", os.path.join(tls_dir, f"{domain}.pem"),
         "--key", os.path.join(tls_dir, f"{domain}.key"),
         "--upstream", f"127.0.0.1:{server.tls_port}",
         "--upstream-ca", os.path.join(tls_dir, "ca.pem"),
         "--client-cert", os.path.join(server.workdir, f"{pid}-proxy.pem"),
         "--client-key", os.path.join(server.workdir, f"{pid}-proxy.key")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (port_open("127.0.0.1", port) and port_open("127.0.0.1", port_starttls)):
            assert proxy.poll() is None, f"strait proxy exited with {proxy.returncode}"
            assert time.monotonic() < deadline, "strait proxy did not start"
            time.sleep(0.1)
        via_proxy = dataclasses.replace(server, tls_port=port)
        a = new_account(prefix="px")
        server.cli("user", "consent", a.jid, "--on", "--allow", pid)

        async def body():
            async with Clients(server) as cs:
                pa = await cs.online(a, label="A")
                bob = Account(jid=f"b{secrets.token_hex(4)}@{domain}", password="unused")
                # Straight to the platform: refused, saying why (the pin took effect within
                # the server's registry poll).
                deadline = time.monotonic() + 8
                while True:
                    direct = cs.new(bob, label="B-direct", mech="OAUTHBEARER", direct_tls=True)
                    direct.credentials["access_token"] = backend.token(bob.jid.split("@")[0],
                                                                       server.domain)
                    try:
                        await direct.login(presence=False)
                        await direct.logout()   # the pin is not read yet: try again
                    except LoginFailed:
                        if any("sasl_failure" in e for e in direct.events):
                            break
                    assert time.monotonic() < deadline, direct.events
                    await asyncio.sleep(0.5)
                # Through the proxy: the same client, the same token, a session.
                cb = Clients(via_proxy)
                cs.all.extend(cb.all)
                b = cb.new(bob, label="B-proxy", mech="OAUTHBEARER", direct_tls=True)
                cs.all.append(b)
                b.credentials["access_token"] = backend.token(bob.jid.split("@")[0],
                                                              server.domain)
                await b.login()
                assert b.boundjid.bare == bob.jid
                # And on to the platform user, through the boundary.
                b.send_presence(pto=a.jid, ptype="subscribe")
                await pa.wait_presence(lambda p: p["from"].bare == bob.jid and
                                       p["type"] == "subscribe", "bob's request via the proxy")
                # STARTTLS, slixmpp's default, through the proxy's other listener.
                cd = Clients(dataclasses.replace(server, c2s_port=port_starttls))
                cs.all.extend(cd.all)
                dave = Account(jid=f"d{secrets.token_hex(4)}@{domain}", password="unused")
                d = cd.new(dave, label="D-proxy", mech="OAUTHBEARER")
                cs.all.append(d)
                d.credentials["access_token"] = backend.token(dave.jid.split("@")[0],
                                                              server.domain)
                await d.login()
                assert d.boundjid.bare == dave.jid
                assert "starttls" in d.features, d.features

        run(body())
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(timeout=10)
        log.close()
