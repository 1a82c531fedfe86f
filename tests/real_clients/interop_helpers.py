"""Helpers for the interop tests: a provider's backend (its Ed25519 key, its JWKS, the tokens
it signs for its users) and SASL OAUTHBEARER (RFC 7628) for slixmpp, which has none.

slixmpp's SASL registry takes the mechanism below when this module is imported: a few lines that
build the client's message; everything else (TLS, the stream, bind) stays slixmpp's. Tokens are
JWTs (RFC 7519) signed with Ed25519 (EdDSA, RFC 8037) by `cryptography`, as a provider's backend
would sign them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from slixmpp.util.sasl.client import Mech, sasl_mech


@sasl_mech(1)
class OAUTHBEARER(Mech):
    """RFC 7628 §3.1, client side: the GS2 header, then `auth=Bearer <token>`; an error
    challenge (a JSON status) is answered with the dummy %x01 of §3.2.3."""

    name = "OAUTHBEARER"
    required_credentials = {"access_token"}

    def setup(self, name):
        self.sent = False

    def process(self, challenge=b""):
        if self.sent:
            return b"\x01"
        self.sent = True
        token = self.credentials["access_token"]
        if isinstance(token, str):
            token = token.encode()
        return b"n,,\x01auth=Bearer " + token + b"\x01\x01"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ProviderBackend:
    """What a provider runs on its side: an Ed25519 key, its JWKS, tokens for its users."""

    def __init__(self, domain: str) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.issuer = f"https://{domain}"
        x = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.jwks = json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(x),
                                          "kid": "k1", "use": "sig"}]})

    def token(self, sub: str, audience: str, lifetime: int = 300) -> str:
        header = {"alg": "EdDSA", "typ": "JWT", "kid": "k1"}
        claims = {"iss": self.issuer, "aud": audience, "sub": sub,
                  "exp": int(time.time()) + lifetime}
        signing_input = (b64url(json.dumps(header).encode()) + "." +
                         b64url(json.dumps(claims).encode()))
        return signing_input + "." + b64url(self.key.sign(signing_input.encode()))


def register_provider(server, scopes: str = "text,media,files"):
    """A fresh active provider with enlistment; returns (id, domain, backend)."""
    pid = f"p{secrets.token_hex(4)}"
    domain = f"{pid}.test"
    backend = ProviderBackend(domain)
    jwks = os.path.join(server.workdir, f"{pid}.jwks")
    with open(jwks, "w") as fh:
        fh.write(backend.jwks)
    server.cli("provider", "add", pid, "--name", f"{pid} Chat", "--provider-domain", domain,
               "--scopes", scopes, "--issuer", backend.issuer, "--jwks", jwks,
               "--actor", "test")
    server.cli("provider", "terms", pid, "--version", "2024-03", "--accepted-by", "Jo Signer",
               "--actor", "test")
    server.cli("provider", "activate", pid, "--actor", "test")
    return pid, domain, backend


def condition_of(err) -> str:
    """The stanza error's defined condition, read from the XML: slixmpp 1.17 does not know
    RFC 6120's policy-violation and reports it as ''."""
    e = err.xml.find("{jabber:client}error")
    for child in (e if e is not None else []):
        if child.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}") and \
                not child.tag.endswith("}text"):
            return child.tag.split("}")[1]
    return ""


async def refusal_after_consent(sender, send, timeout: float = 8.0):
    """The refusal of what `send()` sends once the operator's consent change has reached the
    running server: `strait user consent` writes the store, and the server drops its consent
    cache within its registry poll's second. Sends again while the refusal is still the
    consent's `not-allowed`; returns the first other refusal (or the last one at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        sender.message_errors.clear()
        send()
        err = await sender.wait_cond(lambda: sender.message_errors and sender.message_errors[-1],
                                     "a refusal")
        if condition_of(err) != "not-allowed" or time.monotonic() > deadline:
            return err
        await asyncio.sleep(0.3)
