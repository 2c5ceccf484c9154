"""``guard-train``: builds the artifacts the guard serves with (see ``guard.cli_common``)."""

from __future__ import annotations

import sys

from guard.cli_common import run

SUBCOMMANDS: dict[str, str] = {
    "finetune": "guard.train.cmd_finetune",
    "classifier": "guard.train.cmd_classifier",
    "eco": "guard.train.cmd_eco",
    "spul": "guard.train.cmd_spul",
    "spul-report": "guard.train.cmd_spul:register_report",
    "uld": "guard.train.cmd_uld",
}


def main(argv: list[str] | None = None) -> int:
    return run("guard-train", "Train benchmark models, detectors and unlearning artifacts.", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
