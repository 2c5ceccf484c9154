"""ECO's corruption functions: each touches only the selected positions, in the documented way."""

from __future__ import annotations

import pytest
import torch

from guard.errors import ConfigError
from guard.interventions.corruption import (
    CORRUPTIONS,
    flip_sign_top_k,
    get_corruption,
    rand_noise_first_n,
    validate_params,
    zero_out_top_k,
)

SEQ, HIDDEN = 7, 64


@pytest.fixture
def embeds() -> torch.Tensor:
    return torch.randn((SEQ, HIDDEN), generator=torch.Generator().manual_seed(1)) * 0.1


@pytest.fixture
def mask() -> torch.Tensor:
    m = torch.zeros(SEQ, dtype=torch.bool)
    m[[2, 3, 5]] = True
    return m


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_has_the_three_functions_with_their_parameters():
    assert set(CORRUPTIONS) == {"rand_noise_first_n", "zero_out_top_k", "flip_sign_top_k"}
    assert CORRUPTIONS["rand_noise_first_n"].uses_sigma and CORRUPTIONS["rand_noise_first_n"].random
    assert CORRUPTIONS["zero_out_top_k"].needs_k and not CORRUPTIONS["zero_out_top_k"].random
    assert CORRUPTIONS["flip_sign_top_k"].needs_k and not CORRUPTIONS["flip_sign_top_k"].uses_sigma


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_only_selected_rows_change_and_input_is_untouched(name, embeds, mask):
    before = embeds.clone()
    out = get_corruption(name)(embeds, mask, sigma=0.5, k=8, generator=_gen(0))
    assert torch.equal(embeds, before), "the input tensor must not be modified"
    assert out.shape == embeds.shape and out.dtype == embeds.dtype
    assert torch.equal(out[~mask], embeds[~mask])
    changed = (out != embeds).any(dim=1)
    assert changed[mask].all()


def test_rand_noise_first_n_noises_only_the_first_k_dims(embeds, mask):
    out = rand_noise_first_n(embeds, mask, sigma=0.5, k=10, generator=_gen(3))
    delta = out - embeds
    assert torch.equal(delta[:, 10:], torch.zeros_like(delta[:, 10:]))
    assert (delta[mask][:, :10] != 0).all()


def test_rand_noise_first_n_k_unset_means_every_dimension(embeds, mask):
    out = rand_noise_first_n(embeds, mask, sigma=0.5, k=None, generator=_gen(3))
    assert ((out - embeds)[mask] != 0).all()


def test_rand_noise_has_the_requested_standard_deviation():
    big = torch.zeros((400, 256))
    out = rand_noise_first_n(big, torch.ones(400, dtype=torch.bool), sigma=0.7, generator=_gen(0))
    assert abs(out.std().item() - 0.7) < 0.01
    assert abs(out.mean().item()) < 0.01


def test_rand_noise_is_reproducible_per_seed(embeds, mask):
    a = rand_noise_first_n(embeds, mask, sigma=0.5, generator=_gen(42))
    b = rand_noise_first_n(embeds, mask, sigma=0.5, generator=_gen(42))
    c = rand_noise_first_n(embeds, mask, sigma=0.5, generator=_gen(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_rand_noise_sigma_zero_is_identity(embeds, mask):
    assert torch.equal(rand_noise_first_n(embeds, mask, sigma=0.0, generator=_gen(0)), embeds)


def test_zero_out_top_k_zeroes_exactly_the_largest_magnitudes(embeds, mask):
    k = 5
    out = zero_out_top_k(embeds, mask, k=k)
    for row in mask.nonzero().flatten().tolist():
        largest = set(embeds[row].abs().argsort(descending=True)[:k].tolist())
        zeroed = set((out[row] == 0).nonzero().flatten().tolist())
        assert zeroed == largest
        rest = [d for d in range(HIDDEN) if d not in largest]
        assert torch.equal(out[row, rest], embeds[row, rest])


def test_flip_sign_top_k_negates_the_largest_magnitudes_and_is_an_involution(embeds, mask):
    k = 6
    out = flip_sign_top_k(embeds, mask, k=k)
    for row in mask.nonzero().flatten().tolist():
        largest = embeds[row].abs().argsort(descending=True)[:k]
        assert torch.equal(out[row, largest], -embeds[row, largest])
        assert torch.equal(out[row].abs(), embeds[row].abs())
        assert int((out[row] != embeds[row]).sum()) == k
    assert torch.equal(flip_sign_top_k(out, mask, k=k), embeds)


def test_k_larger_than_hidden_is_clamped(embeds, mask):
    out = zero_out_top_k(embeds, mask, k=HIDDEN * 2)
    assert torch.equal(out[mask], torch.zeros_like(out[mask]))


def test_empty_mask_changes_nothing(embeds):
    none = torch.zeros(SEQ, dtype=torch.bool)
    for name in CORRUPTIONS:
        assert torch.equal(get_corruption(name)(embeds, none, sigma=1.0, k=4, generator=_gen(0)), embeds)


def test_bad_shapes_are_refused(embeds):
    with pytest.raises(ValueError, match="mask"):
        zero_out_top_k(embeds, torch.ones(SEQ + 1, dtype=torch.bool), k=2)
    with pytest.raises(ValueError, match="seq, hidden"):
        zero_out_top_k(embeds.unsqueeze(0), torch.ones(SEQ, dtype=torch.bool), k=2)


@pytest.mark.parametrize("kwargs,param,match", [
    (dict(name="gaussian", sigma=1.0, k=None), "p.corruption", "unknown corruption"),
    (dict(name="rand_noise_first_n", sigma=-1.0, k=None), "p.sigma", ">= 0"),
    (dict(name="rand_noise_first_n", sigma="big", k=None), "p.sigma", ">= 0"),
    (dict(name="rand_noise_first_n", sigma=None, k=None), "p.sigma", "needs sigma"),
    (dict(name="zero_out_top_k", sigma=None, k=None), "p.k", "needs k"),
    (dict(name="flip_sign_top_k", sigma=None, k=0), "p.k", ">= 1"),
    (dict(name="flip_sign_top_k", sigma=None, k=2.5), "p.k", "integer"),
    (dict(name="flip_sign_top_k", sigma=None, k=1000), "p.k", "hidden size"),
])
def test_validate_params_names_the_field(kwargs, param, match):
    with pytest.raises(ConfigError, match=match) as info:
        validate_params(kwargs["name"], kwargs["sigma"], kwargs["k"], hidden=576, where="p")
    assert info.value.param == param


def test_validate_params_accepts_good_values():
    assert validate_params("rand_noise_first_n", 0.3, None, 576).name == "rand_noise_first_n"
    assert validate_params("zero_out_top_k", None, 16, 576).name == "zero_out_top_k"
