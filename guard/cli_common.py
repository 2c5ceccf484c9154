"""Shared plumbing for the ``guard-train`` and ``guard-eval`` command families.

Each subcommand lives in its own module exposing ``register(subparsers) -> None``, which adds its
parser and sets ``func`` (``args -> int``). To add one: write the module, then add it to the
family's ``SUBCOMMANDS`` table.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Mapping

from guard.errors import ConfigError


def build_parser(prog: str, description: str, subcommands: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in subcommands.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            planned = sub.add_parser(name, help="(planned; not in this version)")
            planned.set_defaults(func=lambda args, n=name: _planned(prog, n))
            continue
        module.register(sub)
    return parser


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
