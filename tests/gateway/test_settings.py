from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway import redisurl
from gateway.settings import ConfigError, load


def test_file_values_and_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text('database_url = "postgresql://file/db"\n[admin]\nport = 9999\n')
    settings = load(path, {"KEYSTILE_REDIS_URL": "redis://env:6379/1",
                           "KEYSTILE_ADMIN_TOKEN": "a-token-of-sixteen+"})
    assert settings.database_url == "postgresql://file/db"
    assert settings.redis_url == "redis://env:6379/1"
    assert settings.admin.port == 9999
    assert settings.admin.token == "a-token-of-sixteen+"
    assert settings.admin.host == "127.0.0.1"  # loopback unless configured otherwise


def test_database_url_from_environment_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text('database_url = "postgresql://file/db"\n')
    assert load(path, {"KEYSTILE_DATABASE_URL": "postgresql://env/db"}).database_url == (
        "postgresql://env/db")


@pytest.mark.parametrize(("text", "needle"), [
    ("[admin]\nport = 'eighty'\n", "admin.port"),
    ("[admin]\nprot = 1\n", "admin.prot"),
    ("not toml at all", "not valid TOML"),
])
def test_invalid_config_names_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load(path, {})


def test_missing_file_and_short_token() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(Path("/nonexistent/keystile.toml"), {})
    with pytest.raises(ConfigError, match=r"admin\.token"):
        load(None, {"KEYSTILE_ADMIN_TOKEN": "short"})


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "config" / "keystile.example.toml"
    settings = load(example, {})
    assert settings.admin.host == "127.0.0.1" and settings.admin.token is None


@pytest.mark.parametrize(("route", "needle"), [
    ('prefix = "/a/../b"', "normal form"),
    ('prefix = "/a;b"', "path parameters"),
    ('prefix = "/a,b"', "made of letters"),
    ('prefix = "/a%2Cb"', "made of letters"),
    ('prefix = "/x"\nauth = "optional"\nscopes = { GET = ["a:b"] }', "optional"),
    ('prefix = "/x"\nscopes = { FETCH = ["a:b"] }', "FETCH"),
    ('prefix = "/x"\nscopes = { GET = ["nocolon"] }', "nocolon"),
    ('prefix = "/x"\ncredentials = "cookie"', "cookie"),
])
def test_invalid_routes_are_refused(tmp_path: Path, route: str, needle: str) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(f'[[routes]]\nupstream = "http://127.0.0.1:1"\n{route}\n')
    with pytest.raises(ConfigError, match=needle):
        load(path, {})


def test_route_prefixes_lose_their_trailing_slash(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[[routes]]\nprefix = "/admin/"\nupstream = "http://127.0.0.1:1"\n')
    assert load(path, {}).routes[0].prefix == "/admin"


@pytest.mark.parametrize("url", [
    "redis://h:6379/2", "rediss://u:p@h:6380/0", "unix:///run/redis.sock",
    "redis+cluster://10.0.0.1:7000", "redis+cluster://u:p%40ss@a:7000,b:7001,[::1]:7002/0",
    "rediss+cluster://a:7000",
])
def test_redis_urls_for_one_node_and_for_a_cluster(url: str) -> None:
    assert load(None, {"KEYSTILE_REDIS_URL": url}).redis_url == url


def test_a_cluster_url_parses_to_seed_nodes_and_credentials() -> None:
    parsed = redisurl.parse_cluster("redis+cluster://u:p%40ss@a:7000,b:7001,[::1]:7002")
    assert parsed.nodes == (("a", 7000), ("b", 7001), ("::1", 7002))
    assert (parsed.username, parsed.password, parsed.tls) == ("u", "p@ss", False)


@pytest.mark.parametrize(("url", "needle"), [
    ("redis+cluster://a:7000/3", "only database 0"),
    ("redis+cluster://a:7000,b", "'b' is not host:port"),
    ("redis+cluster://", "is not host:port"),
    ("redis+cluster://a:99999", "is not host:port"),
    ("redis+cluster://a:7000?timeout=1", "no query"),
    ("http://a:6379", "redis+cluster://host:port"),
])
def test_malformed_redis_urls_say_what_to_write(url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)) as caught:
        load(None, {"KEYSTILE_REDIS_URL": url})
    assert "redis_url" in str(caught.value)
