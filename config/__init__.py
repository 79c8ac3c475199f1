"""Settings from AIRWAVE_* environment variables and an optional TOML file."""

from config.settings import (
    ConfigError,
    GiftSpec,
    Settings,
    WebhookEndpoint,
    documented_settings,
    env_name,
    load_settings,
)

__all__ = ["ConfigError", "GiftSpec", "Settings", "WebhookEndpoint", "documented_settings", "env_name", "load_settings"]
