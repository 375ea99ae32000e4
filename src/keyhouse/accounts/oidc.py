"""Sign in with an OpenID Connect provider: the authorization code flow, with PKCE.

Two HTTP handlers drive one ``OidcClient`` (made once per app, closed at shutdown)::

    client = OidcClient(settings.oidc, redirect_uri=f"{settings.public_url}/api/auth/oidc/callback",
                        signing_key=<bytes derived from the server secret>, clock=clock)

    # GET /api/auth/oidc/start
    url, cookie = await client.start()
    -> 302 to ``url``; Set-Cookie: keyhouse_oidc=<cookie>; Path=/api/auth/oidc; HttpOnly;
       SameSite=Lax; Max-Age=600 (plus Secure when public_url is https)

    # GET /api/auth/oidc/callback?code=…&state=…  (or ?error=…)
    claims = await client.finish(code=q.get("code"), state=q.get("state"),
                                 error=q.get("error"), cookie=request.cookies.get("keyhouse_oidc"))
    -> delete the cookie (success or not), then link ``claims`` to a member.

SameSite=Lax, not Strict: the callback is a top-level navigation coming from the provider's
site, and a Strict cookie would not be sent with it. The cookie carries all the state the
flow needs (state, nonce, PKCE verifier, issued-at) under an HMAC, so any replica can finish a
flow another started and nothing is stored server-side.

Trust ``email`` only when ``email_verified`` is true; the stable identity is
``(issuer, subject)``. Tokens, codes and secrets never reach a log line or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
import jwt

from keyhouse.clock import Clock
from keyhouse.config import OidcSettings
from keyhouse.errors import KeyhouseError

COOKIE_NAME = "keyhouse_oidc"
COOKIE_PATH = "/api/auth/oidc"
#: How long a started sign-in may take (seconds): the cookie's Max-Age and its MAC'd expiry.
COOKIE_MAX_AGE = 600
#: Clock skew tolerated on id_token times and on the cookie's issued-at (seconds).
LEEWAY = 60
TIMEOUT = 10.0

#: Asymmetric only: HS* would let anyone holding the client secret mint tokens, and
#: ``none`` is no signature at all.
ALGORITHMS = ("RS256", "ES256")
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
_MAC_CONTEXT = b"keyhouse oidc cookie\0"
#: Provider error codes are short words; anything else is not echoed back.
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class OidcClaims:
    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    name: str | None


class OidcError(KeyhouseError):
    status = 400
    type = "invalid_request_error"
    code = "oidc_failed"


@dataclass(frozen=True)
class _Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    auth_method: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _safe_code(value: Any) -> str:
    """A provider's error code, if it looks like one (never free text that might echo input)."""
    return value if isinstance(value, str) and _ERROR_CODE.match(value) else "unknown"


def _truthy(value: Any) -> bool:
    # Some providers send "true" as a string.
    return value is True or value == "true"


class OidcClient:
    """One configured provider: discovery and keys are fetched once and cached."""

    def __init__(
        self,
        settings: OidcSettings,
        *,
        redirect_uri: str,
        signing_key: bytes,
        clock: Clock,
        timeout: float = TIMEOUT,
    ) -> None:
        if not settings.enabled:
            raise ValueError("OIDC is not configured (issuer and client_id are needed)")
        if not signing_key:
            raise ValueError("signing_key must not be empty")
        self.settings = settings
        self.issuer = str(settings.issuer).rstrip("/")
        self.client_id = str(settings.client_id)
        self.redirect_uri = redirect_uri
        self.clock = clock
        self._signing_key = signing_key
        scopes = list(settings.scopes)
        if "openid" not in scopes:
            scopes.insert(0, "openid")
        self.scope = " ".join(scopes)
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._provider: _Provider | None = None
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._anonymous_keys: list[jwt.PyJWK] = []
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ the two steps

    async def start(self) -> tuple[str, str]:
        """(authorization URL to redirect the browser to, value for a short-lived cookie that
        carries state)."""
        provider = await self._discover()
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        challenge = _b64(hashlib.sha256(verifier.encode("ascii")).digest())
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": self.scope,
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        sep = "&" if "?" in provider.authorization_endpoint else "?"
        now = int(self.clock.now().timestamp())
        cookie = self._seal({"s": state, "n": nonce, "v": verifier, "t": now})
        return f"{provider.authorization_endpoint}{sep}{query}", cookie

    async def finish(
        self, *, code: str | None, state: str | None, error: str | None, cookie: str | None
    ) -> OidcClaims:
        """Check the callback against the cookie, redeem the code and verify the id_token."""
        if error:
            raise OidcError(f"The sign-in provider refused the sign-in ({_safe_code(error)}).")
        flow = self._open(cookie)
        if not state or not hmac.compare_digest(state.encode(), flow["s"].encode()):
            raise OidcError("The sign-in state does not match; please start again.")
        if not code:
            raise OidcError("The sign-in provider sent no authorization code.")
        provider = await self._discover()
        tokens = await self._redeem(provider, code, flow["v"])
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("The sign-in provider sent no id_token.")
        claims = await self._verify(provider, id_token, flow["n"])

        email = claims.get("email")
        verified = _truthy(claims.get("email_verified"))
        name = claims.get("name")
        access_token = tokens.get("access_token")
        if email is None and provider.userinfo_endpoint and isinstance(access_token, str):
            info = await self._userinfo(provider, access_token)
            if info.get("sub") != claims["sub"]:
                raise OidcError("The provider's userinfo is about someone else.")
            email = info.get("email")
            verified = _truthy(info.get("email_verified"))
            name = name or info.get("name")
        return OidcClaims(
            issuer=provider.issuer,
            subject=claims["sub"],
            email=email if isinstance(email, str) and email else None,
            email_verified=verified and isinstance(email, str) and bool(email),
            name=name if isinstance(name, str) and name else None,
        )

    # ------------------------------------------------------------------ the cookie

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._signing_key, _MAC_CONTEXT + payload.encode(), hashlib.sha256)
        return _b64(digest.digest())

    def _seal(self, flow: dict[str, Any]) -> str:
        payload = _b64(json.dumps(flow, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def _open(self, cookie: str | None) -> dict[str, Any]:
        if not cookie:
            raise OidcError(
                "The sign-in session is missing (cookies blocked?); please start again."
            )
        payload, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):
            raise OidcError("The sign-in session cookie is not valid; please start again.")
        try:
            flow = json.loads(_unb64(payload))
            fields = (flow["s"], flow["n"], flow["v"])
            issued = flow["t"]
        except (ValueError, KeyError, TypeError) as exc:
            raise OidcError("The sign-in session cookie is not valid; please start again.") from exc
        if not all(isinstance(f, str) for f in fields) or not isinstance(issued, int):
            raise OidcError("The sign-in session cookie is not valid; please start again.")
        age = self.clock.now().timestamp() - issued
        if age > COOKIE_MAX_AGE or age < -LEEWAY:
            raise OidcError("The sign-in took too long and expired; please start again.")
        return flow

    # ------------------------------------------------------------------ the provider

    async def _get_json(self, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.get(url, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(what) from exc
        if response.status_code != 200:
            raise _unreachable(f"{what} (HTTP {response.status_code})")
        try:
            body = response.json()
        except ValueError as exc:
            raise _unreachable(f"{what} (not JSON)") from exc
        if not isinstance(body, dict):
            raise _unreachable(f"{what} (not a JSON object)")
        return body

    async def _discover(self) -> _Provider:
        if self._provider is not None:
            return self._provider
        async with self._lock:
            if self._provider is None:
                url = f"{self.issuer}/.well-known/openid-configuration"
                doc = await self._get_json(url, "its discovery document")
                self._provider = self._parse_discovery(doc)
        return self._provider

    def _parse_discovery(self, doc: dict[str, Any]) -> _Provider:
        issuer = doc.get("issuer")
        # The document must be about the issuer we were configured with: otherwise any
        # issuer's tokens would pass the ``iss`` check below.
        if not isinstance(issuer, str) or issuer.rstrip("/") != self.issuer:
            raise _unreachable("a discovery document for a different issuer")
        endpoints = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str) or not value:
                raise _unreachable(f"a discovery document without {name}")
            endpoints[name] = value
        userinfo = doc.get("userinfo_endpoint")
        methods = doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if self.settings.client_secret is None:
            method = "none"
        elif "client_secret_basic" in methods or "client_secret_post" not in methods:
            method = "client_secret_basic"
        else:
            method = "client_secret_post"
        return _Provider(
            issuer=issuer,
            userinfo_endpoint=userinfo if isinstance(userinfo, str) and userinfo else None,
            auth_method=method,
            **endpoints,
        )

    async def _redeem(self, provider: _Provider, code: str, verifier: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        secret = self.settings.client_secret
        if provider.auth_method == "client_secret_basic" and secret is not None:
            # RFC 6749 §2.3.1: form-encode both parts before base64.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.client_id
            if secret is not None:
                form["client_secret"] = secret
        try:
            response = await self._http.post(provider.token_endpoint, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise _unreachable("its token endpoint") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code != 200:
            raise OidcError(
                "The sign-in provider refused to redeem the authorization code "
                f"(HTTP {response.status_code}, {_safe_code(body.get('error'))})."
            )
        return body

    async def _userinfo(self, provider: _Provider, access_token: str) -> dict[str, Any]:
        assert provider.userinfo_endpoint is not None
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        return await self._get_json(
            provider.userinfo_endpoint, "its userinfo endpoint", headers=headers
        )

    # ------------------------------------------------------------------ the id_token

    async def _load_keys(self, provider: _Provider) -> None:
        doc = await self._get_json(provider.jwks_uri, "its signing keys")
        keys: dict[str, jwt.PyJWK] = {}
        anonymous: list[jwt.PyJWK] = []
        for entry in doc.get("keys") or []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") not in _KEY_TYPES.values():
                continue
            try:
                key = jwt.PyJWK(entry)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue  # a key type or curve we do not use, or a broken entry
            if isinstance(entry.get("kid"), str):
                keys[entry["kid"]] = key
            else:
                anonymous.append(key)
        self._keys, self._anonymous_keys = keys, anonymous

    async def _key_for(self, provider: _Provider, kid: Any, alg: str) -> jwt.PyJWK:
        for attempt in range(2):
            if self._keys is None or attempt == 1:
                # Unknown kid: the provider may have rotated its keys. Refetch once.
                await self._load_keys(provider)
            assert self._keys is not None
            if isinstance(kid, str) and kid in self._keys:
                return self._keys[kid]
            if kid is None:
                every = self._anonymous_keys + list(self._keys.values())
                fitting = [k for k in every if k.key_type == _KEY_TYPES[alg]]
                if len(fitting) == 1:
                    return fitting[0]
        raise OidcError("The id_token is signed with a key the provider does not publish.")

    async def _verify(self, provider: _Provider, token: str, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise OidcError("The id_token is not a valid JWT.") from exc
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise OidcError(f"The id_token's signature algorithm ({_safe_code(alg)}) is refused.")
        key = await self._key_for(provider, header.get("kid"), alg)
        if key.key_type != _KEY_TYPES[alg] or (key.algorithm_name not in (alg, None)):
            raise OidcError("The id_token's algorithm does not fit its key.")
        try:
            # Times are checked below against our clock, not the machine's.
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.client_id,
                issuer=provider.issuer,
                options={
                    "require": ["iss", "sub", "aud", "exp", "iat"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise OidcError("The id_token's signature is not valid.") from exc
        except jwt.InvalidAudienceError as exc:
            raise OidcError("The id_token was issued for another client.") from exc
        except jwt.InvalidIssuerError as exc:
            raise OidcError("The id_token was issued by another issuer.") from exc
        except jwt.PyJWTError as exc:
            raise OidcError(f"The id_token is not valid ({type(exc).__name__}).") from exc

        audience = claims["aud"]
        azp = claims.get("azp")
        several = isinstance(audience, list) and len(audience) > 1
        if (several or azp is not None) and azp != self.client_id:
            raise OidcError("The id_token was issued for another client (azp).")
        now = self.clock.now().timestamp()
        exp = claims["exp"]
        if not isinstance(exp, int | float) or exp + LEEWAY < now:
            raise OidcError("The id_token has expired.")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf - LEEWAY > now:
            raise OidcError("The id_token is not valid yet.")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
            token_nonce.encode(), nonce.encode()
        ):
            raise OidcError("The id_token's nonce does not match this sign-in.")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise OidcError("The id_token has no subject.")
        return claims


def _unreachable(what: str) -> OidcError:
    """The provider failed us (down, slow, or odd): a gateway error, not the member's fault."""
    return OidcError(
        f"The sign-in provider could not be used: {what}.", status=502, type="server_error"
    )
