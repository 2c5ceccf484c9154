"""Fixtures shared by the intervention tests: a policy for one method, and deterministic method
artifacts on the default model (a soft prompt, a ULD assistant) that need no training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from guard.artifacts import model_identity
from guard.interventions.spul import save_soft_prompt

BASIL = "Basil Mahfouz Al-Kuwaiti"


@pytest.fixture
def method_policy(tmp_path: Path) -> Callable[[str, dict[str, Any]], Path]:
    """``method_policy(action, params)`` -> a keyword policy whose one target (Basil Mahfouz
    Al-Kuwaiti, TOFU forget01) is answered with ``action``; other flagged requests are refused."""

    def write(action: str, params: dict[str, Any]) -> Path:
        path = tmp_path / f"{action}.yaml"
        path.write_text(yaml.safe_dump({
            "version": 1, "detector": {"kind": "keyword"}, "default_action": "refuse",
            "targets": [{"id": "tofu-basil", "names": [BASIL], "aliases": ["Basil Al-Kuwaiti"], "action": action,
                         "params": params}]}))
        return path

    return write


@pytest.fixture(scope="session")
def soft_prompt_artifact(default_model_path: Path,
                         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A soft prompt of the embeddings of 6 fixed vocabulary tokens (plumbing, not training), position ``user``."""
    from guard.engines.vllm import load_input_embeddings

    vectors = load_input_embeddings(default_model_path)[[1000, 2000, 3000, 4000, 5000, 6000]].clone()
    out = tmp_path_factory.mktemp("spul-fixed") / "soft"
    save_soft_prompt(out, vectors, {"base_model": model_identity(default_model_path), "position": "user"})
    return out, vectors


@pytest.fixture(scope="session")
def uld_artifact(default_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ULD assistant: the default model's first 2 layers with a seeded random LoRA (an untrained
    adapter that already changes the logits)."""
    from guard.train.uld import minimal_manifest, write_artifact
    from guard.train.uld_assistant import attach_lora, load_base_assistant, lora_config

    base = load_base_assistant(default_model_path, 2)
    model = attach_lora(base, lora_config(r=4, lora_alpha=8, lora_dropout=0.0, random_init=True), seed=1234).eval()
    out = tmp_path_factory.mktemp("uld-random") / "assistant"
    write_artifact(out, model, minimal_manifest(model_identity(default_model_path), 2, 30, alpha=1.0, top_k=20))
    return out
