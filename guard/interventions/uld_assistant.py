"""The ULD assistant as the guard decodes with it: the served model's first ``K`` layers plus a
trained LoRA adapter, merged.

Ji et al. (NeurIPS 2024) build the assistant from the *target* model itself: its input embeddings,
its first ``K`` transformer layers, its final norm and its LM head, so the two models' logits can
be subtracted token for token. ``guard-train uld`` trains the adapter (``guard.train.uld_assistant``
attaches and saves it); this module only reads what training wrote:

* ``load_base_assistant(model_dir, k)``: the frozen first-``k``-layers model, read from the model
  folder's safetensors (only the tensors it needs);
* ``load_assistant``: that model with the adapter (PEFT format: ``adapter_config.json`` +
  ``adapter_model.safetensors``) folded in. Adapters are read with safetensors only: loading never
  executes code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from guard.errors import ConfigError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def base_layer_count(model_dir: Path | str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(model_dir)).num_hidden_layers)


def truncated_config(config: Any, k: int) -> Any:
    """A copy of ``config`` with ``k`` layers (per-layer lists such as ``layer_types`` cut too)."""
    import copy

    n = int(config.num_hidden_layers)
    if not 1 <= k <= n:
        raise ConfigError(f"the assistant needs between 1 and {n} layers (the served model has {n}), got {k}", param="layers")
    cfg = copy.deepcopy(config)
    for key, value in list(vars(cfg).items()):
        if isinstance(value, (list, tuple)) and len(value) == n and key not in ("architectures",):
            setattr(cfg, key, type(value)(value[:k]))
    cfg.num_hidden_layers = k
    cfg.use_cache = True
    return cfg


def _safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no .safetensors files in {model_dir}: the ULD assistant is built from the served model's "
                          "weights, so it needs a local transformers folder of that model", param="model")
    return files


def load_base_assistant(model_dir: Path | str, k: int) -> torch.nn.Module:
    """The served model cut to its first ``k`` layers (embeddings, layers, final norm, LM head), fp32, frozen.

    Only the tensors of the kept layers are read (transformers skips the others in the safetensors)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    model_dir = Path(model_dir)
    _safetensors_files(model_dir)
    config = truncated_config(AutoConfig.from_pretrained(str(model_dir)), k)
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the deeper layers are "unexpected" keys: that is the point
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(model_dir), config=config, dtype=torch.float32,
                                                           output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [m for m in info.get("missing_keys", []) if not (tied and m == "lm_head.weight")]
    if missing:
        raise ConfigError(f"cannot build the ULD assistant from {model_dir}: {len(missing)} tensor(s) not found in its "
                          f"safetensors (e.g. {sorted(missing)[0]}); is it a decoder-only transformers model?", param="model")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_assistant(model_dir: Path | str, adapter_dir: Path | str, k: int, *, merge: bool = True,
                   param: str | None = None) -> torch.nn.Module:
    """The trained assistant: the first ``k`` layers of ``model_dir`` plus the adapter in ``adapter_dir``.

    With ``merge`` the LoRA weights are folded into the linear layers (no extra cost per token).
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    weights, cfg_path = adapter_dir / ADAPTER_WEIGHTS, adapter_dir / ADAPTER_CONFIG
    if not weights.exists() or not cfg_path.exists():
        raise ConfigError(f"the ULD artifact's adapter folder {adapter_dir} lacks {ADAPTER_WEIGHTS} or {ADAPTER_CONFIG}; "
                          "rerun `guard-train uld`", param=param)
    raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    known = set(LoraConfig.__dataclass_fields__)
    config = LoraConfig(**{key: value for key, value in raw.items() if key in known})
    config.inference_mode = True
    model = get_peft_model(load_base_assistant(model_dir, k), config)
    state = load_file(str(weights))
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ConfigError(f"the adapter in {adapter_dir} does not fit a {k}-layer assistant of {model_dir} "
                          f"(unexpected tensors, e.g. {unexpected[0]})", param=param)
    lora_missing = [m for m in (getattr(result, "missing_keys", []) or []) if "lora_" in m]
    if lora_missing:
        raise ConfigError(f"the adapter in {adapter_dir} lacks LoRA tensors for this assistant (e.g. {lora_missing[0]}); "
                          "was it trained with another number of layers?", param=param)
    if merge:
        model = model.merge_and_unload()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
