"""Feature sets of the monitor's comparison: the registry (did-you-mean), and the SAE baseline —
reproducible on the same cube, and on a pretrained SAELens SAE equal to that SAE's own encode."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import yaml
from helpers import REPO
from synthetic import synthetic_cube, synthetic_directions

from emtrait.config import PretrainedSae, from_dict
from emtrait.cube.read import checkpoints
from emtrait.errors import ConfigError, DataError
from emtrait.monitor.features import (
    Context,
    compute,
    latent_drift,
    sae_features,
    select_latents,
)
from emtrait.registry import FEATURE_SETS

HIDDEN, LAYER = 16, 2


@pytest.fixture(scope="module")
def cube():
    ds = synthetic_cube(directions=synthetic_directions(HIDDEN, layer=LAYER), hidden=HIDDEN)
    cp = checkpoints(ds)
    train = np.flatnonzero(cp.rows.role.eq("calibration").values)
    return ds, cp, train


def raw_config(**monitor) -> dict:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["monitor"] = {**raw.get("monitor", {}), **monitor}
    return raw


# ---------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name, hint", [("pca8", "Did you mean 'pca7'?"),
                                        ("semantc7", "Did you mean 'semantic7'?"),
                                        ("sea", "Did you mean 'sae'?")])
def test_unknown_baseline_fails_at_config_load_with_did_you_mean(name, hint):
    with pytest.raises(ConfigError) as err:
        from_dict(raw_config(baselines=["pc1", name]))
    assert "monitor.baselines[1]" in str(err.value) and hint in str(err.value)
    assert "pc1, loss, pca7, sae" in str(err.value)


def test_compute_resolves_registry_names_and_trait_sets(cube):
    ds, cp, train = cube
    ctx = Context(ds, cp)
    for name in FEATURE_SETS:
        if name != "sae":  # the SAE has tests of its own below
            assert compute(name, ctx, train, "alignment7", cp.trait_sets).shape[0] == len(cp.rows)
    assert compute("semantic7", ctx, train, "alignment7", cp.trait_sets).shape == (
        len(cp.rows), 7)
    with pytest.raises(ConfigError, match="Did you mean 'random7'"):
        compute("randm7", ctx, train, "alignment7", cp.trait_sets)


# ---------------------------------------------------------------------- SAE: reproducibility


@pytest.mark.slow  # the first torch optimizer of a process imports torch._dynamo (2-5 s)
def test_sae_baseline_twice_on_the_same_cube_is_identical(cube):
    """The same input gives bit-identical features, whatever the global RNGs and thread count."""
    import torch

    ds, cp, train = cube
    ctx = dict(sae_latents=16, sae_steps=60, seed=0)
    first = sae_features(Context(ds, cp, **ctx), train)
    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    np.random.seed(99)
    torch.set_num_threads(2)
    try:
        second = sae_features(Context(ds, cp, **ctx), train)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(first, second)
    assert torch.get_num_threads() == threads  # the SAE's one-thread scope restored it
    other_seed = sae_features(Context(ds, cp, **{**ctx, "seed": 1}), train)
    assert not np.array_equal(first, other_seed)


def test_dead_latents_become_zero_columns_not_noise():
    rng = np.random.default_rng(0)
    drift = rng.normal(size=(30, 10))
    drift[:, 3] = 1e-13 * rng.normal(size=30)  # float noise of a latent that never fires
    drift[:, 5:] = 0.0
    out = select_latents(drift, np.arange(20), k=7)
    assert out.shape == (30, 7)
    live = [c for c in range(7) if np.any(out[:, c])]
    assert len(live) == 4  # latents 0, 1, 2, 4; latent 3 and the silent ones are zeros
    np.testing.assert_array_equal(np.sort(out[:, live].var(axis=0)),
                                  np.sort(drift[:, [0, 1, 2, 4]].var(axis=0)))


# --------------------------------------------------------------------- SAE: pretrained SAELens


def save_sae(folder, d_in: int = HIDDEN, hook: str = f"blocks.{LAYER}.hook_resid_post"):
    """A small SAELens StandardSAE with seeded random weights, saved in SAELens format."""
    import torch
    from sae_lens import SAE, StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_in, d_sae=24)
    cfg.metadata.hook_name = hook
    sae = StandardSAE(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    sae.save_model(folder)
    return SAE.load_from_disk(folder, device="cpu")


@pytest.mark.slow  # importing SAELens takes 5-20 s
def test_pretrained_sae_features_equal_the_saes_own_encode(cube, tmp_path):
    import torch

    ds, cp, train = cube
    sae = save_sae(tmp_path / "sae")
    raw = raw_config()
    raw["models"] = {"toy": {"source": "x", "candidate_layers": [LAYER],
                             "sae": {"path": str(tmp_path / "sae")}}}
    ctx = Context.from_config(ds, cp, from_dict(raw))
    assert ctx.pretrained_sae == PretrainedSae(path=str(tmp_path / "sae"))
    ours = sae_features(ctx, train)

    # by hand with the SAE's own encode: prompt-mean latents per checkpoint minus step 0
    expected = np.empty((len(cp.index), 24))
    for r, (d, s, t) in enumerate(cp.index):
        a = ds["activation"][d, s].values  # (step, prompt, hidden), raw: the SAE's units
        with torch.no_grad():
            z = [sae.encode(torch.as_tensor(a[k], dtype=torch.float32)).double().numpy()
                 .mean(axis=0) for k in (t, 0)]
        expected[r] = z[0] - z[1]
    encode_only = latent_drift(ctx, lambda a: sae.encode(torch.as_tensor(
        a, dtype=torch.float32)).detach().double().numpy(), scale=False)
    np.testing.assert_allclose(ctx._pretrained_drift, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(ctx._pretrained_drift, encode_only)
    np.testing.assert_array_equal(ours, select_latents(expected, train))
    assert np.count_nonzero(ours.var(axis=0)) == 7

    # an SAE of another layer or another width is refused, naming the fix
    other = tmp_path / "other"
    save_sae(other, hook=f"blocks.{LAYER + 1}.hook_resid_pre")  # reads block LAYER's output: ok
    sae_features(Context(ds, cp, pretrained_sae=PretrainedSae(path=str(other))), train)
    save_sae(other, hook="blocks.5.hook_resid_post")
    with pytest.raises(DataError, match="reads decoder block 5.*measured at block 2"):
        sae_features(Context(ds, cp, pretrained_sae=PretrainedSae(path=str(other))), train)
    save_sae(other, d_in=HIDDEN + 1)
    with pytest.raises(DataError, match="17-dim activations; the model's are 16-dim"):
        sae_features(Context(ds, cp, pretrained_sae=PretrainedSae(path=str(other))), train)


def test_pretrained_sae_without_saelens_names_the_extra(cube, monkeypatch):
    ds, cp, train = cube
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # as if the extra were not installed
    ctx = Context(ds, cp, pretrained_sae=PretrainedSae(release="r", id="i"), model="toy")
    with pytest.raises(ConfigError, match=r"models\.toy\.sae .*pip install 'emtrait\[sae\]'"):
        sae_features(ctx, train)


@pytest.mark.parametrize("entry", [{}, {"release": "r"}, {"path": "p", "id": "i"}])
def test_pretrained_sae_entry_needs_one_source(entry):
    raw = raw_config()
    raw["models"]["smollm2"]["sae"] = entry
    with pytest.raises(ConfigError, match="give either 'release' and 'id'"):
        from_dict(raw)
