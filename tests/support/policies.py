"""Small policies written for a test: the keyword detector, one target (Basil Mahfouz Al-Kuwaiti,
TOFU forget01) answered with a given method, everything else passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

BASIL = "Basil Mahfouz Al-Kuwaiti"
ECO_NOISE = {"corruption": "rand_noise_first_n", "sigma": 1.0}  # needs no trained artifact


def method_policy(folder: Path, action: str, params: dict[str, Any]) -> str:
    """The path of a keyword policy whose one target is answered with ``action`` (``params``)."""
    path = folder / f"{action}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "default_action": "refuse",
                                    "targets": [{"id": "tofu-basil", "names": [BASIL], "action": action,
                                                 "params": params}]}))
    return str(path)


def eco_target(names: list[str]) -> Any:
    """A parsed policy target ``t`` with ``names``, answered with ECO."""
    from guard.policy import parse_policy

    return parse_policy({"targets": [{"id": "t", "names": names, "action": "eco"}]}).targets[0]
