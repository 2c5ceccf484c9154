"""``guard-train``'s command table: every subcommand registers from its ``cmd_*`` module, including
``spul-report`` (formerly ``python -m guard.train.spul report``)."""

from __future__ import annotations

import pytest

from guard.cli_common import build_parser
from guard.cli_train import SUBCOMMANDS, main


def test_every_subcommand_registers_and_parses_its_help(capsys) -> None:
    parser = build_parser("guard-train", "", SUBCOMMANDS)
    names = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert names == {"finetune", "classifier", "eco", "spul", "spul-report", "uld"}
    for name in names:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
    assert "--forget-rows" in capsys.readouterr().out


def test_spul_report_needs_its_rows(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["spul-report", "--artifact", "x"])
    assert exit_.value.code == 2 and "--forget-rows" in capsys.readouterr().err
