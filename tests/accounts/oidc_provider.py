"""A minimal but real OpenID Connect provider, over HTTP on loopback, that can be told to misbehave.

It runs in a thread with its own event loop (like ``tests/upstream/fake.py``), so a client in
the test's loop or in a server process talks to it exactly as to Google or a company SSO::

    with OidcProvider() as provider:             # or provider.start() / provider.stop()
        provider.set_user("user-1", "ada@example.org", True, "Ada")
        provider.misbehave("wrong_nonce")         # the next id_token only
        callback = await follow(authorization_url)  # "be the browser": code, state, error

Endpoints: discovery, JWKS (RSA and EC keys made at start), ``/authorize`` (no login page: it
302-redirects to ``redirect_uri`` at once with ``code`` and ``state``), ``/token`` (checks
client authentication, the code, ``redirect_uri`` and the PKCE verifier), ``/userinfo``.
Every request is recorded in ``seen``.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import json
import secrets
import socket
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

import httpx
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from keyhouse.clock import Clock, SystemClock

#: What ``misbehave`` can do to the next token response.
FAULTS = frozenset(
    {
        "wrong_nonce",  # a nonce from some other sign-in
        "wrong_audience",  # issued for another client
        "other_azp",  # two audiences, authorised party is the other client
        "wrong_issuer",  # ``iss`` is not this provider
        "expired",  # ``exp`` two minutes ago (past any sane leeway)
        "bad_signature",  # signed by an unpublished key under a published kid
        "unknown_kid",  # signed by an unpublished key with a kid nobody knows
        "alg_none",  # no signature at all
        "alg_hs256",  # HMAC with the client secret (algorithm confusion)
        "token_error",  # the token endpoint answers 400 invalid_grant
    }
)


#: The record of the request being handled (the middleware and the handler share a task).
_current: contextvars.ContextVar[Seen] = contextvars.ContextVar("oidc_provider_seen")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a verifier."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass
class User:
    sub: str = "user-1"
    email: str | None = "ada@example.org"
    email_verified: bool = True
    name: str | None = "Ada Lovelace"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @classmethod
    def new(cls, alg: str) -> SigningKey:
        if alg == "RS256":
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unsupported alg {alg}")
        return cls(kid=secrets.token_hex(8), alg=alg, private=private)

    def jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        public = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, claims: Mapping[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(
            dict(claims), self.private, algorithm=self.alg, headers={"kid": kid or self.kid}
        )


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    nonce: str | None
    challenge: str
    user: User
    faults: frozenset[str]
    claims: dict[str, Any]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    form: dict[str, str]


@dataclass
class OidcProvider:
    client_id: str = "keyhouse-test"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    #: What discovery advertises, and the only client authentications /token accepts.
    auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post")
    #: The id_token's signing algorithm: RS256 or ES256.
    alg: str = "RS256"
    #: A path under the host for the issuer (Keycloak-like ``/realms/x``), or none.
    path: str = ""
    clock: Clock = field(default_factory=SystemClock)
    user: User = field(default_factory=User)
    #: False: the id_token carries no email, the client must ask /userinfo.
    email_in_id_token: bool = True
    #: Discovery claims this issuer instead of the real one (a confused or hostile provider).
    discovery_issuer: str | None = None
    #: Seconds /token waits before answering (timeouts).
    token_delay: float = 0.0
    #: Redirect URIs accepted by /authorize (None: any).
    redirect_uris: set[str] | None = None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.keys: dict[str, SigningKey] = {alg: SigningKey.new(alg) for alg in ("RS256", "ES256")}
        self.published: list[SigningKey] = list(self.keys.values())
        self._faults: set[str] = set()
        self._claims: dict[str, Any] = {}
        self._denials: deque[str] = deque()
        self._codes: dict[str, Grant] = {}
        self._access_tokens: dict[str, User] = {}
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def set_user(
        self, sub: str, email: str | None, email_verified: bool = True, name: str | None = None
    ) -> None:
        """Who signs in next (and from then on)."""
        self.user = User(sub, email, email_verified, name)

    def misbehave(self, *faults: str, claims: Mapping[str, Any] | None = None) -> None:
        """Spoil the token response of the next /authorize: ``faults`` from ``FAULTS``, and
        ``claims`` merged into the id_token (a ``None`` value removes that claim)."""
        unknown = set(faults) - FAULTS
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self._faults.update(faults)
        self._claims.update(claims or {})

    def deny_next(self, error: str = "access_denied") -> None:
        """The next /authorize redirects back with ``error`` (the person said no)."""
        self._denials.append(error)

    def rotate_keys(self, *, keep_old: bool = True) -> str:
        """New signing keys with new kids; the old ones stay published unless ``keep_old`` is
        False. Returns the new kid of ``alg``."""
        old = list(self.published)
        self.keys = {alg: SigningKey.new(alg) for alg in ("RS256", "ES256")}
        self.published = list(self.keys.values()) + (old if keep_old else [])
        return self.keys[self.alg].kid

    def calls(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path == self.path + path)

    # ------------------------------------------------------------------ endpoints

    async def discovery(self, request: web.Request) -> web.Response:
        base = self.issuer
        return web.json_response(
            {
                "issuer": self.discovery_issuer or base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "userinfo_endpoint": f"{base}/userinfo",
                "jwks_uri": f"{base}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                "scopes_supported": ["openid", "email", "profile"],
                "token_endpoint_auth_methods_supported": list(self.auth_methods),
                "code_challenge_methods_supported": ["S256"],
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "email"],
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [key.jwk() for key in self.published]})

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id:
            return web.Response(status=400, text="unknown client_id")
        if not redirect_uri or (
            self.redirect_uris is not None and redirect_uri not in self.redirect_uris
        ):
            return web.Response(status=400, text="redirect_uri not registered")
        state = q.get("state")
        back: dict[str, str] = {}
        if self._denials:
            back["error"] = self._denials.popleft()
        elif q.get("response_type") != "code":
            back["error"] = "unsupported_response_type"
        elif "openid" not in q.get("scope", "").split():
            back["error"] = "invalid_scope"
        elif q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            back = {"error": "invalid_request", "error_description": "PKCE S256 required"}
        else:
            code = secrets.token_urlsafe(24)
            self._codes[code] = Grant(
                client_id=self.client_id,
                redirect_uri=redirect_uri,
                nonce=q.get("nonce"),
                challenge=q["code_challenge"],
                user=self.user,
                faults=frozenset(self._faults),
                claims=dict(self._claims),
            )
            self._faults.clear()
            self._claims.clear()
            back["code"] = code
        if state is not None:
            back["state"] = state
        sep = "&" if "?" in redirect_uri else "?"
        raise web.HTTPFound(f"{redirect_uri}{sep}{urlencode(back)}")

    def _client(self, request: web.Request, form: Mapping[str, str]) -> str | None:
        """The authenticated client_id, or None."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            method = "client_secret_basic"
            try:
                raw = base64.b64decode(header[6:], validate=True).decode()
            except ValueError:
                return None
            ident, _, secret = raw.partition(":")
            ident, secret = unquote_plus(ident), unquote_plus(secret)
        elif "client_secret" in form:
            method = "client_secret_post"
            ident, secret = form.get("client_id", ""), form["client_secret"]
        else:
            method = "none"
            ident, secret = form.get("client_id", ""), None
        if method not in self.auth_methods or ident != self.client_id:
            return None
        if method != "none" and secret != self.client_secret:
            return None
        return ident

    async def token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        _current.get().form = form
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        if self._client(request, form) is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        grant = self._codes.pop(form.get("code", ""), None)  # single use, even when refused
        if grant is None or grant.redirect_uri != form.get("redirect_uri"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        verifier = form.get("code_verifier", "")
        if not verifier or s256(verifier) != grant.challenge:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "PKCE verification failed"},
                status=400,
            )
        if "token_error" in grant.faults:
            return web.json_response({"error": "invalid_grant"}, status=400)
        access_token = secrets.token_urlsafe(24)
        self._access_tokens[access_token] = grant.user
        return web.json_response(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": "openid email profile",
                "id_token": self.id_token(grant),
            },
            headers={"Cache-Control": "no-store"},
        )

    def id_token(self, grant: Grant) -> str:
        now = int(self.clock.now().timestamp())
        faults = grant.faults
        claims: dict[str, Any] = {
            "iss": self.issuer + ("/other" if "wrong_issuer" in faults else ""),
            "sub": grant.user.sub,
            "aud": "another-client" if "wrong_audience" in faults else grant.client_id,
            "iat": now,
            "exp": now - 120 if "expired" in faults else now + 300,
            "auth_time": now,
        }
        if grant.nonce is not None:
            claims["nonce"] = "not-the-nonce" if "wrong_nonce" in faults else grant.nonce
        if "other_azp" in faults:
            claims["aud"] = [grant.client_id, "another-client"]
            claims["azp"] = "another-client"
        if self.email_in_id_token and grant.user.email is not None:
            claims["email"] = grant.user.email
            claims["email_verified"] = grant.user.email_verified
        if grant.user.name is not None:
            claims["name"] = grant.user.name
        for name, value in grant.claims.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value

        key = self.keys[self.alg]
        if "bad_signature" in faults:
            return SigningKey.new(self.alg).sign(claims, kid=key.kid)
        if "unknown_kid" in faults:
            return SigningKey.new(self.alg).sign(claims)
        if "alg_none" in faults:
            header = b64url(json.dumps({"alg": "none", "kid": key.kid}).encode())
            return f"{header}.{b64url(json.dumps(claims).encode())}."
        if "alg_hs256" in faults:
            return jwt.encode(
                claims, self.client_secret, algorithm="HS256", headers={"kid": key.kid}
            )
        return key.sign(claims)

    async def userinfo(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        user = (
            self._access_tokens.get(header.removeprefix("Bearer "))
            if header.startswith("Bearer ")
            else None
        )
        if user is None:
            return web.json_response(
                {"error": "invalid_token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        info: dict[str, Any] = {"sub": user.sub}
        if user.email is not None:
            info.update(email=user.email, email_verified=user.email_verified)
        if user.name is not None:
            info["name"] = user.name
        return web.json_response(info)

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        seen = Seen(request.method, request.path, dict(request.headers), dict(request.query), {})
        self.seen.append(seen)
        _current.set(seen)
        return await handler(request)

    # ------------------------------------------------------------------ running

    def start(self) -> OidcProvider:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="oidc-provider", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the OIDC provider did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(middlewares=[self._record])
        p = self.path
        app.router.add_get(f"{p}/.well-known/openid-configuration", self.discovery)
        app.router.add_get(f"{p}/jwks", self.jwks)
        app.router.add_get(f"{p}/authorize", self.authorize)
        app.router.add_post(f"{p}/token", self.token)
        app.router.add_route("*", f"{p}/userinfo", self.userinfo)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._thread = None

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------- being the browser


@dataclass(frozen=True)
class Callback:
    """Where the provider sent the browser back to, split into what the callback reads."""

    url: str
    code: str | None
    state: str | None
    error: str | None

    @property
    def params(self) -> dict[str, str | None]:
        """Keyword arguments for ``OidcClient.finish`` (all but ``cookie``)."""
        return {"code": self.code, "state": self.state, "error": self.error}


async def follow(authorization_url: str) -> Callback:
    """Open the authorization URL as a browser would, and stop at the redirect back."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=10) as http:
        response = await http.get(authorization_url)
    if response.status_code != 302:
        raise AssertionError(f"/authorize answered {response.status_code}: {response.text}")
    location = response.headers["location"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    return Callback(location, query.get("code"), query.get("state"), query.get("error"))
