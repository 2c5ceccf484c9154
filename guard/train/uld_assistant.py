"""Training the ULD assistant: a shallow copy of the served model with LoRA on its linear layers.

Ji et al. (NeurIPS 2024) build the assistant from the *target* model itself: its input embeddings,
its first ``K`` transformer layers, its final norm and its LM head. The vocabulary (and tokenizer)
is therefore the target's, so the two models' logits can be subtracted token for token. Only LoRA
adapters on the linear layers are trained; everything taken from the target stays frozen.

* ``default_layers(n)``: ``K`` for a model with ``n`` layers: 8 for deep models (the paper's 8 of
  Llama-2-7B's 32), about a seventh of the depth for shallow ones (4 of SmolLM2-135M's 30).
* ``attach_lora`` / ``save_adapter``: the trainable assistant and its adapter in PEFT format
  (``adapter_config.json`` + ``adapter_model.safetensors``).

Loading (the frozen base assistant, the merged trained one) is the serving side's:
``guard.interventions.uld_assistant``, re-exported here for the trainer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from guard.interventions.uld_assistant import (  # noqa: F401 - the trainer's imports
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    base_layer_count,
    load_assistant,
    load_base_assistant,
    truncated_config,
)

log = logging.getLogger(__name__)

DEFAULT_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}  # the paper's LoRA settings


def default_layers(n_layers: int) -> int:
    """The assistant's depth for a target with ``n_layers`` layers: the paper's 8 for deep models
    (>= 32 layers), else about a seventh of the depth (4 of SmolLM2-135M's 30), at least 2 (1 for a
    1-layer model). Shallower is cheaper per token: the assistant runs beside the target."""
    if n_layers >= 32:
        return 8
    return max(min(2, n_layers), n_layers // 7)


def lora_config(r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05, *, random_init: bool = False) -> Any:
    """LoRA on every linear layer of the transformer blocks (PEFT's ``all-linear``: not the LM head).

    ``random_init=True`` initialises both LoRA matrices randomly (PEFT's ``init_lora_weights=False``),
    so an untrained adapter already changes the model: for deterministic tests only.
    """
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules="all-linear", init_lora_weights=False if random_init else True)


def attach_lora(model: torch.nn.Module, config: Any, seed: int | None = None) -> Any:
    from peft import get_peft_model

    if seed is not None:
        torch.manual_seed(seed)
    return get_peft_model(model, config)


def save_adapter(peft_model: Any, directory: Path) -> None:
    """The adapter in PEFT format with safetensors weights."""
    peft_model.save_pretrained(str(directory), safe_serialization=True)
    if not (directory / ADAPTER_WEIGHTS).exists():
        raise RuntimeError(f"PEFT did not write {ADAPTER_WEIGHTS} in {directory}")


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_names(model: torch.nn.Module) -> Sequence[str]:
    return [n for n, _ in model.named_parameters()]
