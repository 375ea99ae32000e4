"""Sign-in with OpenID Connect, against a real provider over HTTP: each check refuses what it
should, and says so without echoing a code, token or secret."""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from keyhouse.accounts.oidc import COOKIE_MAX_AGE, OidcClaims, OidcClient, OidcError
from keyhouse.clock import FrozenClock, SystemClock
from keyhouse.config import OidcSettings
from tests.accounts.oidc_provider import Callback, OidcProvider, follow, s256

REDIRECT = "http://127.0.0.1:8000/api/auth/oidc/callback"
KEY = b"k" * 32


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def provider(clock: FrozenClock) -> Iterator[OidcProvider]:
    with OidcProvider(clock=clock) as running:
        yield running


def settings_for(provider: OidcProvider, **changes: object) -> OidcSettings:
    values: dict[str, object] = {
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
        "name": "Test SSO",
    }
    values.update(changes)
    return OidcSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def client(provider: OidcProvider, clock: FrozenClock) -> AsyncIterator[OidcClient]:
    oidc = OidcClient(settings_for(provider), redirect_uri=REDIRECT, signing_key=KEY, clock=clock)
    yield oidc
    await oidc.close()


async def sign_in(client: OidcClient) -> OidcClaims:
    url, cookie = await client.start()
    callback = await follow(url)
    return await client.finish(**callback.params, cookie=cookie)


async def refused(client: OidcClient, match: str, *, cookie: str, callback: Callback) -> OidcError:
    """``finish`` refuses, for the reason ``match`` names, and leaks nothing it was given."""
    with pytest.raises(OidcError, match=match) as caught:
        await client.finish(**callback.params, cookie=cookie)
    error = caught.value
    said = json.dumps(error.body())
    for secret in (callback.code, callback.state, cookie, client.settings.client_secret):
        assert not secret or secret not in said
    return error


async def flow(client: OidcClient) -> tuple[str, Callback]:
    url, cookie = await client.start()
    return cookie, await follow(url)


# ---------------------------------------------------------------------- it works


async def test_sign_in_end_to_end(client: OidcClient, provider: OidcProvider) -> None:
    provider.set_user("sub-42", "ada@example.org", True, "Ada Lovelace")
    url, cookie = await client.start()

    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(provider.issuer + "/authorize?")
    assert query["response_type"] == "code"
    assert query["client_id"] == provider.client_id
    assert query["redirect_uri"] == REDIRECT
    assert query["scope"] == "openid email profile"
    assert query["code_challenge_method"] == "S256"
    assert query["state"] and query["nonce"]
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", cookie)  # safe as a cookie value

    callback = await follow(url)
    assert callback.url.startswith(REDIRECT + "?")
    claims = await client.finish(**callback.params, cookie=cookie)
    assert claims == OidcClaims(
        issuer=provider.issuer,
        subject="sub-42",
        email="ada@example.org",
        email_verified=True,
        name="Ada Lovelace",
    )

    # PKCE: the verifier sent to /token is the one behind the challenge sent to /authorize.
    (token,) = [s for s in provider.seen if s.path.endswith("/token")]
    assert s256(token.form["code_verifier"]) == query["code_challenge"]
    assert token.form["redirect_uri"] == REDIRECT
    # client_secret_basic by default: the secret travels in the header only.
    assert token.headers["Authorization"].startswith("Basic ")
    assert "client_secret" not in token.form
    # The id_token had the email: no need to ask /userinfo.
    assert provider.calls("/userinfo") == 0


async def test_client_secret_post_when_that_is_all_the_provider_takes(clock: FrozenClock) -> None:
    with OidcProvider(clock=clock, auth_methods=("client_secret_post",)) as provider:
        oidc = OidcClient(
            settings_for(provider), redirect_uri=REDIRECT, signing_key=KEY, clock=clock
        )
        try:
            assert (await sign_in(oidc)).subject == provider.user.sub
        finally:
            await oidc.close()
        (token,) = [s for s in provider.seen if s.path.endswith("/token")]
        assert token.form["client_secret"] == provider.client_secret
        assert "Authorization" not in token.headers


async def test_public_client_without_a_secret(clock: FrozenClock) -> None:
    with OidcProvider(clock=clock, auth_methods=("none",)) as provider:
        settings = settings_for(provider, client_secret=None)
        oidc = OidcClient(settings, redirect_uri=REDIRECT, signing_key=KEY, clock=clock)
        try:
            assert (await sign_in(oidc)).email == provider.user.email
        finally:
            await oidc.close()


async def test_es256_and_an_issuer_with_a_path(clock: FrozenClock) -> None:
    with OidcProvider(clock=clock, alg="ES256", path="/realms/keyhouse") as provider:
        oidc = OidcClient(
            settings_for(provider), redirect_uri=REDIRECT, signing_key=KEY, clock=clock
        )
        try:
            claims = await sign_in(oidc)
        finally:
            await oidc.close()
        assert claims.issuer == provider.issuer
        assert claims.issuer.endswith("/realms/keyhouse")


async def test_email_from_userinfo_when_the_id_token_has_none(
    client: OidcClient, provider: OidcProvider
) -> None:
    provider.email_in_id_token = False
    provider.set_user("sub-7", "bob@example.org", False, None)
    claims = await sign_in(client)
    assert provider.calls("/userinfo") == 1
    assert (claims.email, claims.email_verified, claims.name) == ("bob@example.org", False, None)

    provider.set_user("sub-8", "carol@example.org", True, "Carol")
    claims = await sign_in(client)
    assert (claims.email, claims.email_verified, claims.name) == (
        "carol@example.org",
        True,
        "Carol",
    )


async def test_unverified_email_in_the_id_token(client: OidcClient, provider: OidcProvider) -> None:
    provider.set_user("sub-9", "eve@example.org", False, "Eve")
    claims = await sign_in(client)
    assert (claims.email, claims.email_verified) == ("eve@example.org", False)
    provider.misbehave(claims={"email_verified": None})  # absent means not verified
    assert (await sign_in(client)).email_verified is False


async def test_discovery_and_keys_are_fetched_once(
    client: OidcClient, provider: OidcProvider
) -> None:
    for _ in range(3):
        await sign_in(client)
    assert provider.calls("/.well-known/openid-configuration") == 1
    assert provider.calls("/jwks") == 1


async def test_key_rotation_refetches_the_keys_once(
    client: OidcClient, provider: OidcProvider
) -> None:
    await sign_in(client)
    provider.rotate_keys(keep_old=False)
    await sign_in(client)  # unknown kid: the keys are fetched again, and it verifies
    assert provider.calls("/jwks") == 2
    await sign_in(client)
    assert provider.calls("/jwks") == 2


async def test_a_key_nobody_publishes(client: OidcClient, provider: OidcProvider) -> None:
    await sign_in(client)
    provider.misbehave("unknown_kid")
    cookie, callback = await flow(client)
    await refused(client, "key the provider does not publish", cookie=cookie, callback=callback)
    assert provider.calls("/jwks") == 2  # one refetch, not a loop


# ---------------------------------------------------------------------- the callback and cookie


async def test_provider_error_is_refused(client: OidcClient, provider: OidcProvider) -> None:
    provider.deny_next("access_denied")
    cookie, callback = await flow(client)
    assert callback.error == "access_denied" and callback.code is None
    await refused(
        client, r"refused the sign-in \(access_denied\)", cookie=cookie, callback=callback
    )
    # Free text from the query string is not echoed back.
    with pytest.raises(OidcError, match=r"\(unknown\)") as caught:
        await client.finish(code=None, state=None, error="<b>hi</b> there", cookie=cookie)
    assert "<b>" not in caught.value.message


async def test_state_must_match_the_cookie(client: OidcClient) -> None:
    cookie_a, callback_a = await flow(client)
    _, callback_b = await flow(client)
    crossed = Callback(callback_b.url, callback_b.code, callback_b.state, None)
    await refused(client, "state does not match", cookie=cookie_a, callback=crossed)
    missing = Callback(callback_a.url, callback_a.code, None, None)
    await refused(client, "state does not match", cookie=cookie_a, callback=missing)
    # The honest pair still works.
    assert (await client.finish(**callback_a.params, cookie=cookie_a)).subject


async def test_cookie_must_be_ours_and_intact(
    client: OidcClient, provider: OidcProvider, clock: FrozenClock
) -> None:
    cookie, callback = await flow(client)
    payload, mac = cookie.split(".")

    # Rewrite the payload (a verifier of the attacker's choosing), keep the old MAC.
    flow_data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert set(flow_data) == {"s", "n", "v", "t"}
    flow_data["v"] = "attacker-" * 6
    forged = base64.urlsafe_b64encode(json.dumps(flow_data).encode()).rstrip(b"=").decode()
    await refused(client, "cookie is not valid", cookie=f"{forged}.{mac}", callback=callback)
    await refused(
        client, "cookie is not valid", cookie=f"{payload}.{mac[:-2]}AA", callback=callback
    )
    await refused(client, "cookie is not valid", cookie=payload, callback=callback)
    await refused(client, "session is missing", cookie="", callback=callback)

    # A cookie made under another server's key.
    other = OidcClient(
        settings_for(provider), redirect_uri=REDIRECT, signing_key=b"o" * 32, clock=clock
    )
    try:
        other_cookie, other_callback = await flow(other)
    finally:
        await other.close()
    await refused(client, "cookie is not valid", cookie=other_cookie, callback=other_callback)

    # None of that spent the code: the genuine pair still signs in.
    assert (await client.finish(**callback.params, cookie=cookie)).subject


async def test_cookie_expires_after_ten_minutes(client: OidcClient, clock: FrozenClock) -> None:
    cookie, callback = await flow(client)
    clock.advance(COOKIE_MAX_AGE - 1)
    assert (await client.finish(**callback.params, cookie=cookie)).subject

    cookie, callback = await flow(client)
    clock.advance(COOKIE_MAX_AGE + 1)
    await refused(client, "took too long", cookie=cookie, callback=callback)


# ---------------------------------------------------------------------- the token endpoint


async def test_token_endpoint_error_is_refused(client: OidcClient, provider: OidcProvider) -> None:
    provider.misbehave("token_error")
    cookie, callback = await flow(client)
    error = await refused(
        client, r"refused to redeem .*HTTP 400, invalid_grant", cookie=cookie, callback=callback
    )
    assert (error.status, error.type, error.code) == (400, "invalid_request_error", "oidc_failed")


async def test_a_code_is_redeemed_once(client: OidcClient) -> None:
    cookie, callback = await flow(client)
    await client.finish(**callback.params, cookie=cookie)
    await refused(client, "refused to redeem", cookie=cookie, callback=callback)


async def test_pkce_stops_an_injected_code(client: OidcClient) -> None:
    """A code obtained with someone else's challenge cannot be redeemed with our verifier."""
    url, cookie = await client.start()
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["code_challenge"] = s256("the-attackers-own-verifier-" + "x" * 30)
    callback = await follow(urlunsplit(parts._replace(query=urlencode(query))))
    await refused(client, "refused to redeem", cookie=cookie, callback=callback)


async def test_provider_checks_the_pkce_verifier(
    client: OidcClient, provider: OidcProvider
) -> None:
    """The fake is only worth testing against if it really checks PKCE."""
    auth = (provider.client_id, provider.client_secret)
    async with httpx.AsyncClient(timeout=10) as http:
        for verifier in ("wrong-verifier-" + "y" * 40, None):
            _, callback = await flow(client)
            form = {"grant_type": "authorization_code", "code": callback.code}
            form["redirect_uri"] = REDIRECT
            if verifier:
                form["code_verifier"] = verifier
            answer = await http.post(f"{provider.issuer}/token", data=form, auth=auth)
            assert answer.status_code == 400
            assert answer.json()["error"] == "invalid_grant"


async def test_provider_unreachable_or_slow(provider: OidcProvider, clock: FrozenClock) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    settings = settings_for(provider, issuer=f"http://127.0.0.1:{closed}")
    oidc = OidcClient(settings, redirect_uri=REDIRECT, signing_key=KEY, clock=clock)
    try:
        with pytest.raises(OidcError, match="could not be used") as caught:
            await oidc.start()
        assert caught.value.status == 502
    finally:
        await oidc.close()

    provider.token_delay = 1.0
    oidc = OidcClient(
        settings_for(provider), redirect_uri=REDIRECT, signing_key=KEY, clock=clock, timeout=0.2
    )
    try:
        cookie, callback = await flow(oidc)
        error = await refused(oidc, "token endpoint", cookie=cookie, callback=callback)
        assert error.status == 502
    finally:
        await oidc.close()


async def test_discovery_for_another_issuer_is_refused(
    client: OidcClient, provider: OidcProvider
) -> None:
    provider.discovery_issuer = "https://accounts.evil.example"
    with pytest.raises(OidcError, match="different issuer"):
        await client.start()


# ---------------------------------------------------------------------- the id_token


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        ("bad_signature", "signature is not valid"),
        ("alg_none", r"algorithm \(none\) is refused"),
        ("alg_hs256", r"algorithm \(HS256\) is refused"),
        ("wrong_nonce", "nonce does not match"),
        ("wrong_audience", "issued for another client"),
        ("other_azp", r"another client \(azp\)"),
        ("wrong_issuer", "issued by another issuer"),
        ("expired", "has expired"),
    ],
)
async def test_bad_id_tokens_are_refused(
    client: OidcClient, provider: OidcProvider, fault: str, match: str
) -> None:
    provider.misbehave(fault)
    cookie, callback = await flow(client)
    await refused(client, match, cookie=cookie, callback=callback)


async def test_missing_nonce_is_refused(client: OidcClient, provider: OidcProvider) -> None:
    provider.misbehave(claims={"nonce": None})
    cookie, callback = await flow(client)
    await refused(client, "nonce does not match", cookie=cookie, callback=callback)


async def test_several_audiences_with_us_as_authorised_party(
    client: OidcClient, provider: OidcProvider
) -> None:
    provider.misbehave(
        claims={"aud": [provider.client_id, "another-client"], "azp": provider.client_id}
    )
    assert (await sign_in(client)).subject
    provider.misbehave(claims={"aud": [provider.client_id, "another-client"]})
    cookie, callback = await flow(client)
    await refused(client, r"another client \(azp\)", cookie=cookie, callback=callback)


async def test_expiry_leeway(
    client: OidcClient, provider: OidcProvider, clock: FrozenClock
) -> None:
    now = int(clock.now().timestamp())
    provider.misbehave(claims={"exp": now - 30})
    assert (await sign_in(client)).subject
    provider.misbehave(claims={"exp": now - 90})
    cookie, callback = await flow(client)
    await refused(client, "has expired", cookie=cookie, callback=callback)


async def test_expiry_is_judged_by_our_clock() -> None:
    """The provider's clock is the wall; ours says an hour later: its fresh token is stale."""
    later = FrozenClock(datetime.now(UTC) + timedelta(hours=1))
    with OidcProvider(clock=SystemClock()) as provider:
        oidc = OidcClient(
            settings_for(provider), redirect_uri=REDIRECT, signing_key=KEY, clock=later
        )
        try:
            cookie, callback = await flow(oidc)
            await refused(oidc, "has expired", cookie=cookie, callback=callback)
        finally:
            await oidc.close()
