"""The one typed settings object.

Every field can be set by an environment variable named ``AIRWAVE_`` plus the
field name in upper case, or by the same name (lower case) at the top level
of a TOML file given with ``--config`` or ``AIRWAVE_CONFIG``. Environment
variables win over the file; the file wins over the defaults. Command-line
flags (``--host``, ``--port``) win over everything.

A value that cannot be used raises :class:`ConfigError` naming the setting,
so that the command line can print one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

ENV_PREFIX = "AIRWAVE_"


class ConfigError(ValueError):
    """A setting has a value airwave cannot use."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


@dataclass(frozen=True)
class GiftSpec:
    id: str
    name: str
    coins: int
    image_url: str = ""


@dataclass(frozen=True)
class WebhookEndpoint:
    """One receiver of outgoing webhooks. ``secrets``: the first signs with the new
    secret; more than one during a rotation (every one signs, the header carries all)."""

    url: str
    secrets: tuple[str, ...]


DEFAULT_GIFTS: tuple[GiftSpec, ...] = (
    GiftSpec("rose", "Rose", 1),
    GiftSpec("heart", "Heart", 5),
    GiftSpec("star", "Star", 25),
    GiftSpec("rocket", "Rocket", 99),
)


@dataclass(frozen=True)
class Settings:
    # --- server ---------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = 8080
    dev: bool = False  # development mode (demo sign-in): only with `serve --dev` or AIRWAVE_DEV
    env: str = ""  # "" or "production" (also insists on a set JWT secret)
    data_dir: str = "./data"
    log_format: str = "text"  # "text" or "json"
    log_level: str = "info"
    cors_origins: tuple[str, ...] = ("*",)
    trust_forwarded_for: bool = False  # client address from X-Forwarded-For (behind your proxy)
    public_url: str = ""  # how clients reach us, for Location headers; empty = from the request
    node_id: str = ""  # empty = hostname:port

    # --- storage and bus ------------------------------------------------------
    database_url: str = ""  # empty = sqlite:///<data_dir>/airwave.db
    database_pool_size: int = 10
    database_schema: str = ""  # PostgreSQL schema to use; empty = the server's search_path
    redis_url: str = ""  # empty = in-process bus
    redis_prefix: str = "airwave"  # namespace of every Redis key and channel of one cluster
    internal_url: str = ""  # how other nodes reach this node's HTTP; empty = http://<host>:<port>

    # --- tokens ---------------------------------------------------------------
    jwt_secret: str = ""  # HS256; empty = generated and kept under data_dir (one node only)
    jwt_algorithm: str = "HS256"  # HS256, RS256 or ES256
    jwt_public_key_file: str = ""  # PEM, for RS256/ES256
    jwt_jwks_file: str = ""  # JWKS JSON, for RS256/ES256
    jwt_private_key_file: str = ""  # PEM, lets `airwave token` mint RS256/ES256 tokens

    # --- media ----------------------------------------------------------------
    ice_addresses: tuple[str, ...] = ()  # empty = the machine's own addresses
    udp_ports: tuple[int, int] | None = None  # e.g. "40000-40999"; None = any
    max_remote_candidates: int = 30  # remote ICE candidates one media session checks
    ice_candidate_deny: tuple[str, ...] = (  # networks remote candidates may not name
        "0.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32", "169.254.0.0/16",
        "::/128", "ff00::/8", "fe80::/10",
    )
    max_subscribers_per_room: int = 500
    max_sessions: int = 2000
    whep_public: bool = False  # WHEP without a token for rooms marked public
    max_sessions_per_user: int = 20  # media sessions one user holds at once; 0 = no limit
    max_sessions_per_ip: int = 200  # WHIP/WHEP sessions from one client address; 0 = no limit
    max_connecting_per_user: int = 10  # of those, still connecting (ICE/DTLS); 0 = no limit
    max_connecting_per_ip: int = 50
    media_connect_timeout: float = 10.0  # seconds a media session may take to connect
    gop_cache_max_age: float = 2.0  # seconds a cached keyframe starts new viewers; 0 = no cache
    room_publisher_grace: float = 10.0  # seconds a live room waits for its publisher
    rtmp_port: int = 0  # RTMP ingest (rtmp://host:port/live/ROOM); 0 = off

    # --- recordings -----------------------------------------------------------
    recordings_dir: str = ""  # empty = <data_dir>/recordings
    recordings_quota_bytes: int = 0  # all recordings together; 0 = as much as the disk holds
    recordings_retention_days: float = 0.0  # finished recordings older are deleted; 0 = keep

    # --- STUN / TURN ----------------------------------------------------------
    stun_port: int = 3478  # 0 = off
    stun_rate_limit: int = 50  # requests per second per source address
    turn_urls: tuple[str, ...] = ()
    turn_secrets: tuple[str, ...] = ()
    turn_ttl: int = 86400

    # --- calls ----------------------------------------------------------------
    ring_timeout: float = 30.0
    call_duration: float = 180.0  # 0 = unlimited
    call_warning_before: float = 30.0
    call_extension: float = 120.0
    call_max_extensions: int = 3
    reconnect_grace: float = 15.0
    require_match: bool = False

    # --- rate limits (tokens a second; bursts of twice that, at least 10; 0 = off)
    rate_limit_http: float = 50.0  # HTTP API requests per user
    rate_limit_http_ip: float = 200.0  # HTTP API requests per client address
    rate_limit_events: float = 30.0  # Socket.IO events per user
    rate_limit_actions: float = 1.0  # rooms created, calls placed, sockets opened per user

    # --- chat -----------------------------------------------------------------
    chat_max_length: int = 2000
    chat_rate: float = 5.0  # messages per second per user per room

    # --- Socket.IO delivery ------------------------------------------------------
    socketio_send_queue: int = 256  # packets queued per socket before it is cut off as slow
    socketio_ws_compression: bool = False  # permessage-deflate on Socket.IO WebSockets
    socketio_large_room: int = 1000  # sockets of a room on a node from which chat is batched; 0 off
    socketio_batch_interval: float = 0.05  # seconds between a large room's batches
    chat_delivery_rate: float = 50.0  # chat messages a second a large room delivers; 0 = all
    kick_ban_seconds: float = 600.0

    # --- gifts ----------------------------------------------------------------
    webhook_secret: str = ""
    webhook_secret_previous: str = ""  # also accepted while the incoming secret rotates
    gift_creator_share: float = 0.60
    gifts: tuple[GiftSpec, ...] = DEFAULT_GIFTS

    # --- money out ------------------------------------------------------------
    payout_minimum: int = 100  # coins of earnings a payout request must at least ask for
    payout_hold_seconds: float = 604800.0  # earnings younger than this cannot be withdrawn

    # --- outgoing webhooks ----------------------------------------------------
    webhook_urls: tuple[WebhookEndpoint, ...] = ()
    webhook_retry_for: float = 86400.0  # seconds an event is retried before it is dead-lettered
    webhook_retention: float = 604800.0  # seconds delivered events are kept
    webhook_timeout: float = 10.0  # seconds one delivery may take
    webhook_poll_interval: float = 0.5  # seconds between looks at the outbox
    webhook_chat_text: bool = False  # chat.message carries the text (off: ids only)

    # ------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "development" if self.dev else "production"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir) / 'airwave.db'}"

    @property
    def effective_recordings_dir(self) -> str:
        return self.recordings_dir or str(Path(self.data_dir) / "recordings")

    @property
    def database_backend(self) -> str:
        return "postgresql" if self.effective_database_url.startswith("postgres") else "sqlite"

    def with_overrides(self, **changes: Any) -> Settings:
        return _validate(dataclasses.replace(self, **changes))


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Settings:
    """Defaults, then the TOML file, then ``AIRWAVE_*`` variables, then overrides."""
    environ = os.environ if environ is None else environ
    hints = get_type_hints(Settings)
    names = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}

    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    if config_file:
        values.update(_read_toml(Path(config_file), names, hints))

    for name in names:
        raw = environ.get(env_name(name))
        if raw is not None:
            values[name] = _coerce(env_name(name), raw, hints[name])

    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = Settings(**values)
    except TypeError as exc:  # pragma: no cover - guarded by the name checks above
        raise ConfigError("config", str(exc)) from exc
    return _validate(settings)


def _read_toml(path: Path, names: set[str], hints: dict[str, Any]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError("--config", f"file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    values: dict[str, Any] = {}
    for key, raw in data.items():
        if key not in names:
            raise ConfigError(key, f"unknown setting in {path}")
        values[key] = _coerce(key, raw, hints[key])
    return values


def _coerce(setting: str, raw: Any, hint: Any) -> Any:
    """Turn a string (environment) or TOML value into the field's type."""
    origin = get_origin(hint)
    args = get_args(hint)
    if hint is GiftSpec or (origin is tuple and args and args[0] is GiftSpec):
        return _coerce_gifts(setting, raw)
    if origin is tuple and args and args[0] is WebhookEndpoint:
        return _coerce_webhook_endpoints(setting, raw)
    if origin is tuple and len(args) == 2 and args[0] is int and args[1] is int:
        return _coerce_port_range(setting, raw)
    if type(None) in args:  # Optional[...]
        if raw in ("", None):
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(setting, raw, inner)
    if origin is tuple:
        items = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else list(raw)
        return tuple(str(i) for i in items if str(i))
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        lowered = str(raw).strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(setting, f"expected a boolean (true/false), got {raw!r}")
    if hint is int:
        if isinstance(raw, bool):
            raise ConfigError(setting, f"expected an integer, got {raw!r}")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ConfigError(setting, f"expected an integer, got {raw!r}") from None
    if hint is float:
        try:
            return float(str(raw).strip())
        except ValueError:
            raise ConfigError(setting, f"expected a number, got {raw!r}") from None
    return str(raw)


def _coerce_port_range(setting: str, raw: Any) -> tuple[int, int] | None:
    if raw in ("", None):
        return None
    if isinstance(raw, list | tuple) and len(raw) == 2:
        lo, hi = raw
    else:
        parts = str(raw).split("-")
        if len(parts) != 2:
            raise ConfigError(setting, f"expected a range like 40000-40999, got {raw!r}")
        lo, hi = parts
    try:
        lo_i, hi_i = int(lo), int(hi)
    except ValueError:
        raise ConfigError(setting, f"expected a range like 40000-40999, got {raw!r}") from None
    if not (1 <= lo_i <= hi_i <= 65535):
        raise ConfigError(setting, f"range must lie within 1-65535 and be ordered, got {raw!r}")
    return (lo_i, hi_i)


def _coerce_gifts(setting: str, raw: Any) -> tuple[GiftSpec, ...]:
    if isinstance(raw, str):
        import json

        try:
            raw = json.loads(raw)
        except ValueError:
            raise ConfigError(setting, "expected a JSON list of gifts") from None
    if not isinstance(raw, list):
        raise ConfigError(setting, "expected a list of gifts")
    gifts = []
    for item in raw:
        try:
            gifts.append(
                GiftSpec(
                    id=str(item["id"]),
                    name=str(item["name"]),
                    coins=int(item["coins"]),
                    image_url=str(item.get("image_url", item.get("imageUrl", ""))),
                )
            )
        except (KeyError, TypeError, ValueError):
            raise ConfigError(setting, f"each gift needs id, name and coins: {item!r}") from None
    return tuple(gifts)


def _coerce_webhook_endpoints(setting: str, raw: Any) -> tuple[WebhookEndpoint, ...]:
    """A JSON list (environment) or TOML array of ``{url, secret}`` or ``{url, secrets: [...]}``."""
    if isinstance(raw, str):
        import json

        if not raw.strip():
            return ()
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ConfigError(setting, 'expected a JSON list of {"url", "secrets"}') from None
    if not isinstance(raw, list):
        raise ConfigError(setting, 'expected a list of {"url", "secrets"}')
    endpoints = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ConfigError(setting, f"each endpoint needs a url: {item!r}")
        keys = item.get("secrets", [item["secret"]] if "secret" in item else [])
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(setting, f"endpoint {item['url']} needs a secret (or secrets)")
        endpoints.append(WebhookEndpoint(item["url"], tuple(keys)))
    return tuple(endpoints)


_POSITIVE = (
    "ring_timeout",
    "call_extension",
    "reconnect_grace",
    "turn_ttl",
    "chat_rate",
    "socketio_send_queue",
    "socketio_batch_interval",
    "database_pool_size",
    "max_subscribers_per_room",
    "max_sessions",
    "media_connect_timeout",
    "max_remote_candidates",
    "webhook_retry_for",
    "webhook_retention",
    "webhook_timeout",
    "webhook_poll_interval",
    "payout_minimum",
)


def _validate(s: Settings) -> Settings:
    def fail(name: str, message: str) -> None:
        raise ConfigError(env_name(name), message)

    if not (0 <= s.port <= 65535):
        fail("port", f"must be 0-65535, got {s.port}")
    if not (0 <= s.stun_port <= 65535):
        fail("stun_port", f"must be 0-65535, got {s.stun_port}")
    if not (0 <= s.rtmp_port <= 65535):
        fail("rtmp_port", f"must be 0-65535, got {s.rtmp_port}")
    if s.recordings_quota_bytes < 0:
        fail("recordings_quota_bytes", f"must be 0 or more, got {s.recordings_quota_bytes}")
    if s.recordings_retention_days < 0:
        fail("recordings_retention_days", f"must be 0 or more, got {s.recordings_retention_days}")
    if s.env == "development":
        fail("env", "development mode is asked for with `airwave serve --dev` (or AIRWAVE_DEV=true)")
    if s.env not in ("", "production"):
        fail("env", f"must be production or empty, got {s.env!r}")
    if s.dev and s.env == "production":
        fail("dev", "development mode cannot run with AIRWAVE_ENV=production")
    if s.log_format not in ("text", "json"):
        fail("log_format", f"must be text or json, got {s.log_format!r}")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        fail("log_level", f"must be debug, info, warning or error, got {s.log_level!r}")
    url = s.effective_database_url
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        fail("database_url", f"unknown scheme in {url!r} (use sqlite:///PATH or postgresql://...)")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", s.redis_prefix):
        fail("redis_prefix", f"letters, digits and _ . - only, got {s.redis_prefix!r}")
    if s.internal_url and not s.internal_url.startswith(("http://", "https://")):
        fail("internal_url", f"expected an http:// or https:// URL, got {s.internal_url!r}")
    if s.redis_url and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        fail("redis_url", f"unknown scheme in {s.redis_url!r} (use redis://host:port/db)")
    if s.jwt_algorithm not in ("HS256", "RS256", "ES256"):
        fail("jwt_algorithm", f"must be HS256, RS256 or ES256, got {s.jwt_algorithm!r}")
    if s.jwt_algorithm != "HS256" and not (s.jwt_public_key_file or s.jwt_jwks_file):
        fail("jwt_public_key_file", f"{s.jwt_algorithm} needs a public key file or a JWKS file")
    if s.env == "production" and s.jwt_algorithm == "HS256" and not s.jwt_secret:
        fail("jwt_secret", "must be set in production")
    for name in _POSITIVE:
        if getattr(s, name) <= 0:
            fail(name, f"must be greater than 0, got {getattr(s, name)}")
    for name in ("call_duration", "call_warning_before", "call_max_extensions", "room_publisher_grace",
                 "rate_limit_http", "rate_limit_http_ip", "rate_limit_events", "rate_limit_actions",
                 "max_sessions_per_user", "max_sessions_per_ip", "max_connecting_per_user",
                 "max_connecting_per_ip", "socketio_large_room", "chat_delivery_rate",
                 "gop_cache_max_age"):
        if getattr(s, name) < 0:
            fail(name, f"must not be negative, got {getattr(s, name)}")
    if not (0.0 <= s.gift_creator_share <= 1.0):
        fail("gift_creator_share", f"must be between 0 and 1, got {s.gift_creator_share}")
    for addr in s.ice_addresses:
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            fail("ice_addresses", f"not an IP address: {addr!r}")
    for network in s.ice_candidate_deny:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            fail("ice_candidate_deny", f"not a network like 169.254.0.0/16: {network!r}")
    for uri in s.turn_urls:
        if not uri.startswith(("turn:", "turns:")):
            fail("turn_urls", f"expected turn: or turns: URIs, got {uri!r}")
    if s.turn_urls and not s.turn_secrets:
        fail("turn_secrets", "AIRWAVE_TURN_URLS is set but there is no secret to sign credentials")
    urls = [e.url for e in s.webhook_urls]
    if len(urls) != len(set(urls)):
        fail("webhook_urls", "each endpoint URL once")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            fail("webhook_urls", f"expected http:// or https:// URLs, got {url!r}")
    if s.payout_hold_seconds < 0:
        fail("payout_hold_seconds", f"must not be negative, got {s.payout_hold_seconds}")
    ids = [g.id for g in s.gifts]
    if len(ids) != len(set(ids)):
        fail("gifts", "gift ids must be unique")
    if any(g.coins <= 0 for g in s.gifts):
        fail("gifts", "every gift must cost at least 1 coin")
    return s


def documented_settings() -> list[tuple[str, str, Any]]:
    """(environment variable, type, default) for every setting, for the docs test."""
    out = []
    for f in fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((env_name(f.name), str(f.type), default))
    return out


__all__ = [
    "ConfigError",
    "GiftSpec",
    "Settings",
    "WebhookEndpoint",
    "load_settings",
    "env_name",
    "documented_settings",
]
