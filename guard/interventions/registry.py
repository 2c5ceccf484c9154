"""Action name -> intervention factory. A policy naming an unavailable action fails at load.

Built-in actions are ``pass`` and ``refuse``. Each unlearning method lives in its own module,
listed in ``METHOD_MODULES``, exposing ``build_intervention(policy, engine) -> Intervention``.
"""

from __future__ import annotations

import importlib
from typing import Callable

from guard.engines.base import Engine
from guard.errors import ConfigError
from guard.interventions.base import Intervention, PassThrough
from guard.interventions.refuse import Refuse
from guard.policy import Policy

Factory = Callable[[Policy, Engine], Intervention]

BUILTIN: dict[str, Factory] = {
    "pass": lambda policy, engine: PassThrough(),
    "refuse": lambda policy, engine: Refuse(policy.refusal_message),
}
METHOD_MODULES: dict[str, str] = {
    "eco": "guard.interventions.eco",
    "spul": "guard.interventions.spul",
    "uld": "guard.interventions.uld",
}


def available_actions() -> dict[str, Factory]:
    out = dict(BUILTIN)
    for action, module_name in METHOD_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        out[action] = module.build_intervention
    return out


def build_interventions(policy: Policy, engine: Engine) -> dict[str, Intervention]:
    """One intervention per action the policy uses (plus ``pass``), built once at load."""
    factories = available_actions()
    used = {"pass", policy.default_action} | {t.action for t in policy.targets if t.action}
    where = {t.action: f"targets.{i}.action" for i, t in enumerate(policy.targets) if t.action}
    built: dict[str, Intervention] = {}
    for action in sorted(used):
        factory = factories.get(action)
        if factory is None:
            raise ConfigError(
                f"action {action!r} is not available in this version (available: {', '.join(sorted(factories))})",
                param=where.get(action, "default_action"))
        built[action] = factory(policy, engine)
    return built
