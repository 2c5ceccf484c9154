"""Shared plumbing for the ``guard-train`` and ``guard-eval`` command families.

Each subcommand lives in a ``cmd_*`` module of its package exposing ``register(subparsers) -> None``
(or another function named as ``module:function`` in the table), which adds its parser and sets
``func`` (``args -> int``). To add one: write the function, then add it to the family's
``SUBCOMMANDS`` table.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from typing import Mapping

from guard.errors import ConfigError


def build_parser(prog: str, description: str, subcommands: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in subcommands.items():
        module_name, _, function = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            planned = sub.add_parser(name, help="(planned; not in this version)")
            planned.set_defaults(func=lambda args, n=name: _planned(prog, n))
            continue
        getattr(module, function or "register")(sub)
    return parser


def command_line(prog: str, name: str) -> str | None:
    """The command as it was typed (recorded in reports), when this process runs ``prog name ...``."""
    if sys.argv[1:2] != [name]:
        return None
    return f"{prog} {name} " + " ".join(shlex.quote(a) for a in sys.argv[2:])


def _planned(prog: str, name: str) -> int:
    print(f"{prog} {name}: not implemented in this version", file=sys.stderr)
    return 2


def run(prog: str, description: str, subcommands: Mapping[str, str], argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser(prog, description, subcommands)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted; results already written are complete, nothing partial was kept", file=sys.stderr)
        return 130
