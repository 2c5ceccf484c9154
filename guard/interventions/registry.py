"""Action name -> intervention factory. A policy naming an unregistered action fails at load."""

from __future__ import annotations

from typing import Callable

from guard.engines.base import Engine
from guard.errors import ConfigError
from guard.interventions.base import Intervention, PassThrough
from guard.interventions.refuse import Refuse
from guard.policy import Policy

Factory = Callable[[Policy, Engine], Intervention]

FACTORIES: dict[str, Factory] = {
    "pass": lambda policy, engine: PassThrough(),
    "refuse": lambda policy, engine: Refuse(policy.refusal_message),
}


def build_interventions(policy: Policy, engine: Engine) -> dict[str, Intervention]:
    """One intervention per action the policy uses (plus ``pass``), built once at load."""
    used = {"pass", policy.default_action} | {t.action for t in policy.targets if t.action}
    where = {t.action: f"targets.{i}.action" for i, t in enumerate(policy.targets) if t.action}
    built: dict[str, Intervention] = {}
    for action in sorted(used):
        factory = FACTORIES.get(action)
        if factory is None:
            raise ConfigError(
                f"action {action!r} is not available in this version (available: {', '.join(sorted(FACTORIES))})",
                param=where.get(action, "default_action"))
        built[action] = factory(policy, engine)
    return built
