"""Connection security and authentication, seen by a real client (slixmpp) and by a raw socket."""

from __future__ import annotations

import asyncio
import re
import secrets
import ssl

import pytest

from xmpp_helpers import (NS_SASL, NS_TLS, Account, Clients, LoginFailed, RawStream, parse_features,
                          run, within)

TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


def assert_session(c, account: Account) -> None:
    """The client has a real session: TLS, a bound resource, and the JID it asked for."""
    assert c.tls_version() in TLS_VERSIONS, f"TLS not negotiated: {c.tls_version()!r}"
    assert c.authenticated, "not authenticated"
    assert c.bound_jid, "no resource bound"
    bound = c.boundjid
    assert bound.bare == account.jid, f"bound {bound.full}, expected {account.jid}/<resource>"
    assert bound.resource, f"bound JID {bound.full} has no resource"


def test_login_starttls_scram_sha256(server, new_account):
    acct = new_account()

    async def body():
        async with Clients(server) as cs:
            c = await cs.online(acct, label="A")
            assert_session(c, acct)
            # STARTTLS really happened: the first features offered starttls, the session is TLS
            assert c.features_seen, "no stream features seen"
            assert f"{{{NS_TLS}}}starttls" in c.features_seen[0], \
                f"first stream features lack <starttls/>: {c.features_seen[0]}"
            assert "starttls" in c.features, "slixmpp did not negotiate STARTTLS"
            # SASL was offered only once, after TLS, and without PLAIN when PLAIN is disabled
            assert len(c.mechs_offered) == 1, f"mechanisms offered {len(c.mechs_offered)} times"
            offered = c.mechs_offered[0]
            assert "SCRAM-SHA-256" in offered, f"SCRAM-SHA-256 not offered: {offered}"
            if not server.plain_allowed:
                assert "PLAIN" not in offered, f"PLAIN offered although disabled: {offered}"
            # slixmpp picks the strongest usable mechanism; -PLUS cannot be used from Python ssl
            assert c.sasl_mechanism() == "SCRAM-SHA-256", \
                f"used {c.sasl_mechanism()}, offered {offered}"
            # a server round trip works on the session
            await c.sync()
    run(body())


def test_login_scram_sha1(server, new_account):
    acct = new_account()

    async def body():
        async with Clients(server) as cs:
            c = await cs.online(acct, mech="SCRAM-SHA-1", label="A")
            assert_session(c, acct)
            assert c.sasl_mechanism() == "SCRAM-SHA-1"
            assert "SCRAM-SHA-1" in c.mechs_offered[0]
            await c.sync()
    run(body())


def test_login_non_ascii_password(server, new_account):
    """SASLprep'd UTF-8 password (already NFKC-normal), both SCRAM variants."""
    acct = new_account(password=f"pässwörd-ç-{secrets.token_hex(3)}")

    async def body():
        async with Clients(server) as cs:
            for mech in server.mechs:
                c = await cs.online(acct, mech=mech, label=mech)
                assert_session(c, acct)
                assert c.sasl_mechanism() == mech
                await c.logout()
    run(body())


@pytest.mark.parametrize("alpn", [True, False], ids=["alpn", "no-alpn"])
def test_login_direct_tls(server, new_account, alpn):
    acct = new_account()

    async def body():
        async with Clients(server) as cs:
            c = await cs.online(acct, direct_tls=True, alpn=alpn, label="A")
            assert_session(c, acct)
            # TLS from the first byte: there was no STARTTLS step, first features were post-TLS
            assert "starttls" not in c.features
            assert all(f"{{{NS_TLS}}}starttls" not in f for f in c.features_seen), \
                f"STARTTLS offered inside direct TLS: {c.features_seen}"
            if alpn:
                assert c.alpn() in (None, "xmpp-client"), f"unexpected ALPN {c.alpn()!r}"
            assert c.sasl_mechanism().startswith("SCRAM-")
            await c.sync()
    run(body())


@pytest.mark.parametrize("case", ["wrong_password", "unknown_user"])
def test_login_rejected(server, new_account, case):
    acct = new_account()
    if case == "wrong_password":
        bad = Account(acct.jid, acct.password + "x")
    else:
        bad = Account(f"nobody{secrets.token_hex(5)}@{server.domain}", acct.password)

    async def body():
        async with Clients(server) as cs:
            for mech in server.mechs:
                c = cs.new(bad, mech=mech, label=f"{case}/{mech}")
                with pytest.raises(LoginFailed):
                    await c.login()
                assert c.tls_version() in TLS_VERSIONS or "tls_success" in c.events
                assert c.sasl_failures, f"no SASL <failure/> received; events: {c.events}"
                assert c.sasl_failures[0] == "not-authorized", \
                    f"SASL failure condition {c.sasl_failures}, expected not-authorized"
                assert not c.authenticated and not c.bound_jid and "session_start" not in c.events
            # control: the real credentials work on the same server
            if case == "wrong_password":
                good = await cs.online(acct, label="good")
                assert good.bound_jid
    run(body())


def test_plaintext_stream_requires_starttls(server):
    """Before TLS the server offers only <starttls><required/>: no SASL, no auth accepted."""
    raw = RawStream(server.host, server.c2s_port)
    try:
        raw.open_stream(server.domain)
        data = raw.read_until(rb"</(\w+:)?features>|<(\w+:)?features[^>]*/>", "stream features")
        head = data.decode("utf-8", "replace")
        assert re.search(r"<(\w+:)?stream[\s>]", head), f"no stream header: {head[:500]}"
        features = parse_features(data)
        tags = [child.tag for child in features]
        starttls = features.find(f"{{{NS_TLS}}}starttls")
        assert starttls is not None, f"no <starttls/> offered: {tags}"
        assert starttls.find(f"{{{NS_TLS}}}required") is not None, \
            f"<starttls/> lacks <required/>: {head[-800:]}"
        assert features.find(f"{{{NS_SASL}}}mechanisms") is None, \
            f"SASL mechanisms offered before TLS: {head[-800:]}"
        # Trying SASL anyway must not get a challenge or success.
        raw.take()
        raw.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>"
                 "biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjlxa3hkYXdM</auth>")
        reply = raw.read_until(rb"<(\w+:)?(failure|challenge|success|error)[\s>/]|</(\w+:)?stream>",
                               "a reply to SASL before TLS").decode("utf-8", "replace")
        assert not re.search(r"<(\w+:)?(challenge|success)[\s>/]", reply), \
            f"server accepted SASL before TLS: {reply}"
        assert re.search(r"<(\w+:)?(failure|error)[\s>/]|</(\w+:)?stream>", reply), \
            f"no failure/stream error for SASL before TLS: {reply}"
    finally:
        raw.close()


def test_plaintext_starttls_then_sasl_offered(server):
    """The same raw stream after STARTTLS: TLS 1.2+ with the domain's certificate, SCRAM offered."""
    raw = RawStream(server.host, server.c2s_port)
    try:
        raw.open_stream(server.domain)
        raw.read_until(rb"</(\w+:)?features>|<(\w+:)?features[^>]*/>", "stream features")
        raw.take()
        raw.send(f"<starttls xmlns='{NS_TLS}'/>")
        reply = raw.read_until(rb"<proceed[^>]*>", "<proceed/>").decode()
        assert "<proceed" in reply and NS_TLS in reply, f"unexpected reply to starttls: {reply}"
        ctx = ssl.create_default_context(cafile=server.ca_file)
        raw.sock = ctx.wrap_socket(raw.sock, server_hostname=server.domain)
        assert raw.sock.version() in TLS_VERSIONS
        raw.buf = b""
        raw.open_stream(server.domain)
        data = raw.read_until(rb"</(\w+:)?features>|<(\w+:)?features[^>]*/>", "post-TLS features")
        features = parse_features(data)
        assert features.find(f"{{{NS_TLS}}}starttls") is None, "STARTTLS offered again after TLS"
        mechs = features.find(f"{{{NS_SASL}}}mechanisms")
        assert mechs is not None, f"no SASL after TLS: {data[-800:]!r}"
        names = [(m.text or "").strip() for m in mechs]
        assert "SCRAM-SHA-1" in names, names
        if not server.plain_allowed:
            assert "PLAIN" not in names, f"PLAIN offered although disabled: {names}"
    finally:
        raw.close()


def test_phone_number_account(server):
    """A phone-number localpart given in human form is stored in E.164 and can log in."""
    digits = f"{secrets.randbelow(10**8):08d}"
    human = f"+31 6 {digits[:4]} {digits[4:]}@{server.domain}"
    e164 = f"+316{digits}@{server.domain}"
    password = f"pw-{secrets.token_urlsafe(12)}"
    server.add_user(human, password)
    if server.kind == "strait":
        listed = server.cli("user", "list").stdout.split()
        assert e164 in listed, f"{e164} not in `strait user list`: {listed}"
        assert not any(" " in j for j in listed)
    acct = Account(e164, password)

    async def body():
        async with Clients(server) as cs:
            c = await cs.online(acct, label="phone")
            assert_session(c, acct)
            assert c.boundjid.user == f"+316{digits}"
    run(body())


def test_cli_passwd_and_remove(server, new_account):
    """`strait user passwd` changes what logs in, `strait user remove` stops logins."""
    if server.kind != "strait":
        pytest.skip("strait CLI only")
    acct = new_account()
    new_pw = f"pw2-{secrets.token_urlsafe(12)}"

    async def body():
        async with Clients(server) as cs:
            c = await cs.online(acct, label="before")
            await c.logout()
            server.cli("user", "passwd", acct.jid, stdin=new_pw + "\n")
            old = cs.new(acct, label="old-password")
            with pytest.raises(LoginFailed):
                await old.login()
            assert old.sasl_failures == ["not-authorized"] * len(old.sasl_failures) \
                and old.sasl_failures
            c = await cs.online(Account(acct.jid, new_pw), label="new-password")
            await c.logout()
            server.cli("user", "remove", acct.jid)
            assert acct.jid not in server.cli("user", "list").stdout.split()
            gone = cs.new(Account(acct.jid, new_pw), label="removed")
            with pytest.raises(LoginFailed):
                await gone.login()
            assert gone.sasl_failures, f"no SASL failure for removed user: {gone.events}"
    run(body())


def test_no_routing_before_authentication(server, new_account):
    """After STARTTLS but before SASL, a stanza to a real online user is not delivered; the
    server answers with a stream error (RFC 6120 6.4.1: not-authorized) or a stanza error."""
    b = new_account(prefix="b")

    async def body():
        async with Clients(server) as cs:
            cb = await cs.online(b, label="B")
            raw = RawStream(server.host, server.c2s_port)
            try:
                raw.open_stream(server.domain)
                raw.read_until(rb"</(\w+:)?features>", "stream features")
                raw.send(f"<starttls xmlns='{NS_TLS}'/>")
                raw.read_until(rb"<proceed[^>]*>", "<proceed/>")
                ctx = ssl.create_default_context(cafile=server.ca_file)
                raw.sock = ctx.wrap_socket(raw.sock, server_hostname=server.domain)
                raw.buf = b""
                raw.open_stream(server.domain)
                raw.read_until(rb"</(\w+:)?features>", "post-TLS features")
                raw.take()
                mid = f"preauth-{secrets.token_hex(4)}"
                raw.send(f"<message to='{b.jid}' id='{mid}' type='chat'><body>x</body></message>")
                reply = raw.read_until(rb"</(\w+:)?stream>|<(\w+:)?error[\s>]", "the server's answer")
                text = reply.decode("utf-8", "replace")
                print("server answer to a pre-auth stanza:", text)
                assert re.search(r"<(\w+:)?error[\s>]|</(\w+:)?stream>", text), \
                    f"no stream or stanza error for a stanza before authentication: {text!r}"
                await asyncio.sleep(1.0)
                assert not [m for m in cb.messages if m["id"] == mid], \
                    "a stanza sent before authentication was delivered"
            finally:
                raw.close()
    run(body())


def test_change_password_and_delete_account_in_band(server, new_account):
    """XEP-0077 as slixmpp does it: a logged-in user changes the password (the old one stops
    working, the new one works), then deletes the account (its other session is closed and
    nobody can log in as it any more)."""
    a = new_account(prefix="a")

    async def body():
        async with Clients(server) as cs:
            c = cs.new(a, label="A")
            c.register_plugin("xep_0077")
            await c.login()
            reg = await within(c["xep_0077"].get_registration(), "registration info")
            assert reg["register"]["registered"], reg
            new_pw = "n3w " + a.password
            await within(c["xep_0077"].change_password(new_pw), "change password")
            with pytest.raises(LoginFailed):
                await cs.new(a, label="old password").login()
            fresh = Account(jid=a.jid, password=new_pw)
            other = await cs.online(fresh, resource="laptop", label="A2")
            await within(c["xep_0077"].cancel_registration(), "delete the account")
            await other.wait_cond(
                lambda: any(e.startswith("disconnected") for e in other.events),
                "the other session closed")
            assert any(e.startswith("stream_error(not-authorized") for e in other.events), \
                other.events
            with pytest.raises(LoginFailed):
                await cs.new(fresh, label="after removal").login()

    run(body())
