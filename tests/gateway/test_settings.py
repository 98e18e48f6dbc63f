from __future__ import annotations

from pathlib import Path

import pytest

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
