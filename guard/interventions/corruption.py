"""Embedding corruption functions for ECO (Liu et al., NeurIPS 2024), one function each.

Every function takes the prompt's input embeddings ``[seq, hidden]`` (fp32), a boolean mask
``[seq]`` of the positions to corrupt, and returns a **new** tensor (the input is never modified):

* ``rand_noise_first_n``: add ``N(0, sigma^2)`` noise to the first ``k`` dimensions (``k`` unset:
  all dimensions) of each selected position. The noise comes from the ``generator`` passed in,
  drawn on the CPU in fp32, so a seed gives the same corrupted prompt on every engine.
* ``zero_out_top_k``: set the ``k`` largest-magnitude dimensions of each selected position to 0.
* ``flip_sign_top_k``: negate the ``k`` largest-magnitude dimensions of each selected position.

``CORRUPTIONS`` maps a name to a ``Corruption`` (function + which parameters it uses);
``validate_params`` checks a policy's ``corruption``/``sigma``/``k`` and names the bad field;
``corrupt_positions`` corrupts single rows of an *answer* with one seeded draw per position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from guard.errors import ConfigError

CorruptionFn = Callable[..., torch.Tensor]


def _check(embeds: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    if embeds.dim() != 2:
        raise ValueError(f"embeds must be [seq, hidden], got shape {tuple(embeds.shape)}")
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.shape != embeds.shape[:1]:
        raise ValueError(f"mask must be [seq] = [{embeds.shape[0]}], got shape {tuple(mask.shape)}")
    return np.flatnonzero(mask.numpy())


# The arithmetic runs in numpy on a float32 copy: these tensors are small and torch's intra-op
# parallel kernels stall for a scheduler tick on a loaded CPU (measured here: 20-180 ms per op
# instead of ~50 us); numpy's element-wise ops and fancy indexing are single-threaded.
def _copy(embeds: torch.Tensor) -> np.ndarray:
    return embeds.detach().to(torch.float32).cpu().numpy().copy()


def _back(out: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    tensor = torch.from_numpy(out)
    return tensor if like.dtype == torch.float32 else tensor.to(like.dtype)


def _dims(k: int | None, hidden: int) -> int:
    return hidden if k is None else max(0, min(int(k), hidden))


def rand_noise_first_n(embeds: torch.Tensor, mask: torch.Tensor, *, sigma: float, k: int | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Add N(0, sigma^2) to dimensions ``[:k]`` of the masked positions."""
    rows = _check(embeds, mask)
    out = _copy(embeds)
    dims = _dims(k, embeds.shape[1])
    if rows.size and dims and sigma:
        noise = torch.randn((rows.size, dims), generator=generator, dtype=torch.float32).numpy()
        out[rows, :dims] += noise * np.float32(sigma)
    return _back(out, embeds)


def _top_k_index(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest |values| of each row (as a set; order unspecified)."""
    if k >= values.shape[1]:
        return np.broadcast_to(np.arange(values.shape[1]), values.shape)
    return np.argpartition(-np.abs(values), k - 1, axis=1)[:, :k]


def zero_out_top_k(embeds: torch.Tensor, mask: torch.Tensor, *, k: int, sigma: float | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero the ``k`` largest-|x| dimensions of the masked positions."""
    rows = _check(embeds, mask)
    out = _copy(embeds)
    dims = _dims(k, embeds.shape[1])
    if rows.size and dims:
        selected = out[rows]
        np.put_along_axis(selected, _top_k_index(selected, dims), np.float32(0.0), axis=1)
        out[rows] = selected
    return _back(out, embeds)


def flip_sign_top_k(embeds: torch.Tensor, mask: torch.Tensor, *, k: int, sigma: float | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Negate the ``k`` largest-|x| dimensions of the masked positions."""
    rows = _check(embeds, mask)
    out = _copy(embeds)
    dims = _dims(k, embeds.shape[1])
    if rows.size and dims:
        selected = out[rows]
        index = _top_k_index(selected, dims)
        np.put_along_axis(selected, index, -np.take_along_axis(selected, index, axis=1), axis=1)
        out[rows] = selected
    return _back(out, embeds)


@dataclass(frozen=True)
class Corruption:
    name: str
    fn: CorruptionFn
    uses_sigma: bool  # the strength parameter (noise standard deviation)
    needs_k: bool  # k is required (top-k functions); for first-n, k unset means all dimensions
    random: bool  # draws from the generator (so a seed matters)
    description: str

    def __call__(self, embeds: torch.Tensor, mask: torch.Tensor, *, sigma: float | None, k: int | None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if self.uses_sigma:
            return self.fn(embeds, mask, sigma=float(sigma or 0.0), k=k, generator=generator)
        return self.fn(embeds, mask, k=int(k or 0))


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c for c in (
        Corruption("rand_noise_first_n", rand_noise_first_n, uses_sigma=True, needs_k=False, random=True,
                   description="add N(0, sigma^2) noise to the first k dimensions (all if k is unset)"),
        Corruption("zero_out_top_k", zero_out_top_k, uses_sigma=False, needs_k=True, random=False,
                   description="zero the k largest-magnitude dimensions"),
        Corruption("flip_sign_top_k", flip_sign_top_k, uses_sigma=False, needs_k=True, random=False,
                   description="flip the sign of the k largest-magnitude dimensions"),
    )
}


def get_corruption(name: str, param: str | None = None) -> Corruption:
    try:
        return CORRUPTIONS[name]
    except KeyError:
        raise ConfigError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}", param=param) from None


ANSWER_SEED_OFFSET = 7919  # answer position p draws from seed + 7919 + p (the prompt draws from seed)


def corrupt_positions(embeds: torch.Tensor, positions: Sequence[int], corruption: Corruption, *,
                      sigma: float | None, k: int | None, seed: int) -> torch.Tensor:
    """Corrupt rows ``positions`` of answer embeddings ``[len, hidden]``, each with its own generator
    seeded ``seed + ANSWER_SEED_OFFSET + position``: a given answer position is corrupted identically
    however often the answer is re-read (ECO's ``answer_names`` re-submits the whole answer so far
    each time a new mention appears), and identically in teacher-forced scoring."""
    out = embeds.clone()
    one = torch.ones(1, dtype=torch.bool)
    for position in sorted({int(p) for p in positions}):
        generator = torch.Generator().manual_seed(int(seed) + ANSWER_SEED_OFFSET + position)
        out[position:position + 1] = corruption(embeds[position:position + 1], one, sigma=sigma, k=k,
                                                generator=generator)
    return out


def validate_params(name: str, sigma: float | None, k: int | None, hidden: int | None = None,
                    where: str = "params") -> Corruption:
    """Check a corruption's parameters; errors name ``<where>.corruption|sigma|k``."""
    corruption = get_corruption(name, f"{where}.corruption")
    if sigma is not None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0 or sigma != sigma:
            raise ConfigError(f"sigma must be a number >= 0, got {sigma!r}", param=f"{where}.sigma")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {k!r}", param=f"{where}.k")
        if hidden is not None and k > hidden:
            raise ConfigError(f"k={k} exceeds the model's hidden size {hidden}", param=f"{where}.k")
    if corruption.uses_sigma and sigma is None:
        raise ConfigError(f"corruption {name!r} needs sigma (the noise standard deviation); set it, or point "
                          f"params.artifact at the output of `guard-train eco`", param=f"{where}.sigma")
    if corruption.needs_k and k is None:
        raise ConfigError(f"corruption {name!r} needs k (how many dimensions); set it, or point params.artifact "
                          f"at the output of `guard-train eco`", param=f"{where}.k")
    return corruption
