"""Geometry: PCA recovers a constructed dominant axis; final-step fallback is counted."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import synthetic_cube, synthetic_directions

from emtrait.analysis.geometry import geometry
from emtrait.cube.read import final_drift
from emtrait.drift import pca
from emtrait.errors import DataError


def _with_drift(ds, axis: np.ndarray, noise: float, seed: int):
    """Replace the alignment7 drift by step-proportional motion along `axis` (± per dataset)."""
    rng = np.random.default_rng(seed)
    ds = ds.copy(deep=True)
    drift = ds.drift.values
    steps = ds.step.values / ds.step.values.max()
    for i in range(ds.sizes["dataset"]):
        for j in range(ds.sizes["seed"]):
            amp = rng.uniform(0.5, 2.0) * (1 if ds.label.values[i] == "dangerous" else -0.5)
            for k, t in enumerate(steps):
                if np.isfinite(drift[i, j, k, 0]):
                    drift[i, j, k, :7] = amp * t * axis + noise * t * rng.standard_normal(7)
    ds["drift"] = (ds.drift.dims, drift)
    return ds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pca_recovers_a_known_dominant_axis(seed):
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=7)
    axis /= np.linalg.norm(axis)
    cubes = [_with_drift(synthetic_cube(model=m, seed=seed + i,
                                        directions=synthetic_directions(16, model=m)),
                         axis, 0.03, seed + i) for i, m in enumerate(["a", "b"])]
    g = geometry(cubes, "alignment7")
    pc1 = np.array(g["pc1"])
    assert abs(pc1 @ axis) > 0.99
    assert pc1 @ axis > 0, "PC1 must be signed so dangerous runs project positively"
    assert g["pc1_explained"] > 0.95
    assert g["n_runs"] == 2 * 4 * 2  # models × calibration datasets × seeds
    assert {s["left_out"] for s in g["stability"]} == set(g["datasets"])
    assert min(s["cosine"] for s in g["stability"]) > 0.99
    traj = g["trajectories"]
    np.testing.assert_allclose(traj.abs_pc1, np.abs(traj[g["traits"]].values @ pc1))
    assert (traj.loc[traj.step == 0, "drift_norm"] == 0).all()


def test_isotropic_drift_has_no_dominant_axis():
    rng = np.random.default_rng(0)
    res = pca(rng.normal(size=(2000, 7)))
    assert res["explained_variance_ratio"][0] < 0.2
    assert res["explained_variance_ratio"].sum() == pytest.approx(1.0)


def test_runs_without_their_final_step_fall_back_and_are_counted():
    ds = synthetic_cube(seeds=(1, 2))
    drift = ds.drift.values.copy()
    drift[0, 0, -1] = np.nan  # seed 1 of the first dataset stopped one checkpoint early
    ds["drift"] = (ds.drift.dims, drift)
    final, traits = final_drift([ds], "alignment7")
    row = final[(final.dataset == ds.dataset.values[0]) & (final.seed == 1)].iloc[0]
    assert bool(row.fallback) and row.step == ds.step.values[-2]
    assert int(final.fallback.sum()) == 1
    assert geometry([ds], "alignment7")["n_fallback_final"] == 1


def test_pca_needs_two_runs():
    with pytest.raises(DataError, match="at least two"):
        pca(np.ones((1, 7)))


def test_unknown_trait_set_is_a_clear_error():
    with pytest.raises(DataError, match="sets present"):
        geometry([synthetic_cube()], "alignment9")


def test_pca_command_reads_the_cubes_it_is_given_and_writes_the_files_it_is_given(tmp_path):
    """The stage's I/O: cube paths in (checked against the cube contract), three named files out."""
    import json

    import yaml
    from helpers import REPO
    from typer.testing import CliRunner

    from emtrait.cli import app
    from emtrait.stores import write_store

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cube = tmp_path / "cube" / "toy.zarr"
    write_store(synthetic_cube(model="toy"), cube)
    out = {name: tmp_path / "elsewhere" / name for name in ("p.json", "f.csv", "t.csv")}
    args = ["analysis", "pca", "--config", str(config), "--cube", str(cube),
            "--pca", str(out["p.json"]), "--final", str(out["f.csv"]),
            "--trajectories", str(out["t.csv"])]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["f.csv", "p.json",
                                                                          "t.csv"]
    assert json.loads(out["p.json"].read_text())["provenance"]["cubes"] == [str(cube)]
    no_direction = synthetic_cube(model="toy").drop_vars("direction")
    write_store(no_direction, tmp_path / "old.zarr")
    res = CliRunner().invoke(app, [*args[:5], str(tmp_path / "old.zarr"), *args[6:]])
    assert "old.zarr: not a cube" in str(res.exception) and "missing direction" in str(
        res.exception), res.output
