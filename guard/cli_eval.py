"""``guard-eval``: measures the guard (see ``guard.cli_common``)."""

from __future__ import annotations

import sys

from guard.cli_common import run

SUBCOMMANDS: dict[str, str] = {
    "detector": "guard.eval.cmd_detector",
    "tofu": "guard.eval.cmd_tofu",
    "rwku": "guard.eval.cmd_rwku",
    "leak": "guard.eval.cmd_leak",
    "false-stops": "guard.eval.cmd_false_stops",
}


def main(argv: list[str] | None = None) -> int:
    return run("guard-eval", "Measure the guard: detector quality, TOFU, RWKU and leaks on nameless questions.", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
