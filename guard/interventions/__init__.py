"""Interventions: what answers a request once the pipeline has decided on an action.

To add a method: write ``guard/interventions/<name>.py`` with a class implementing
``Intervention`` (a ``stream`` method yielding ``GenerationChunk``), and register a factory for
it in ``guard.interventions.registry.FACTORIES``. Policies then name it as a target's ``action``.
"""

from guard.interventions.base import GuardRequest, Intervention

__all__ = ["GuardRequest", "Intervention"]
