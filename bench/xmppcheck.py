#!/usr/bin/env python3
"""A tiny XMPP client (python3 standard library only) used by bench/compare to check that a
server it set up works as configured: STARTTLS with the bench CA, SASL SCRAM-SHA-256 (or PLAIN),
resource binding, a one-to-one message, offline delivery and a MAM (XEP-0313) query.

It is a checking tool, not a load generator: one connection at a time, blocking sockets.

    xmppcheck.py --port 15222 --domain bench.test --ca-file ca.pem probe
    xmppcheck.py --port 15222 --domain bench.test --ca-file ca.pem check --password-template 'pw-{n}'
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import ssl
import sys
import time
import xml.etree.ElementTree as ET

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_CLIENT = "jabber:client"
NS_MAM = "urn:xmpp:mam:2"
NS_DELAY = "urn:xmpp:delay"


class XmppError(Exception):
    pass


def q(ns, name):
    return "{%s}%s" % (ns, name)


def xml_escape(s):
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;").replace('"', "&quot;"))


class Client:
    def __init__(self, host, port, domain, cafile=None, timeout=15.0):
        self.host, self.port, self.domain = host, port, domain
        self.cafile = cafile
        self.timeout = timeout
        self.sock = None
        self.parser = None
        self.depth = 0
        self.queue = []  # completed top-level stanzas (Elements)
        self.features = None
        self.tls_version = None
        self.tls_cipher = None
        self.mechanisms = []
        self.mechanism_used = None
        self.jid = None
        self._id = 0

    # ---- low level -------------------------------------------------------------------
    def _new_parser(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.queue = []

    def _send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _open_stream(self):
        self._new_parser()
        self._send("<?xml version='1.0'?><stream:stream to='%s' xmlns='jabber:client' "
                   "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>" % self.domain)
        self.features = self.wait(lambda e: e.tag == q(NS_STREAM, "features"), what="stream features")

    def _pump(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise XmppError("timeout")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise XmppError("timeout")
        if not data:
            raise XmppError("connection closed by server")
        self.parser.feed(data)
        for ev, el in self.parser.read_events():
            if ev == "start":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.queue.append(el)
                    # keep the stream root from growing
            if ev == "end" and self.depth == 0:
                raise XmppError("stream closed by server")

    def wait(self, pred, timeout=None, what="reply"):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, el in enumerate(self.queue):
                if el.tag == q(NS_STREAM, "error"):
                    cond = [c.tag.split("}")[1] for c in el]
                    raise XmppError("stream error: %s" % ",".join(cond))
                if pred(el):
                    del self.queue[i]
                    return el
            try:
                self._pump(deadline)
            except XmppError as e:
                if str(e) == "timeout":
                    raise XmppError("timeout waiting for %s" % what)
                raise

    def next_id(self):
        self._id += 1
        return "c%d" % self._id

    # ---- protocol ----------------------------------------------------------------------
    def connect(self):
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._open_stream()

    def offers_starttls(self):
        return self.features is not None and self.features.find(q(NS_TLS, "starttls")) is not None

    def starttls(self):
        if not self.offers_starttls():
            raise XmppError("server offers no STARTTLS")
        self._send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        el = self.wait(lambda e: e.tag in (q(NS_TLS, "proceed"), q(NS_TLS, "failure")), what="starttls")
        if el.tag != q(NS_TLS, "proceed"):
            raise XmppError("STARTTLS refused")
        ctx = ssl.create_default_context(cafile=self.cafile) if self.cafile else ssl._create_unverified_context()
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.domain)
        self.tls_version = self.sock.version()
        self.tls_cipher = self.sock.cipher()[0]
        self._open_stream()
        mechs = self.features.find(q(NS_SASL, "mechanisms"))
        self.mechanisms = [m.text for m in mechs] if mechs is not None else []

    def auth(self, user, password, mechanism=None):
        if mechanism is None:
            mechanism = "SCRAM-SHA-256" if "SCRAM-SHA-256" in self.mechanisms else (
                "SCRAM-SHA-1" if "SCRAM-SHA-1" in self.mechanisms else "PLAIN")
        if mechanism not in self.mechanisms:
            raise XmppError("mechanism %s not offered (offered: %s)" % (mechanism, self.mechanisms))
        self.mechanism_used = mechanism
        if mechanism == "PLAIN":
            payload = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
            self._send("<auth xmlns='%s' mechanism='PLAIN'>%s</auth>" % (NS_SASL, payload))
            el = self.wait(lambda e: e.tag in (q(NS_SASL, "success"), q(NS_SASL, "failure")), what="sasl")
            if el.tag != q(NS_SASL, "success"):
                raise XmppError("authentication failed: %s" % [c.tag.split("}")[1] for c in el])
        else:
            self._scram(user, password, mechanism)
        self._open_stream()

    def _scram(self, user, password, mechanism):
        hname = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-1": "sha1"}[mechanism]
        nonce = base64.b64encode(os.urandom(18)).decode()
        bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"), nonce)
        gs2 = "n,,"
        self._send("<auth xmlns='%s' mechanism='%s'>%s</auth>" % (
            NS_SASL, mechanism, base64.b64encode((gs2 + bare).encode()).decode()))
        el = self.wait(lambda e: e.tag in (q(NS_SASL, "challenge"), q(NS_SASL, "failure")), what="sasl challenge")
        if el.tag != q(NS_SASL, "challenge"):
            raise XmppError("authentication failed at first step")
        server_first = base64.b64decode(el.text or "").decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        if not attrs["r"].startswith(nonce):
            raise XmppError("bad server nonce")
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        self.scram_iterations = iterations
        salted = hashlib.pbkdf2_hmac(hname, password.encode(), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hname).digest()
        stored_key = hashlib.new(hname, client_key).digest()
        final_bare = "c=%s,r=%s" % (base64.b64encode(gs2.encode()).decode(), attrs["r"])
        auth_message = ",".join([bare, server_first, final_bare]).encode()
        client_sig = hmac.new(stored_key, auth_message, hname).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_sig))
        final = final_bare + ",p=" + base64.b64encode(proof).decode()
        self._send("<response xmlns='%s'>%s</response>" % (NS_SASL, base64.b64encode(final.encode()).decode()))
        el = self.wait(lambda e: e.tag in (q(NS_SASL, "success"), q(NS_SASL, "failure"), q(NS_SASL, "challenge")),
                       what="sasl outcome")
        if el.tag == q(NS_SASL, "failure"):
            raise XmppError("authentication failed: %s" % [c.tag.split("}")[1] for c in el])
        server_final = base64.b64decode(el.text or "").decode()
        server_key = hmac.new(salted, b"Server Key", hname).digest()
        expect = base64.b64encode(hmac.new(server_key, auth_message, hname).digest()).decode()
        if server_final != "v=" + expect:
            raise XmppError("server signature mismatch")
        if el.tag == q(NS_SASL, "challenge"):
            self._send("<response xmlns='%s'/>" % NS_SASL)
            self.wait(lambda e: e.tag == q(NS_SASL, "success"), what="sasl success")

    def bind(self, resource="check"):
        iid = self.next_id()
        self._send("<iq type='set' id='%s'><bind xmlns='%s'><resource>%s</resource></bind></iq>" % (
            iid, NS_BIND, resource))
        el = self.wait(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == iid, what="bind")
        if el.get("type") != "result":
            raise XmppError("bind failed")
        self.jid = el.find(q(NS_BIND, "bind")).find(q(NS_BIND, "jid")).text
        # RFC 3921 session establishment, for servers that still want it (harmless otherwise).
        sess = self.features.find("{urn:ietf:params:xml:ns:xmpp-session}session")
        if sess is not None and sess.find("{urn:ietf:params:xml:ns:xmpp-session}optional") is None:
            iid = self.next_id()
            self._send("<iq type='set' id='%s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>" % iid)
            self.wait(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == iid, what="session")

    def presence(self):
        self._send("<presence/>")

    def message(self, to, body):
        self._send("<message to='%s' type='chat' id='%s'><body>%s</body></message>" % (
            xml_escape(to), self.next_id(), xml_escape(body)))

    def wait_message(self, body, timeout=10):
        return self.wait(lambda e: e.tag == q(NS_CLIENT, "message") and
                         (e.findtext(q(NS_CLIENT, "body")) == body), timeout=timeout, what="message %r" % body)

    def mam_count(self):
        """Runs a MAM query on the own archive. Returns (count, None) or (None, error condition)."""
        iid, qid = self.next_id(), "q" + self.next_id()
        self._send("<iq type='set' id='%s'><query xmlns='%s' queryid='%s'/></iq>" % (iid, NS_MAM, qid))
        el = self.wait(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == iid, what="mam result")
        if el.get("type") != "result":
            err = el.find(q(NS_CLIENT, "error"))
            cond = [c.tag.split("}")[1] for c in err] if err is not None else ["?"]
            return None, ",".join(c for c in cond if c != "text")
        n = 0
        for i in range(len(self.queue) - 1, -1, -1):
            m = self.queue[i]
            if m.tag == q(NS_CLIENT, "message") and m.find(q(NS_MAM, "result")) is not None:
                if m.find(q(NS_MAM, "result")).get("queryid") == qid:
                    n += 1
                    del self.queue[i]
        return n, None

    def close(self):
        try:
            self._send("</stream:stream>")
            self.sock.close()
        except Exception:
            pass


def login(a, user, password, resource="check", mechanism=None, presence=True):
    c = Client(a.host, a.port, a.domain, cafile=a.ca_file)
    c.connect()
    c.starttls()
    c.auth(user, password, mechanism)
    c.bind(resource)
    if presence:
        c.presence()
    return c


def cmd_probe(a):
    """Connects, checks that the server answers with stream features that offer STARTTLS."""
    c = Client(a.host, a.port, a.domain, cafile=a.ca_file, timeout=5)
    c.connect()
    ok = c.offers_starttls()
    c.close()
    print(json.dumps({"starttls": ok}))
    return 0 if ok else 1


def cmd_check(a):
    pw = lambda n: a.password_template.replace("{n}", str(n))
    out = {}
    t0 = time.monotonic()
    c0 = login(a, a.prefix + "0", pw(0), mechanism=a.mechanism)
    out["login_seconds"] = round(time.monotonic() - t0, 3)
    out["tls"] = "%s %s" % (c0.tls_version, c0.tls_cipher)
    out["mechanisms_offered"] = c0.mechanisms
    out["mechanism_used"] = c0.mechanism_used
    out["scram_iterations"] = getattr(c0, "scram_iterations", None)
    out["jid"] = c0.jid
    c1 = login(a, a.prefix + "1", pw(1), mechanism=a.mechanism)
    time.sleep(0.3)
    body = "check-%d" % time.time_ns()
    c0.message("%s1@%s" % (a.prefix, a.domain), body)
    c1.wait_message(body)
    out["online_message"] = "delivered"
    # offline: bench2 is not connected
    obody = "offline-%d" % time.time_ns()
    c0.message("%s2@%s" % (a.prefix, a.domain), obody)
    time.sleep(0.5)
    c2 = login(a, a.prefix + "2", pw(2), mechanism=a.mechanism)
    m = c2.wait_message(obody)
    out["offline_message"] = "delivered" + (" (delay-stamped)" if m.find(q(NS_DELAY, "delay")) is not None else "")
    time.sleep(0.5)
    n, err = c0.mam_count()
    out["archive"] = ("%d message(s) in bench0's archive" % n) if err is None else ("query refused: %s" % err)
    out["archive_count"] = n
    for c in (c0, c1, c2):
        c.close()
    print(json.dumps(out))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--domain", required=True)
    p.add_argument("--ca-file")
    p.add_argument("--prefix", default="bench")
    p.add_argument("--password-template", default="pw-{n}")
    p.add_argument("--mechanism", help="force a SASL mechanism (default: SCRAM-SHA-256 when offered)")
    p.add_argument("what", choices=["probe", "check"])
    a = p.parse_args()
    try:
        return {"probe": cmd_probe, "check": cmd_check}[a.what](a)
    except (XmppError, OSError, ssl.SSLError) as e:
        print(json.dumps({"error": str(e)}))
        return 2


if __name__ == "__main__":
    sys.exit(main())
