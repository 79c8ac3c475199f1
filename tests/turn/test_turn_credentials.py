"""TURN REST credentials and the ICE server list, checked against HMACs computed here."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re

import pytest

from config import Settings
from turn import (
    IceServerProvider,
    format_uri_host,
    mint_turn_credential,
    quote_header_value,
)

NOW = 1_700_000_000


def expected_password(secret: str, username: str) -> str:
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def make_settings(**changes) -> Settings:  # type: ignore[no-untyped-def]
    base = {
        "stun_port": 3478,
        "turn_urls": ("turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"),
        "turn_secrets": ("new-secret", "old-secret"),
        "turn_ttl": 3600,
    }
    base.update(changes)
    return Settings().with_overrides(**base)


def provider(**changes) -> IceServerProvider:  # type: ignore[no-untyped-def]
    return IceServerProvider(make_settings(**changes), clock=lambda: NOW + 0.9)


def test_username_and_password_format() -> None:
    cred = mint_turn_credential("s3cret", "user-42", 600, now=NOW)
    assert cred.username == f"{NOW + 600}:user-42"
    assert cred.expires_at == NOW + 600
    assert cred.credential == expected_password("s3cret", f"{NOW + 600}:user-42")
    assert len(base64.b64decode(cred.credential)) == 20  # SHA-1


def test_known_vector() -> None:
    # Computed once with: printf '%s' '1700003600:alice' | openssl dgst -sha1 -hmac secret -binary | base64
    cred = mint_turn_credential("secret", "alice", 3600, now=NOW)
    assert cred.username == "1700003600:alice"
    assert cred.credential == "LLPLO4qjdVL2qZhwr3eImhn7J20="


def test_provider_signs_with_the_first_secret_only() -> None:
    cred = provider().credential("u1")
    assert cred is not None
    assert cred.username == f"{NOW + 3600}:u1"  # fractional clock truncated
    assert cred.credential == expected_password("new-secret", cred.username)
    assert cred.credential != expected_password("old-secret", cred.username)


def test_rotation_switches_signer() -> None:
    before = provider(turn_secrets=("old-secret",)).credential("u1")
    during = provider(turn_secrets=("new-secret", "old-secret")).credential("u1")
    assert before is not None and during is not None
    assert before.credential == expected_password("old-secret", before.username)
    assert during.credential == expected_password("new-secret", during.username)


def test_ttl_from_settings() -> None:
    p = provider(turn_ttl=120)
    assert p.ttl == 120
    cred = p.credential("x")
    assert cred is not None and cred.expires_at == NOW + 120


def test_user_id_with_colon_keeps_timestamp_first() -> None:
    cred = mint_turn_credential("s", "tenant:42", 60, now=NOW)
    assert cred.username.split(":", 1) == [str(NOW + 60), "tenant:42"]


@pytest.mark.parametrize("bad", ["a\r\nb", "tab\there", "nul\0", "x" * 300])
def test_bad_user_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        mint_turn_credential("s", bad, 60, now=NOW)


def test_mint_needs_secret_and_positive_ttl() -> None:
    with pytest.raises(ValueError):
        mint_turn_credential("", "u", 60)
    with pytest.raises(ValueError):
        mint_turn_credential("s", "u", 0)


# --- ICE server list --------------------------------------------------------------------


def test_ice_servers_browser_shape() -> None:
    servers = provider().ice_servers("u1", "media.example.com")
    assert servers[0] == {"urls": ["stun:media.example.com:3478"]}
    turn = servers[1]
    assert turn["urls"] == [
        "turn:turn.example.com:3478?transport=udp",
        "turns:turn.example.com:5349",
    ]
    assert turn["username"] == f"{NOW + 3600}:u1"
    assert turn["credential"] == expected_password("new-secret", turn["username"])
    assert len(servers) == 2
    json.dumps(servers)  # serialisable as is


def test_stun_entry_follows_stun_port_and_host() -> None:
    assert provider(stun_port=0).ice_servers("u", "h.example")[0]["urls"][0].startswith("turn:")
    assert provider().ice_servers("u", None)[0]["urls"][0].startswith("turn:")
    assert provider(stun_port=3479).stun_urls("h.example") == ["stun:h.example:3479"]


def test_stun_only_when_no_turn() -> None:
    p = provider(turn_urls=(), turn_secrets=())
    assert not p.turn_enabled and p.stun_enabled
    assert p.ice_servers("u", "127.0.0.1") == [{"urls": ["stun:127.0.0.1:3478"]}]
    assert p.credential("u") is None
    assert provider(turn_urls=(), turn_secrets=(), stun_port=0).ice_servers("u", "h") == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("2001:DB8::1", "[2001:db8::1]"),
        ("Media.Example.com", "media.example.com"),
        ("localhost", "localhost"),
    ],
)
def test_uri_host(given: str, expected: str) -> None:
    assert format_uri_host(given) == expected


@pytest.mark.parametrize(
    "bad",
    ["evil.com>; rel=x", "a b", 'x"y', "host:8080", "a\r\nb", "[example.com]", "-x", "a..b", ""],
)
def test_hostile_hosts_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        format_uri_host(bad)


def test_bad_turn_url_is_refused_at_construction() -> None:
    settings = make_settings()
    broken = dataclasses.replace(settings, turn_urls=("turn:x.example>; rel=evil",))
    with pytest.raises(ValueError):
        IceServerProvider(broken)
    no_secret = dataclasses.replace(settings, turn_secrets=())
    with pytest.raises(ValueError):
        IceServerProvider(no_secret)


# --- Link headers (RFC 9725 section 4.6, RFC 8288) ------------------------------------------

LINK = re.compile(
    r'^<(?P<uri>[^<>\s]+)>; rel="ice-server"'
    r'(?:; username="(?P<username>(?:[^"\\]|\\.)*)"'
    r'; credential="(?P<credential>(?:[^"\\]|\\.)*)"'
    r'; credential-type="password")?$'
)


def unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def test_link_headers() -> None:
    links = provider().link_headers("u1", "::1")
    assert links[0] == '<stun:[::1]:3478>; rel="ice-server"'
    assert len(links) == 3  # one Link per URL
    username = f"{NOW + 3600}:u1"
    password = expected_password("new-secret", username)
    assert links[1] == (
        '<turn:turn.example.com:3478?transport=udp>; rel="ice-server"; '
        f'username="{username}"; credential="{password}"; credential-type="password"'
    )
    for link in links:
        assert LINK.match(link), link


def test_link_headers_quote_usernames() -> None:
    links = provider(stun_port=0).link_headers('we"ird\\user', None)
    m = LINK.match(links[0])
    assert m is not None, links[0]
    username = unquote(m["username"])
    assert username == f'{NOW + 3600}:we"ird\\user'
    assert unquote(m["credential"]) == expected_password("new-secret", username)


def test_link_and_json_agree() -> None:
    p = provider()
    servers = p.ice_servers("u1", "h.example")
    links = p.link_headers("u1", "h.example")
    uris = [LINK.match(link)["uri"] for link in links]  # type: ignore[index]
    assert uris == [u for s in servers for u in s["urls"]]


def test_quote_header_value() -> None:
    assert quote_header_value("plain") == '"plain"'
    assert quote_header_value('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ValueError):
        quote_header_value("a\nb")
