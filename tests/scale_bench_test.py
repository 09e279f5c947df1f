"""The PyTorch reference of the scale benchmark (experiments/benchmarks/torch_ref.py) is the same
network and train step as adiff's: parameter count, forward, DSM loss, gradients, one clipped
AdamW + EMA step. Skipped when torch is absent; the benchmark's no-torch path is tested without it.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adiff import losses, nets, training
from adiff import sde as sde_lib
from experiments.benchmarks import scale

D, DC, B = 5, 3, 16


def _random_params(params, seed, scale_=0.3):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef, [scale_ * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])


@pytest.fixture(scope="module")
def setup():
    torch = pytest.importorskip("torch")
    from experiments.benchmarks import torch_ref  # pylint: disable=import-outside-toplevel
    mlp = nets.ResidualMLP(features=32, num_blocks=2, time_dim=16)
    rng = np.random.RandomState(0)
    x = rng.randn(B, D).astype(np.float32)
    t = np.linspace(1e-3, 1.0, B).astype(np.float32)
    params = _random_params(mlp.init(jax.random.key(1), x, t)["params"], 2)
    tmodel = torch_ref.TorchResidualMLP(D, features=32, num_blocks=2, time_dim=16)
    torch_ref.load_flax_params(tmodel, params)
    return torch, torch_ref, mlp, params, tmodel, x, t


def test_param_count_and_forward_match(setup):
    torch, torch_ref, mlp, params, tmodel, x, t = setup
    n_flax = sum(np.size(v) for v in jax.tree.leaves(params))
    assert n_flax == torch_ref.num_params(tmodel)
    y_j = np.asarray(mlp.apply({"params": params}, x, t))
    with torch.no_grad():
        y_t = tmodel(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert np.abs(y_j).max() > 0.1  # random parameters: a non-trivial output
    np.testing.assert_allclose(y_t, y_j, rtol=1e-4, atol=1e-5)
    # With conditioning input, and a scalar t.
    cond = np.random.RandomState(5).randn(B, DC).astype(np.float32)
    p_c = _random_params(mlp.init(jax.random.key(3), x, t, cond)["params"], 4)
    tm_c = torch_ref.TorchResidualMLP(D, features=32, num_blocks=2, time_dim=16, cond_dim=DC)
    torch_ref.load_flax_params(tm_c, p_c)
    with torch.no_grad():
        y_t = tm_c(torch.from_numpy(x), torch.tensor(0.4), torch.from_numpy(cond)).numpy()
    np.testing.assert_allclose(y_t, np.asarray(mlp.apply({"params": p_c}, x, 0.4, cond)),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="shape mismatch"):
        torch_ref.load_flax_params(torch_ref.TorchResidualMLP(D + 1, features=32, num_blocks=2,
                                                              time_dim=16), params)


def test_train_step_matches_adiff(setup):
    """adiff's make_train_step (clip 1.0 + AdamW + EMA, as the benchmark) vs TorchTrainStep."""
    torch, torch_ref, mlp, params, _, x, t = setup
    vp = sde_lib.VPSDE()
    key = jax.random.key(9)

    def loss_fn(p, batch, k):
        out = losses.dsm_loss(lambda xt, tt: mlp.apply({"params": p}, xt, tt), vp, batch, k, t=t)
        return out.loss, {}

    # The noise adiff's step draws at step 0: fold_in(key, 0), split, perturb's normal.
    key0 = jax.random.fold_in(key, 0)
    _, key_z = jax.random.split(key0)
    _, z = vp.perturb(key_z, jnp.asarray(x), jnp.asarray(t))
    z = np.asarray(z)

    tx = scale._optimizer()  # pylint: disable=protected-access
    state = training.create_train_state(params, tx)
    step = training.make_train_step(loss_fn, tx, ema_decay=0.9)
    state, metrics = step(state, jnp.asarray(x), key)
    grads = jax.grad(lambda p: loss_fn(p, x, key0)[0])(params)
    norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))))
    np.testing.assert_allclose(norm, float(metrics["grad_norm"]), rtol=1e-4)
    grads = jax.tree.map(lambda g: g / max(norm, 1.0), grads)  # torch clips .grad in place

    tmodel = torch_ref.TorchResidualMLP(D, features=32, num_blocks=2, time_dim=16)
    torch_ref.load_flax_params(tmodel, params)
    tstep = torch_ref.TorchTrainStep(tmodel, ema_decay=0.9)
    x_t, t_t, z_t = (torch.from_numpy(a.copy()) for a in (x, t, z))
    loss = tstep.apply(x_t, t_t, z_t)
    np.testing.assert_allclose(float(loss), float(metrics["loss"]), rtol=1e-5)
    assert float(metrics["grad_norm"]) > 1.0  # the clipping is exercised

    g_ref = torch_ref.TorchResidualMLP(D, features=32, num_blocks=2, time_dim=16)
    torch_ref.load_flax_params(g_ref, grads)  # flax gradient tree, same layout as the params
    for p_j, p_t in zip(g_ref.parameters(), tmodel.parameters()):
        assert p_t.grad is not None
        np.testing.assert_allclose(p_t.grad.numpy(), p_j.detach().numpy(), rtol=2e-3, atol=1e-6)

    for tree, torch_tensors in ((state.params, list(tmodel.parameters())),
                                (state.ema_params, tstep.ema)):
        ref = torch_ref.TorchResidualMLP(D, features=32, num_blocks=2, time_dim=16)
        torch_ref.load_flax_params(ref, tree)
        for p_j, p_t in zip(ref.parameters(), torch_tensors):
            np.testing.assert_allclose(p_t.detach().numpy(), p_j.detach().numpy(), rtol=1e-4,
                                       atol=1e-6)
    moved = max(float(np.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(state.params), jax.tree.leaves(params)))
    assert moved > 1e-4  # the step changed the parameters (so the comparison above is not vacuous)


def test_benchmark_without_torch(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(scale, "_torch_available", lambda: False)
    out = tmp_path / "scale.json"
    scale.main(["--sizes=", "--devices=", f"--out={out}"])
    report = json.loads(out.read_text())
    assert "torch is not installed" in report["torch"]["skipped"]
    assert "torch is not installed" in capsys.readouterr().out
    assert report["memory"] == [] and report["throughput"] == []
