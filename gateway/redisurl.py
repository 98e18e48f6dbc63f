"""The Redis URL forms Keystile accepts: one node (``redis://``, ``rediss://``, ``unix://``)
or a Redis Cluster (``redis+cluster://host:port[,host:port...]``, ``rediss+cluster://`` for
TLS). A cluster URL lists seed nodes; the client learns the rest from them."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

SINGLE_SCHEMES = ("redis://", "rediss://", "unix://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
FORMS = ("redis://host:port/db, rediss://host:port/db, unix:///path/to/socket or, for a "
         "Redis Cluster, redis+cluster://host:port[,host:port...]")


@dataclass(frozen=True, slots=True)
class ClusterURL:
    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def parse_cluster(url: str) -> ClusterURL:
    """The seed nodes and credentials of a cluster URL; ValueError says what is wrong."""
    scheme, _, rest = url.partition("://")
    if "?" in rest or "#" in rest:
        raise ValueError("a cluster URL takes no query or fragment (timeouts and pool sizes "
                         "go in [stores])")
    credentials, _, hosts = rest.rpartition("@")
    hosts, _, db = hosts.partition("/")
    if db not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {db!r}: drop /{db}")
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        host = host.strip("[]")  # an IPv6 address is written [::1]:7000
        if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{part.strip() or '(empty)'!r} is not host:port; write "
                             "redis+cluster://host:port[,host:port...]")
        nodes.append((host, int(port)))
    username = password = None
    if credentials:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return ClusterURL(tuple(nodes), username, password, scheme == "rediss+cluster")


def check(url: str) -> str:
    """``url`` if Keystile can use it, else ValueError naming the accepted forms."""
    if is_cluster(url):
        parse_cluster(url)
        return url
    if not url.startswith(SINGLE_SCHEMES):
        raise ValueError(f"must be one of {FORMS}")
    return url
