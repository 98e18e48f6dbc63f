"""``keystile orgs|keys|usage``: the admin API over HTTP for people who script, one function
per command (the client is ``keystile.adminclient``, the output ``keystile.tables``, the flag
values ``keystile.flags``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from keystile.adminclient import DEFAULT_URL, Client, Failure, Json, path
from keystile.flags import (
    admin_url,
    count,
    expiry,
    json_object,
    positive,
    quota,
    rate_limit,
    seconds,
)
from keystile.tables import fields, out, table, text

STATUSES = ("active", "paused", "revoked", "expired")
ENVIRONMENTS = ("production", "staging", "development")

EPILOG = """\
environment (credentials are never flags: they would show in shell history and ps):
  KEYSTILE_ADMIN_URL    the admin API (default http://127.0.0.1:8081); --admin-url overrides
  KEYSTILE_ADMIN_TOKEN  the operator token, sent as Authorization: Bearer
  KEYSTILE_ADMIN_KEY    a root key, sent as X-API-Key when no token is set; it sees and
                        manages only its own organisation's keys

limits:
  --rate-limit LIMIT/WINDOW   e.g. 100/60s, 10/s, 5000/1h, 100000/1d (units s, m, h, d;
                              repeat the flag for several windows)
  --quota LIMIT/PERIOD        e.g. 1000/day, 20000/week, 500000/month

output: aligned text by default; --json prints the API's JSON document unchanged (a list is
  {"data": [...], "next_cursor": ...} with every page fetched, as one document).

exit codes:
  0  success
  1  the API refused the request; stderr says: keystile: <code>: <message>
  2  command-line usage error
  3  not found (404)
  4  not authenticated or not allowed (401, 403)
  5  the admin API could not be reached, or answered 5xx
"""


def _given(args: argparse.Namespace, names: dict[str, str]) -> Json:
    """The JSON fields for the flags given (flag attribute -> API field)."""
    given = vars(args)
    return {api: given[flag] for flag, api in names.items() if given.get(flag) is not None}


# ---- organisations -------------------------------------------------------------------------

ORG_COLUMNS = ("id", "provider_id", "key_prefix", "name", "created_at")


def orgs_list(args: argparse.Namespace, client: Client) -> None:
    doc = client.every("/v1/orgs", {}, args.limit)
    _print_list(args, doc, ORG_COLUMNS, "organisations")


def orgs_show(args: argparse.Namespace, client: Client) -> None:
    out(args, client.call("GET", path("v1", "orgs", args.org_id)), fields)


def orgs_create(args: argparse.Namespace, client: Client) -> None:
    body = _given(args, {"name": "name", "provider_id": "provider_id",
                         "key_prefix": "key_prefix", "rate_limit": "rate_limits",
                         "metadata": "metadata"})
    defaults = _given(args, {"default_scope": "scopes", "default_rate_limit": "rate_limits",
                             "default_usage_limit": "usage_limit", "default_quota": "quota",
                             "default_expires_in": "expires_in_s",
                             "default_environment": "environment"})
    if defaults:
        body["key_defaults"] = defaults
    out(args, client.call("POST", "/v1/orgs", body=body), fields)


def orgs_delete(args: argparse.Namespace, client: Client) -> None:
    client.call("DELETE", path("v1", "orgs", args.org_id),
                query={"cascade": True} if args.cascade else None)
    if not args.json:  # 204: the API has no document to show
        print(f"deleted organisation {args.org_id}")


# ---- keys ----------------------------------------------------------------------------------

KEY_COLUMNS = ("id", "org_id", "owner_id", "name", "status", "prefix", "scopes", "expires_at")
RAW_KEY_NOTICE = "raw key (shown this once; store it now, it cannot be shown again):"


def keys_list(args: argparse.Namespace, client: Client) -> None:
    query = {"org_id": args.org, "owner_id": args.owner, "status": args.status,
             "environment": args.environment, "search": args.search}
    _print_list(args, client.every("/v1/keys", query, args.limit), KEY_COLUMNS, "keys")


def keys_show(args: argparse.Namespace, client: Client) -> None:
    out(args, client.call("GET", path("v1", "keys", args.key_id)), fields)


def _with_raw_key(record: Json) -> str:
    return f"{fields(record, ('key',))}\n\n{RAW_KEY_NOTICE}\n{record['key']}"


def keys_create(args: argparse.Namespace, client: Client) -> None:
    body = _given(args, {"org": "org_id", "name": "name", "owner": "owner_id",
                         "environment": "environment", "scope": "scopes",
                         "rate_limit": "rate_limits", "usage_limit": "usage_limit",
                         "quota": "quota", "expires": "expires_at", "metadata": "metadata"})
    if args.root:
        body["root"] = True
    out(args, client.call("POST", "/v1/keys", body=body), _with_raw_key)


def keys_status(action: str) -> Callable[[argparse.Namespace, Client], None]:
    def change(args: argparse.Namespace, client: Client) -> None:
        reply = client.call("POST", path("v1", "keys", args.key_id, action))
        out(args, reply, lambda key: f"{key['id']}  {key['status']}")

    return change


def keys_rotate(args: argparse.Namespace, client: Client) -> None:
    reply = client.call("POST", path("v1", "keys", args.key_id, "rotate"),
                        body={"grace_seconds": args.grace})
    out(args, reply, _with_raw_key)


def keys_set_limits(args: argparse.Namespace, client: Client) -> None:
    given = vars(args)  # these flags are absent unless given: "none" is a value (null)
    body = {api: given[flag] for flag, api in (
        ("rate_limit", "rate_limits"), ("usage_limit", "usage_limit"), ("quota", "quota"),
        ("expires", "expires_at"), ("shadow", "shadow_limits")) if flag in given}
    if args.no_rate_limits:
        body["rate_limits"] = []
    if not body:
        raise Failure("keystile: error: give at least one of --rate-limit, --no-rate-limits, "
                      "--usage-limit, --quota, --expires, --shadow, --enforce", 2)
    out(args, client.call("PATCH", path("v1", "keys", args.key_id), body=body), fields)


def _print_list(args: argparse.Namespace, doc: Json, columns: tuple[str, ...],
                what: str) -> None:
    if args.json:
        print(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))
    else:
        print(table([c.upper() for c in columns],
                    [[text(c, row.get(c)) for c in columns] for row in doc["data"]]))
    if doc["next_cursor"] is not None:
        print(f"keystile: more {what} exist beyond --limit {args.limit}", file=sys.stderr)


# ---- usage ---------------------------------------------------------------------------------

def usage(args: argparse.Namespace, client: Client) -> None:
    if args.range is not None:
        usage_series(args, client)
        return
    out(args, client.call("GET", path("v1", "keys", args.key_id, "usage")), _usage_text)


def _usage_text(doc: Json) -> str:
    lines = [table(["FIELD", "VALUE"], [[k, text(k, doc[k])] for k in (
        "usage_count", "usage_limit", "usage_remaining")])]
    if doc["quota"] is not None:
        q = doc["quota"]
        lines.append(f"\nquota {q['limit']}/{q['period']}: {q['used']} used, resets "
                     f"{q['resets_at']}")
    if doc["rate_limits"]:
        lines.append("\n" + table(["RATE_LIMIT", "REMAINING", "RESETS_AT"], [
            [f"{w['limit']}/{w['window_s']}s", str(w["remaining"]), text("", w["resets_at"])]
            for w in doc["rate_limits"]]))
    if doc["daily"]:
        lines.append("\n" + table(["DAY", "REQUESTS"],
                                  [[d["day"], str(d["count"])] for d in doc["daily"]]))
    return "\n".join(lines)


def usage_series(args: argparse.Namespace, client: Client) -> None:
    """``GET /v1/usage/series``: the totals, then one row per point with a column per refusal
    code seen."""
    reply = client.call("GET", "/v1/usage/series",
                        query={"key_id": args.key_id, "range": args.range})

    def render(doc: Json) -> str:
        points, totals = doc["points"], doc["totals"]
        codes = sorted({c for p in [*points, totals] for c in p.get("refused", {})})

        def row(at: str, p: Json) -> list[str]:
            refused = p.get("refused", {})
            return [at, str(p["requests"]), str(p["forwarded"]),
                    str(sum(refused.values())), *(str(refused.get(c, 0)) for c in codes)]

        head = ["AT", "REQUESTS", "FORWARDED", "REFUSED", *(c.upper() for c in codes)]
        return (f"range {doc['range']} ({doc['step_seconds']}s steps) from {doc['since']} "
                f"to {doc['until']}\n\n"
                + table(head, [row("total", totals)]) + "\n\n"
                + table(head, [row(p["at"], p) for p in points]))

    out(args, reply, render)


# ---- the parsers ---------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, Client], None]


def run(command: Command) -> Callable[[argparse.Namespace], None]:
    def call(args: argparse.Namespace) -> None:
        with _closed_pipe_is_fine():
            command(args, Client.from_args(args, os.environ))
            sys.stdout.flush()

    return call


@contextmanager
def _closed_pipe_is_fine() -> Iterator[None]:
    """``keystile keys list | head`` stops reading early: that is not an error."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--admin-url", type=admin_url, metavar="URL",
                        default=os.environ.get("KEYSTILE_ADMIN_URL") or DEFAULT_URL,
                        help="the admin API (default: KEYSTILE_ADMIN_URL, else "
                        f"{DEFAULT_URL})")
    common.add_argument("--json", action="store_true",
                        help="print the API's JSON instead of a table")
    return common


def _limit_flags(cmd: argparse.ArgumentParser, absent: object = None) -> None:
    cmd.add_argument("--rate-limit", type=rate_limit, action="append", metavar="LIMIT/WINDOW",
                     default=absent, help="e.g. 100/60s; repeat for several windows")
    cmd.add_argument("--usage-limit", type=count, metavar="N", default=absent,
                     help="lifetime requests")
    cmd.add_argument("--quota", type=quota, metavar="LIMIT/PERIOD", default=absent,
                     help="per day, week or month, e.g. 1000/day")
    cmd.add_argument("--expires", type=expiry, metavar="ISO", default=absent,
                     help="expiry time with a zone, e.g. 2030-01-01T00:00:00Z")


def add_parsers(sub: Any) -> None:
    """``orgs``, ``keys`` and ``usage`` on the ``keystile`` parser's subcommands."""
    common = _common()
    fmt = argparse.RawDescriptionHelpFormatter
    kinds: dict[str, Any] = {"epilog": EPILOG, "formatter_class": fmt}

    def leaf(group: Any, name: str, command: Command, help_: str) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help_,
                                                        description=help_, **kinds)
        cmd.set_defaults(func=run(command))
        return cmd

    orgs = sub.add_parser("orgs", help="organisations through a running admin API (operator)",
                          **kinds).add_subparsers(dest="action", required=True)
    cmd = leaf(orgs, "list", orgs_list, "list organisations")
    cmd.add_argument("--limit", type=positive, metavar="N", help="at most N rows (default: all)")
    leaf(orgs, "show", orgs_show, "one organisation").add_argument("org_id", metavar="ORG_ID")
    cmd = leaf(orgs, "create", orgs_create, "create an organisation")
    cmd.add_argument("--name", required=True)
    cmd.add_argument("--provider-id", required=True, help="unique; X-Provider names it")
    cmd.add_argument("--key-prefix", help="of its keys' raw form (default ks_live)")
    cmd.add_argument("--rate-limit", type=rate_limit, action="append", metavar="LIMIT/WINDOW",
                     help="shared by all its keys; repeat for several windows")
    cmd.add_argument("--metadata", type=json_object, metavar="JSON")
    cmd.add_argument("--default-scope", action="append", metavar="SCOPE",
                     help="new keys' scopes; repeat for several")
    cmd.add_argument("--default-rate-limit", type=rate_limit, action="append",
                     metavar="LIMIT/WINDOW", help="new keys' rate limits")
    cmd.add_argument("--default-usage-limit", type=count, metavar="N")
    cmd.add_argument("--default-quota", type=quota, metavar="LIMIT/PERIOD")
    cmd.add_argument("--default-expires-in", type=seconds, metavar="SECONDS")
    cmd.add_argument("--default-environment", choices=ENVIRONMENTS)
    cmd = leaf(orgs, "delete", orgs_delete, "delete an organisation")
    cmd.add_argument("org_id", metavar="ORG_ID")
    cmd.add_argument("--cascade", action="store_true", help="delete its keys with it")

    keys = sub.add_parser("keys", help="keys through a running admin API", **kinds
                          ).add_subparsers(dest="action", required=True)
    cmd = leaf(keys, "list", keys_list, "list keys (never their secrets)")
    cmd.add_argument("--org", metavar="ORG_ID")
    cmd.add_argument("--owner", metavar="OWNER_ID")
    cmd.add_argument("--status", choices=STATUSES)
    cmd.add_argument("--environment", choices=ENVIRONMENTS)
    cmd.add_argument("--search", metavar="TEXT", help="a name or owner id containing TEXT, a "
                     "display prefix starting with it, or the key id")
    cmd.add_argument("--limit", type=positive, metavar="N", help="at most N rows (default: all)")
    leaf(keys, "show", keys_show, "one key").add_argument("key_id", metavar="KEY_ID")
    cmd = leaf(keys, "create", keys_create, "create a key; prints its raw key once")
    cmd.add_argument("--org", metavar="ORG_ID", help="required with the operator token")
    cmd.add_argument("--name")
    cmd.add_argument("--owner", metavar="OWNER_ID")
    cmd.add_argument("--environment", choices=ENVIRONMENTS)
    cmd.add_argument("--scope", action="append", metavar="SCOPE", help="repeat for several")
    _limit_flags(cmd)
    cmd.add_argument("--metadata", type=json_object, metavar="JSON")
    cmd.add_argument("--root", action="store_true", help="a root key (operator token only)")
    for action, help_ in (("pause", "pause a key"), ("resume", "resume a paused key"),
                          ("revoke", "revoke a key (irreversible)")):
        leaf(keys, action, keys_status(action), help_).add_argument("key_id", metavar="KEY_ID")
    cmd = leaf(keys, "rotate", keys_rotate, "give a key a new secret; prints it once")
    cmd.add_argument("key_id", metavar="KEY_ID")
    cmd.add_argument("--grace", type=seconds, default=0, metavar="SECONDS",
                     help="how long the old secret keeps working (default 0)")
    cmd = leaf(keys, "set-limits", keys_set_limits,
               "change a key's limits; flags not given are kept, 'none' clears one")
    cmd.add_argument("key_id", metavar="KEY_ID")
    _limit_flags(cmd, argparse.SUPPRESS)
    cmd.add_argument("--no-rate-limits", action="store_true", help="remove every rate limit")
    mode = cmd.add_mutually_exclusive_group()
    mode.add_argument("--shadow", dest="shadow", action="store_const", const=True,
                      default=argparse.SUPPRESS, help="shadow mode: measure the key's limits, "
                      "let requests over them pass")
    mode.add_argument("--enforce", dest="shadow", action="store_const", const=False,
                      default=argparse.SUPPRESS, help="enforce the key's limits again")

    cmd = leaf(sub, "usage", usage, "a key's usage counters, or with --range its requests "
               "over time")
    cmd.add_argument("key_id", metavar="KEY_ID")
    cmd.add_argument("--range", choices=("hour", "day", "30d"),
                     help="requests, forwarded and refused per step over the last hour, "
                     "day or 30 days")
