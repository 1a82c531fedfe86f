"""XEP-0363 HTTP File Upload with slixmpp's own xep_0363 plugin (discovery, slot, PUT through
aiohttp) and xep_0454 (OMEMO media sharing: the file is encrypted before upload, the server
only ever holds ciphertext), plus the HTTP side checked by hand: downloads, HEAD, and every
refusal (too large, over quota, no or a wrong token, wrong size, a used slot, unknown files).

The slot URLs name `upload.<domain>` on the server's HTTPS port; the tests verify the server's
certificate for that name against the test CA while connecting to the loopback address."""

from __future__ import annotations

import io
import os
import socket
import ssl
from pathlib import Path
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver
from slixmpp import JID
from slixmpp.exceptions import IqError

from xmpp_helpers import Clients, run, within

NS_UPLOAD = "urn:xmpp:http:upload:0"
PLUGINS = ["xep_0030", "xep_0128", "xep_0363", "xep_0454"]
# what conftest configures: [upload] max_file_bytes, quota_bytes_per_account
MAX_FILE = 1048576
QUOTA = 3 * MAX_FILE


class Loopback(AbstractResolver):
    """Every name resolves to the server under test (its address; the TLS name stays)."""

    def __init__(self, host: str) -> None:
        self.host = host

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):  # type: ignore[override]
        return [{"hostname": host, "host": self.host, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


def session(server: Any, **kw: Any) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context(cafile=server.ca_file)
    kw.setdefault("timeout", aiohttp.ClientTimeout(total=20))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, resolver=Loopback(server.host)),
                                 **kw)


async def http(server: Any, method: str, url: str, body: Optional[bytes] = None,
               headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    async with session(server) as s:
        async with s.request(method, url, data=body, headers=headers or {}) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


@pytest.fixture
def uploads_through_loopback(server, monkeypatch):
    """slixmpp's uploader makes its own aiohttp session: give it the test CA and the resolver."""
    if server.https_port is None:
        pytest.skip("no HTTPS port for the upload service (STRAIT_TEST_HTTPS_PORT)")
    import slixmpp.plugins.xep_0363.http_upload as hu
    monkeypatch.setattr(hu, "ClientSession", lambda *a, **kw: session(server, *a, **kw))


async def online(cs: Clients, account) -> Any:
    c = cs.new(account, label="U")
    for p in PLUGINS:
        c.register_plugin(p)
    return await c.login()


async def slot(c: Any, service: JID, name: str, size: int, ctype: str = "application/octet-stream"):
    iq = await within(c.plugin["xep_0363"].request_slot(service, name, size, ctype), f"slot for {name}")
    s = iq["http_upload_slot"]
    return s["put"]["url"], s["get"]["url"], {h["name"]: h["value"] for h in s["put"]["headers"]}


def test_the_service_is_found_and_a_file_round_trips(server, new_account, uploads_through_loopback):
    a = new_account(prefix="up")

    async def body():
        async with Clients(server) as cs:
            c = await online(cs, a)
            info = await within(c.plugin["xep_0363"].find_upload_service(domain=JID(server.domain)),
                                "find_upload_service")
            assert info is not None, "no upload service in disco#items of the domain"
            assert info["from"] == JID(f"upload.{server.domain}")
            assert NS_UPLOAD in info["disco_info"]["features"]
            form = next(f for f in info["disco_info"].iterables
                        if f["values"].get("FORM_TYPE") in (NS_UPLOAD, [NS_UPLOAD]))
            assert int(form["values"]["max-file-size"]) == MAX_FILE

            # slixmpp's own upload: slot, then PUT with the slot's headers.
            payload = os.urandom(70_000)
            url = await within(c.plugin["xep_0363"].upload_file(
                "holiday photo é.jpg", domain=JID(server.domain), input_file=io.BytesIO(payload),
                size=len(payload), content_type="image/jpeg"), "upload_file")
            u = urlsplit(url)
            assert u.scheme == "https" and u.hostname == f"upload.{server.domain}", url
            assert u.port == server.https_port and u.path.endswith("/holiday%20photo%20%C3%A9.jpg"), url

            status, h, got = await http(server, "GET", url)
            assert status == 200 and got == payload
            assert h["content-type"] == "image/jpeg"
            assert h["content-length"] == str(len(payload))
            assert h["x-content-type-options"] == "nosniff"
            assert "sandbox" in h["content-security-policy"]
            assert h["content-disposition"].startswith("inline;"), h
            assert h["access-control-allow-origin"] == "*"

            status, h, got = await http(server, "HEAD", url)
            assert status == 200 and got == b"" and h["content-length"] == str(len(payload))

            # Anything not an image, audio, video or plain text downloads as an attachment.
            page = b"<html><script>alert(1)</script></html>"
            url = await within(c.plugin["xep_0363"].upload_file(
                "page.html", domain=JID(server.domain), input_file=io.BytesIO(page), size=len(page),
                content_type="text/html"), "upload_file html")
            status, h, got = await http(server, "GET", url)
            assert status == 200 and got == page
            assert h["content-disposition"].startswith("attachment;"), h
    run(body())


def test_uploads_that_break_the_rules_are_refused(server, new_account, uploads_through_loopback):
    a, b = new_account(prefix="up"), new_account(prefix="up")
    service = JID(f"upload.{server.domain}")

    async def body():
        async with Clients(server) as cs:
            c = await online(cs, a)

            # Larger than the largest file taken: not-acceptable with <file-too-large/>.
            with pytest.raises(IqError) as e:
                await within(c.plugin["xep_0363"].request_slot(service, "big.bin", MAX_FILE + 1,
                                                               "application/octet-stream"), "big slot")
            assert e.value.condition == "not-acceptable"
            too_large = e.value.iq.xml.find(f".//{{{NS_UPLOAD}}}file-too-large/{{{NS_UPLOAD}}}max-file-size")
            assert too_large is not None and int(too_large.text) == MAX_FILE

            # Another domain's service is not this account's.
            with pytest.raises(IqError) as e:
                await within(c.plugin["xep_0363"].request_slot(JID(f"upload.{server.other_domain}"), "x.bin",
                                                               10, "application/octet-stream"), "foreign slot")
            assert e.value.condition == "not-allowed"

            # A name that is a path.
            with pytest.raises(IqError) as e:
                await within(c.plugin["xep_0363"].request_slot(service, "../../etc/passwd", 10,
                                                               "text/plain"), "path slot")
            assert e.value.condition == "bad-request"

            data = os.urandom(1000)
            put, get, hdrs = await slot(c, service, "a.bin", len(data))
            assert put == get and list(hdrs) == ["Authorization"], (put, get, hdrs)
            plain = {"Content-Type": "application/octet-stream"}
            # No token, a wrong token, the wrong size, another content type: refused.
            status, _, _ = await http(server, "PUT", put, data, plain)
            assert status == 403
            status, _, _ = await http(server, "PUT", put, data, {**plain, "Authorization": "Bearer 00"})
            assert status == 403
            status, _, _ = await http(server, "PUT", put, data + b"x", {**plain, **hdrs})
            assert status == 413
            status, _, _ = await http(server, "PUT", put, data, {**hdrs, "Content-Type": "text/html"})
            assert status == 400
            status, _, _ = await http(server, "GET", get)
            assert status == 404, "a file was stored from a refused upload"
            # The slot still takes the right upload, once.
            status, _, _ = await http(server, "PUT", put, data, {**plain, **hdrs})
            assert status == 201
            status, _, _ = await http(server, "PUT", put, os.urandom(1000), {**plain, **hdrs})
            assert status == 409
            status, _, got = await http(server, "GET", get)
            assert status == 200 and got == data, "a used slot's file was overwritten"

            # Unknown files, and a known id under another name.
            base = get.rsplit("/", 2)[0]
            for url in (f"{base}/{'0' * 32}/a.bin", get.rsplit("/", 1)[0] + "/b.bin", f"{base}/x/a.bin"):
                status, _, _ = await http(server, "GET", url)
                assert status == 404, url
            status, _, _ = await http(server, "DELETE", get)
            assert status == 405

            # The quota counts stored files and unused slots: 1000 bytes are stored, two slots
            # of MAX_FILE are reserved, and a third would pass the quota.
            await slot(c, service, "b.bin", MAX_FILE)
            await slot(c, service, "c.bin", MAX_FILE)
            with pytest.raises(IqError) as e:
                await within(c.plugin["xep_0363"].request_slot(service, "d.bin", QUOTA - 2 * MAX_FILE,
                                                               "application/octet-stream"), "over quota")
            assert e.value.condition == "resource-constraint"
            assert e.value.iq["error"]["type"] == "wait"
            # Another account has its own quota.
            cb = await online(cs, b)
            await slot(cb, service, "e.bin", MAX_FILE)
    run(body())


def test_omemo_media_is_stored_as_ciphertext(server, new_account, uploads_through_loopback):
    """XEP-0454 (what OMEMO clients send for images and voice notes): slixmpp encrypts with
    AES-256-GCM and uploads; the link's fragment carries the key, which never reaches the server."""
    a = new_account(prefix="up")

    async def body():
        async with Clients(server) as cs:
            c = await online(cs, a)
            plain = os.urandom(5000) + b"a voice note that only the two ends can hear"
            link = await within(c.plugin["xep_0454"].upload_file(
                Path("voice.m4a"), input_file=io.BytesIO(plain), domain=JID(server.domain)), "aesgcm upload")
            assert link.startswith("aesgcm://") and "#" in link, link
            url, key = "https://" + link[len("aesgcm://"):].split("#")[0], link.split("#", 1)[1]
            status, _, stored = await http(server, "GET", url)
            assert status == 200
            assert len(stored) == len(plain) + 16  # AES-GCM tag
            assert b"only the two ends" not in stored
            assert c.plugin["xep_0454"].decrypt(io.BytesIO(stored), key) == plain
    run(body())


def test_removing_an_account_deletes_its_files(server, new_account, uploads_through_loopback):
    """`strait user remove` on a running server: the account's uploads stop being served; another
    account's stay."""
    if server.kind != "strait":
        pytest.skip("strait CLI only")
    a, b = new_account(prefix="up"), new_account(prefix="up")

    async def body():
        async with Clients(server) as cs:
            urls = {}
            for acct in (a, b):
                c = await online(cs, acct)
                data = os.urandom(300)
                urls[acct.jid] = (await within(c.plugin["xep_0363"].upload_file(
                    "note.ogg", domain=JID(server.domain), input_file=io.BytesIO(data), size=len(data),
                    content_type="audio/ogg"), "upload_file"), data)
                await c.logout()
            out = server.cli("user", "remove", a.jid).stdout
            assert "1 file(s)" in out, out
            status, _, _ = await http(server, "GET", urls[a.jid][0])
            assert status == 404
            status, _, got = await http(server, "GET", urls[b.jid][0])
            assert status == 200 and got == urls[b.jid][1]
    run(body())


def test_an_operator_lists_and_takes_down_a_file(server, new_account, uploads_through_loopback):
    """`strait upload list` shows who uploaded what; `strait upload remove <url>` stops it being
    served at once, on a running server; the uploader's other file stays."""
    if server.kind != "strait":
        pytest.skip("strait CLI only")
    a = new_account(prefix="up")

    async def body():
        async with Clients(server) as cs:
            c = await online(cs, a)
            urls = []
            for name in ("bad.jpg", "fine.jpg"):
                data = os.urandom(200)
                urls.append(await within(c.plugin["xep_0363"].upload_file(
                    name, domain=JID(server.domain), input_file=io.BytesIO(data), size=len(data),
                    content_type="image/jpeg"), "upload_file"))
            rows = [line.split("\t") for line in server.cli("upload", "list", "--account", a.jid)
                    .stdout.splitlines()]
            assert sorted(r[5] for r in rows) == ["bad.jpg", "fine.jpg"], rows
            assert all(r[1] == a.jid and r[2] == "200" and r[4] == "image/jpeg" for r in rows), rows
            bad_id = urlsplit(urls[0]).path.split("/")[-2]
            assert bad_id in {r[0] for r in rows}
            assert "removed" in server.cli("upload", "remove", urls[0]).stdout
            status, _, _ = await http(server, "GET", urls[0])
            assert status == 404
            status, _, _ = await http(server, "GET", urls[1])
            assert status == 200
            again = server.cli("upload", "remove", urls[0], check=False)
            assert again.returncode != 0 and "no stored file" in again.stderr
    run(body())
