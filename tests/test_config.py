"""Settings: environment over TOML over defaults, refused early when wrong, prices exact."""

from __future__ import annotations

import ipaddress
import os
from decimal import Decimal
from pathlib import Path

import pytest

from keyhouse.config import (
    DEFAULT_CHAT_MODEL,
    DEFAULT_EMBEDDING_MODEL,
    Settings,
    load_settings,
)
from keyhouse.errors import ConfigError
from tests.conftest import TEST_SECRET, make_settings

MODEL = '[[models]]\nname = "m"\nbackend = "local"\n'


def write_toml(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "keyhouse.toml"
    path.write_text(text, encoding="utf-8")
    return path


def model_settings(home: Path, body: str) -> Settings:
    """Settings from a TOML file with one ``[[models]]`` table whose body is ``body``."""
    write_toml(home, MODEL + body)
    return make_settings(home)


# ----------------------------------------------------------------------------- where from


def test_defaults_without_any_file(tmp_path: Path) -> None:
    """A bare environment gives a working SQLite setup in KEYHOUSE_HOME."""
    settings = make_settings(tmp_path)
    assert settings.home == tmp_path
    assert settings.config_path is None
    assert settings.database_url == f"sqlite:///{tmp_path / 'keyhouse.db'}"
    assert not settings.is_postgres
    assert settings.secret_file == tmp_path / "secret"
    assert settings.secrets == ()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.change_poll_interval == 0.25
    assert settings.trusted_proxies == ()


def test_home_defaults_to_dot_keyhouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No KEYHOUSE_HOME: ~/.keyhouse, and its keyhouse.toml is read when it exists."""
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings({})
    assert settings.home == tmp_path / ".keyhouse"
    assert settings.config_path is None
    path = write_toml(tmp_path / ".keyhouse", "port = 9001\n")
    settings = load_settings({})
    assert settings.config_path == path
    assert settings.port == 9001


def test_process_environment_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_settings() with no argument reads os.environ."""
    monkeypatch.setenv("KEYHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("KEYHOUSE_CONFIG", "")
    monkeypatch.setenv("KEYHOUSE_PORT", "8123")
    assert os.environ["KEYHOUSE_PORT"] == "8123"
    settings = load_settings()
    assert settings.home == tmp_path
    assert settings.port == 8123


def test_config_defaults_to_home_keyhouse_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'host = "0.0.0.0"\n')
    settings = make_settings(tmp_path)
    assert settings.config_path == path
    assert settings.host == "0.0.0.0"


def test_explicit_config_path(tmp_path: Path) -> None:
    """KEYHOUSE_CONFIG wins over home/keyhouse.toml."""
    write_toml(tmp_path, "port = 1111\n")
    other = tmp_path / "elsewhere" / "k.toml"
    other.parent.mkdir()
    other.write_text("port = 2222\n")
    settings = make_settings(tmp_path, KEYHOUSE_CONFIG=str(other))
    assert settings.config_path == other
    assert settings.port == 2222


def test_explicit_config_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    """A typo in KEYHOUSE_CONFIG must not silently fall back to defaults."""
    with pytest.raises(ConfigError, match="does not exist"):
        make_settings(tmp_path, KEYHOUSE_CONFIG=str(tmp_path / "nope.toml"))


def test_environment_over_toml_over_defaults(tmp_path: Path) -> None:
    write_toml(tmp_path, 'port = 9000\nworkers = 3\nlog_level = "debug"\n')
    settings = make_settings(tmp_path, KEYHOUSE_PORT="9100")
    assert settings.port == 9100  # environment
    assert settings.workers == 3  # file
    assert settings.log_level == "warning"  # make_settings sets KEYHOUSE_LOG_LEVEL
    assert settings.queue_size == 64  # default


def test_every_scalar_from_the_environment(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        KEYHOUSE_HOST="0.0.0.0",
        KEYHOUSE_PORT="0",
        KEYHOUSE_WORKERS="4",
        KEYHOUSE_PUBLIC_URL="https://ai.example.org",
        KEYHOUSE_DATABASE_URL="postgresql://u@db/x",
        KEYHOUSE_DATABASE_SCHEMA="s1",
        KEYHOUSE_MAX_BODY_BYTES="1024",
        KEYHOUSE_CHANGE_POLL_INTERVAL="0.5",
        KEYHOUSE_LAST_USED_FLUSH_INTERVAL="2",
        KEYHOUSE_QUEUE_SIZE="3",
        KEYHOUSE_QUEUE_TIMEOUT="1.5",
        KEYHOUSE_ENGINE_SOCKET="/tmp/x.sock",
        KEYHOUSE_SECRET=TEST_SECRET,
    )
    assert settings.host == "0.0.0.0"
    assert settings.port == 0
    assert settings.workers == 4
    assert settings.public_url == "https://ai.example.org"
    assert settings.is_postgres
    assert settings.database_schema == "s1"
    assert settings.max_body_bytes == 1024
    assert settings.change_poll_interval == 0.5
    assert settings.last_used_flush_interval == 2.0
    assert settings.queue_size == 3
    assert settings.queue_timeout == 1.5
    assert settings.engine_socket == "/tmp/x.sock"


@pytest.mark.parametrize(
    ("toml", "env"),
    [
        ('port = "x"\n', {}),
        ("port = 1.5\n", {}),
        ("port = true\n", {}),
        ("host = 5\n", {}),
        ("change_poll_interval = true\n", {}),
        ("", {"KEYHOUSE_PORT": "eighty"}),
        ("", {"KEYHOUSE_WORKERS": "0"}),
        ("", {"KEYHOUSE_PORT": "70000"}),
        ("", {"KEYHOUSE_CHANGE_POLL_INTERVAL": "0"}),
        ("", {"KEYHOUSE_CHANGE_POLL_INTERVAL": "-1"}),
        ("", {"KEYHOUSE_LAST_USED_FLUSH_INTERVAL": "nan"}),
        ("", {"KEYHOUSE_QUEUE_TIMEOUT": "inf"}),
        ("port = \n", {}),  # not TOML at all
    ],
)
def test_bad_values_are_refused(tmp_path: Path, toml: str, env: dict[str, str]) -> None:
    """Wrong types and values that would spin a loop fail at start-up, as ConfigError."""
    write_toml(tmp_path, toml)
    with pytest.raises(ConfigError):
        make_settings(tmp_path, **env)


@pytest.mark.parametrize("text", ["colour = 'blue'\n", "home = '/x'\n", "[server]\nport = 1\n"])
def test_unknown_settings_are_refused(tmp_path: Path, text: str) -> None:
    """A misspelt setting would otherwise be ignored without a word."""
    write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match="unknown settings"):
        make_settings(tmp_path)


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]
    assert settings.with_(port=1).port == 1
    assert settings.port == 8000


# ----------------------------------------------------------------------------- models


def test_default_models(tmp_path: Path) -> None:
    """No [[models]]: the bundled chat model and embedding model, with OpenAI-style aliases."""
    models = {m.name: m for m in make_settings(tmp_path).models}
    assert set(models) == {DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL}
    chat = models["smollm2-135m-instruct"]
    # gpt-3.5-turbo-instruct: the model the completions tutorials name
    assert chat.aliases == ("gpt-3.5-turbo", "gpt-4o-mini", "gpt-3.5-turbo-instruct")
    assert chat.kinds == {"local"}
    assert chat.endpoints == {"chat.completions", "completions", "responses"}
    assert chat.names[:3] == ("smollm2-135m-instruct", "gpt-3.5-turbo", "gpt-4o-mini")
    # brief and greedy by default: a 135M model sampled at temperature 1 rambles
    assert chat.system_prompt and chat.default_temperature == 0.0
    assert chat.added_system_prompt(["user"]) == chat.system_prompt
    assert chat.added_system_prompt(["developer", "user"]) is None
    embed = models["multilingual-e5-small"]
    assert embed.aliases == ("text-embedding-3-small",)
    assert embed.endpoints == {"embeddings"}
    for model in models.values():
        assert isinstance(model.input_price, Decimal)
        assert isinstance(model.output_price, Decimal)


def test_models_table_parsed(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[[models]]
name = "chat"
backend = "local"
aliases = ["gpt-4o", "gpt-4"]
settings = { gguf = "/models/x.gguf", threads = 2 }
input_price = 0.1
cached_input_price = 0.05
output_price = "0.3"
default_max_tokens = 256
context_length = 4096
owned_by = "us"
created = 1700000000

[[models]]
name = "embed"
backend = "local-embedding"
aliases = "e1, e2"
""",
    )
    chat, embed = make_settings(tmp_path).models
    assert chat.name == "chat"
    assert chat.aliases == ("gpt-4o", "gpt-4")
    (deployment,) = chat.deployments  # the short form: one deployment, named after the model
    assert deployment.name == "chat:local" and deployment.backend == "local"
    assert deployment.settings == {"gguf": "/models/x.gguf", "threads": 2}
    assert chat.default_max_tokens == 256
    assert chat.context_length == 4096
    assert chat.owned_by == "us"
    assert chat.created == 1700000000
    assert embed.aliases == ("e1", "e2")  # a comma-separated string works too
    assert embed.endpoints == {"embeddings"}
    assert embed.input_price == Decimal(0)
    assert embed.cached_input_price is None
    assert embed.created == int(path.stat().st_mtime)  # default: the file's time


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("0.1", "0.1"),
        ("0.000001", "0.000001"),
        ("2.5", "2.5"),
        ("1e-7", "1E-7"),
        ("0.123456789012345", "0.123456789012345"),
        ("0.30000000000000004", "0.30000000000000004"),
        ("3", "3"),
        ('"0.1"', "0.1"),
        ('"12.3400"', "12.3400"),
    ],
)
def test_prices_are_exact_decimals(tmp_path: Path, written: str, expected: str) -> None:
    """A TOML float such as 0.1 is read as Decimal('0.1'), never as the binary float."""
    (model,) = model_settings(
        tmp_path,
        f"input_price = {written}\noutput_price = {written}\ncached_input_price = {written}\n",
    ).models
    for price in (model.input_price, model.output_price, model.cached_input_price):
        assert isinstance(price, Decimal)
        assert str(price) == expected
        assert price == Decimal(expected)
    if written == "0.1":
        assert model.input_price != Decimal.from_float(0.1)  # the float's exact value is not 0.1
        assert model.input_price * 10 == 1


@pytest.mark.parametrize(
    "value", ["-0.1", '"abc"', "true", "nan", "inf", '"NaN"', '"-Infinity"', "[1]"]
)
def test_bad_prices_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="input_price"):
        model_settings(tmp_path, f"input_price = {value}\n")


def test_a_models_own_defaults(tmp_path: Path) -> None:
    body = 'system_prompt = "Answer in French."\ndefault_temperature = 0.3\n'
    (spec,) = model_settings(tmp_path, body).models
    assert spec.system_prompt == "Answer in French." and spec.default_temperature == 0.3
    (plain,) = model_settings(tmp_path / "plain", "").models
    assert plain.system_prompt is None and plain.default_temperature is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[[models]]\nbackend = "local"\n', "'name' is required"),
        ('[[models]]\nname = ""\nbackend = "local"\n', "'name' is required"),
        ('[[models]]\nname = "m"\n', "give a 'backend'"),
        ('[[models]]\nname = "m"\nbackend = "cohere"\n', "'backend' must be one of"),
        (MODEL + "colour = 1\n", "unknown keys"),
        (MODEL + 'settings = "x"\n', "'settings' must be a table"),
        (MODEL + "context_length = 8\n", "context_length"),
        (MODEL + "default_max_tokens = -1\n", "default_max_tokens"),
        (MODEL + 'system_prompt = ""\n', "system_prompt"),
        (MODEL + "system_prompt = 3\n", "system_prompt"),
        (MODEL + "default_temperature = 3\n", "default_temperature"),
        (MODEL + 'default_temperature = "warm"\n', "default_temperature"),
        (MODEL + "context_length = 1.5\n", "context_length"),
        (MODEL + 'aliases = ["a", ""]\n', "aliases"),
        (MODEL + "aliases = [1]\n", "aliases"),
        (MODEL + "aliases = 3\n", "list"),
        ("models = []\n", "at least one model"),
        ('models = "m"\n', "at least one model"),
        ("models = [1]\n", "must be a table"),
        ('models = ["m"]\n', "must be a table"),
    ],
)
def test_bad_models_are_refused(tmp_path: Path, text: str, match: str) -> None:
    write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match=match):
        make_settings(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        # the same name twice
        MODEL + MODEL,
        # an alias that is another model's name
        MODEL + '\n[[models]]\nname = "n"\nbackend = "local"\naliases = ["m"]\n',
        # one alias on two models
        MODEL + 'aliases = ["x"]\n[[models]]\nname = "n"\nbackend = "local"\naliases = ["x"]\n',
        # a model's alias repeating its own name, or itself
        MODEL + 'aliases = ["m"]\n',
        MODEL + 'aliases = ["x", "x"]\n',
    ],
)
def test_duplicate_names_and_aliases_are_refused(tmp_path: Path, text: str) -> None:
    """A name must pick one model, or requests would be routed by table order."""
    write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match="used twice"):
        make_settings(tmp_path)


# ----------------------------------------------------------------------------- proxies


def test_trusted_proxies_from_environment(tmp_path: Path) -> None:
    """Comma-separated CIDRs and single addresses; host bits are tolerated and cleared."""
    settings = make_settings(
        tmp_path, KEYHOUSE_TRUSTED_PROXIES="10.1.2.3/8, 192.168.0.1 ,fd00::/8,::1"
    )
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.0.1/32"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("::1/128"),
    )


def test_trusted_proxies_environment_over_toml(tmp_path: Path) -> None:
    write_toml(tmp_path, 'trusted_proxies = ["172.16.0.0/12"]\n')
    assert make_settings(tmp_path).trusted_proxies == (ipaddress.ip_network("172.16.0.0/12"),)
    overridden = make_settings(tmp_path, KEYHOUSE_TRUSTED_PROXIES="127.0.0.1")
    assert overridden.trusted_proxies == (ipaddress.ip_network("127.0.0.1/32"),)
    # An empty variable means "no proxies", not "use the file".
    assert make_settings(tmp_path, KEYHOUSE_TRUSTED_PROXIES="").trusted_proxies == ()


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-an-ip", "300.1.1.1", "::1/129"])
def test_bad_trusted_proxies_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="CIDR"):
        make_settings(tmp_path, KEYHOUSE_TRUSTED_PROXIES=value)


# ----------------------------------------------------------------------------- secrets


def test_secret_and_previous_secrets(tmp_path: Path) -> None:
    """Newest first: KEYHOUSE_SECRET, then KEYHOUSE_PREVIOUS_SECRETS in their order."""
    a, b, c = "a" * 40, "b" * 40, "c" * 40
    settings = make_settings(tmp_path, KEYHOUSE_SECRET=a, KEYHOUSE_PREVIOUS_SECRETS=f"{b}, {c}")
    assert settings.secrets == (a, b, c)
    assert make_settings(tmp_path, KEYHOUSE_SECRET=a).secrets == (a,)


def test_secret_from_toml_and_environment_wins(tmp_path: Path) -> None:
    write_toml(tmp_path, f'secret = "{"f" * 40}"\nprevious_secrets = ["{"g" * 40}"]\n')
    assert make_settings(tmp_path).secrets == ("f" * 40, "g" * 40)
    assert make_settings(tmp_path, KEYHOUSE_SECRET=TEST_SECRET).secrets[0] == TEST_SECRET


def test_previous_secrets_without_a_secret_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEYHOUSE_SECRET is not"):
        make_settings(tmp_path, KEYHOUSE_PREVIOUS_SECRETS="p" * 40)


def test_secrets_are_not_in_the_settings_repr(tmp_path: Path) -> None:
    """Settings get printed in tracebacks and debug logs; the secrets must not be."""
    previous = "previous-" + "p" * 40
    settings = make_settings(
        tmp_path, KEYHOUSE_SECRET=TEST_SECRET, KEYHOUSE_PREVIOUS_SECRETS=previous
    )
    assert settings.secrets == (TEST_SECRET, previous)
    for text in (repr(settings), str(settings), repr(settings.with_(port=1))):
        assert TEST_SECRET not in text
        assert previous not in text


def test_deployments(tmp_path: Path) -> None:
    write_toml(
        tmp_path,
        """
[[models]]
name = "gpt-4o-mini"
[[models.deployments]]
backend = "openai"
base_url = "https://api.openai.com/v1"
api_keys = ["env:A"]
weight = 3
[[models.deployments]]
name = "deepseek"
backend = "openai"
base_url = "https://api.deepseek.com/v1"
priority = 1
endpoints = ["chat.completions"]
[[models.deployments]]
backend = "local"
priority = 2
""",
    )
    (model,) = make_settings(tmp_path).models
    first, second, third = model.deployments
    assert (first.name, first.weight, first.priority) == ("gpt-4o-mini:openai", 3, 0)
    assert first.settings == {"base_url": "https://api.openai.com/v1", "api_keys": ["env:A"]}
    # Responses are translated to chat: a deployment that serves chat serves them too.
    assert (second.name, second.priority, second.endpoints) == (
        "deepseek",
        1,
        {"chat.completions", "responses"},
    )
    assert third.name == "gpt-4o-mini:local#3"
    assert model.kinds == {"openai", "local"}
    assert model.endpoints == {"chat.completions", "completions", "embeddings", "responses"}
    # Only an upstream that says so gets the Responses API passed through.
    assert not any(d.speaks_responses for d in model.deployments)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[models]]\nname = "m"\nbackend = "local"\n'
            '[[models.deployments]]\nbackend = "local"\n',
            "not on the model",
        ),
        ('[[models]]\nname = "m"\ndeployments = []\n', "at least one"),
        ('[[models]]\nname = "m"\n[[models.deployments]]\nbackend = "x"\n', "must be one of"),
        (
            '[[models]]\nname = "m"\n[[models.deployments]]\nbackend = "local"\nweight = 0\n',
            "weight above 0",
        ),
        (
            '[[models]]\nname = "m"\n[[models.deployments]]\nname = "a"\nbackend = "local"\n'
            '[[models.deployments]]\nname = "a"\nbackend = "local"\n',
            "must differ",
        ),
    ],
)
def test_bad_deployments(tmp_path: Path, text: str, message: str) -> None:
    write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        make_settings(tmp_path)


# ----------------------------------------------------------------------------- the table


def test_settings_docs_are_generated_from_the_table() -> None:
    """The tables in docs/ are the declared settings, so a name cannot drift from the code
    (``python -m keyhouse.config --write-docs`` rewrites them)."""
    from keyhouse.config import docs_tables
    from keyhouse.config_table import replace_block

    docs = Path(__file__).resolve().parent.parent / "docs"
    for path, blocks in docs_tables(docs).items():
        text = path.read_text(encoding="utf-8")
        for name, body in blocks.items():
            assert replace_block(text, name, body) == text, f"{path}: run --write-docs"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KEYHOUSE_LIMITS_FAILURE": "maybe"}, "limits_failure must be 'open' or 'closed'"),
        (
            {"KEYHOUSE_BILLING_MODE": "free"},
            "billing_mode must be 'enforce', 'meter-only' or 'off'",
        ),
        ({"KEYHOUSE_ACCOUNTS_SIGNUP": "x"}, "accounts.signup must be 'open', 'domains' or"),
        ({"KEYHOUSE_ACCOUNTS_CODE_TTL": "0"}, "accounts.code_ttl must be a positive number"),
        ({"KEYHOUSE_MAIL_SECURITY": "ssl"}, "mail.security must be 'starttls', 'tls' or 'none'"),
        ({"KEYHOUSE_MAX_HEADER_BYTES": "10"}, "max_header_bytes must be at least 1024"),
        ({"KEYHOUSE_LEASE_SIZE": "0"}, "lease_size must be above 0"),
        ({"KEYHOUSE_TIMEZONE": "Mars/Olympus"}, "timezone: unknown timezone 'Mars/Olympus'"),
    ],
)
def test_declared_choices_and_rules(tmp_path: Path, env: dict[str, str], message: str) -> None:
    """Literal words and rules on a declared field refuse with the setting's own name."""
    with pytest.raises(ConfigError, match=message):
        make_settings(tmp_path, **env)
