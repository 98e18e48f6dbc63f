"""How the command line prints the admin API's answers: aligned tables, or the JSON as
received with --json."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from keystile.adminclient import Json, Reply


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [headers, *rows])


def text(name: str, value: Any) -> str:
    """A field's value as a table shows it."""
    if value is None or value == []:
        return "-"
    if name == "rate_limits":
        return ", ".join(f"{w['limit']}/{w['window_s']}s" for w in value)
    if name == "quota":
        return f"{value['limit']}/{value['period']}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def fields(record: Json, leave_out: tuple[str, ...] = ()) -> str:
    return table(["FIELD", "VALUE"], [[k, text(k, v)] for k, v in record.items()
                                      if k not in leave_out])


def out(args: argparse.Namespace, reply: Reply, render: Callable[[Any], str]) -> None:
    print(reply.text if args.json else render(reply.data))
