"""``guard-train``: builds the artifacts the guard serves with (see ``guard.cli_common``)."""

from __future__ import annotations

import sys

from guard.cli_common import run

SUBCOMMANDS: dict[str, str] = {
    "finetune": "guard.train.finetune",
    "classifier": "guard.train.classifier",
    "eco": "guard.train.eco",
    "spul": "guard.train.spul",
    "uld": "guard.train.uld",
}


def main(argv: list[str] | None = None) -> int:
    return run("guard-train", "Train benchmark models, detectors and unlearning artifacts.", SUBCOMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
