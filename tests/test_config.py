from pathlib import Path

import pytest

from config import ConfigError, load_settings


def test_defaults_run_on_a_laptop() -> None:
    s = load_settings({})
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    assert s.database_backend == "sqlite"
    assert s.effective_database_url == "sqlite:///data/airwave.db"
    assert s.redis_url == ""
    assert s.stun_port == 3478
    assert not s.dev and s.mode == "production"  # development mode only on request


def test_environment_overrides_file_and_file_overrides_defaults(tmp_path: Path) -> None:
    f = tmp_path / "airwave.toml"
    f.write_text('port = 9000\nring_timeout = 5.5\nice_addresses = ["127.0.0.1"]\nudp_ports = "40000-40010"\n')
    s = load_settings({"AIRWAVE_PORT": "9100"}, config_file=f)
    assert s.port == 9100
    assert s.ring_timeout == 5.5
    assert s.ice_addresses == ("127.0.0.1",)
    assert s.udp_ports == (40000, 40010)


def test_command_line_overrides_environment() -> None:
    assert load_settings({"AIRWAVE_PORT": "9100"}, port=9200).port == 9200


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"AIRWAVE_PORT": "abc"}, "AIRWAVE_PORT"),
        ({"AIRWAVE_PORT": "70000"}, "AIRWAVE_PORT"),
        ({"AIRWAVE_DATABASE_URL": "mysql://x/y"}, "AIRWAVE_DATABASE_URL"),
        ({"AIRWAVE_REDIS_URL": "http://x"}, "AIRWAVE_REDIS_URL"),
        ({"AIRWAVE_REQUIRE_MATCH": "perhaps"}, "AIRWAVE_REQUIRE_MATCH"),
        ({"AIRWAVE_UDP_PORTS": "5-1"}, "AIRWAVE_UDP_PORTS"),
        ({"AIRWAVE_ICE_ADDRESSES": "not-an-ip"}, "AIRWAVE_ICE_ADDRESSES"),
        ({"AIRWAVE_GIFT_CREATOR_SHARE": "1.5"}, "AIRWAVE_GIFT_CREATOR_SHARE"),
        ({"AIRWAVE_ENV": "production"}, "AIRWAVE_JWT_SECRET"),
        ({"AIRWAVE_ENV": "development"}, "AIRWAVE_ENV"),
        ({"AIRWAVE_DEV": "true", "AIRWAVE_ENV": "production", "AIRWAVE_JWT_SECRET": "s"}, "AIRWAVE_DEV"),
        ({"AIRWAVE_JWT_ALGORITHM": "RS256"}, "AIRWAVE_JWT_PUBLIC_KEY_FILE"),
        ({"AIRWAVE_TURN_URLS": "turn:x:3478"}, "AIRWAVE_TURN_SECRETS"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert setting in str(info.value)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "airwave.toml"
    f.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings({}, config_file=f)


def test_every_setting_is_documented() -> None:
    from config import documented_settings

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    missing = [name for name, _, _ in documented_settings() if f"`{name}`" not in doc]
    assert missing == []
