"""Reading one tensor of a model folder without loading the model: the input-embedding matrix."""

from __future__ import annotations

from pathlib import Path

import torch

from guard.errors import ConfigError

EMBED_KEYS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")


def load_input_embeddings(model_dir: Path) -> torch.Tensor:
    """The input-embedding matrix alone, read lazily from the model's safetensors files."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no .safetensors files in {model_dir}; the vllm engine needs a local copy of the served model", param="model")
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                if key.endswith(EMBED_KEYS):
                    return fh.get_tensor(key).float()
    raise ConfigError(f"no input-embedding tensor ({', '.join(EMBED_KEYS)}) found in {model_dir}", param="model")
