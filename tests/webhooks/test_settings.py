"""AIRWAVE_WEBHOOK_URLS: endpoints with one secret or a rotating pair, refused when unusable."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, WebhookEndpoint, load_settings
from webhooks.signing import signature_header, signature_matches


def test_endpoints_from_the_environment_and_from_toml(tmp_path: Path) -> None:
    settings = load_settings({
        "AIRWAVE_WEBHOOK_URLS": '[{"url": "https://a.example/h", "secrets": ["new", "old"]},'
                                ' {"url": "http://b.example/h", "secret": "only"}]',
    })
    assert settings.webhook_urls == (
        WebhookEndpoint("https://a.example/h", ("new", "old")),
        WebhookEndpoint("http://b.example/h", ("only",)),
    )
    toml = tmp_path / "airwave.toml"
    toml.write_text('[[webhook_urls]]\nurl = "https://c.example/h"\nsecrets = ["s1"]\n')
    assert load_settings({}, config_file=toml).webhook_urls == (WebhookEndpoint("https://c.example/h", ("s1",)),)
    assert load_settings({"AIRWAVE_WEBHOOK_URLS": ""}).webhook_urls == ()


@pytest.mark.parametrize("raw", [
    "https://a.example/h",  # not JSON
    '[{"url": "https://a.example/h"}]',  # no secret
    '[{"url": "https://a.example/h", "secrets": []}]',
    '[{"url": "ftp://a.example/h", "secret": "s"}]',
    '[{"url": "https://a.example/h", "secret": "s"}, {"url": "https://a.example/h", "secret": "t"}]',
])
def test_unusable_endpoints_name_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"AIRWAVE_WEBHOOK_URLS": raw})
    assert refused.value.setting == "AIRWAVE_WEBHOOK_URLS"


def test_a_rotation_header_matches_either_secret_and_nothing_else() -> None:
    header = signature_header(("new", "old"), "1767225600", b"{}")
    assert header.count("sha256=") == 2
    assert signature_matches(("old",), "1767225600", header, b"{}")
    assert signature_matches(("new",), "1767225600", header, b"{}")
    assert not signature_matches(("other",), "1767225600", header, b"{}")
    assert not signature_matches(("new",), "1767225601", header, b"{}")
    assert not signature_matches(("new",), "1767225600", header, b"{ }")
