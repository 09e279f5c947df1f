"""Tests of adiff.nets: shapes, conditioning, dropout, zero-initialised outputs, validation.

Parameters are initialised once per network (module-scoped fixture) with a jitted `init` and an
"rbg" key: threefry initialisers of a U-Net take ~10x longer to compile on CPU.
"""
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adiff.nets import (GaussianFourierProjection, ResidualMLP, TemporalNet, TimeEmbedding, UNet,
                        sinusoidal_embedding)

B = 2
NETS = {
    "mlp": (lambda **kw: ResidualMLP(features=16, num_blocks=2, time_dim=8, **kw), (B, 3),
            (B, 2)),
    "temporal": (lambda **kw: TemporalNet(channels=8, num_blocks=2, dilations=(1, 2),
                                          num_heads=2, time_dim=8, **kw), (B, 10, 3), (B, 10, 1)),
    "unet": (lambda **kw: UNet(base_channels=8, channel_mults=(1, 2), groups=4, time_dim=8,
                               attention_resolutions=(4,), **kw), (B, 8, 8, 1), (B, 8, 8, 2)),
}


def _inputs(x_shape, c_shape, seed=0):
    kx, kc = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(kx, x_shape), jnp.array([0.1, 0.8]),
            jax.random.normal(kc, c_shape))


@pytest.fixture(scope="module", params=list(NETS))
def built(request):
    make, x_shape, c_shape = NETS[request.param]
    net = make()
    x, t, c = _inputs(x_shape, c_shape)
    params = jax.jit(net.init)(jax.random.key(0, impl="rbg"), x, t, c)
    apply = jax.jit(net.apply)
    return request.param, net, params, apply, (x, t, c)


def _randomise_output(params, key):
    """Gives the zero-initialised output layer random weights."""
    p = flax.core.unfreeze(params)
    k = p["params"]["output"]["kernel"]
    p["params"]["output"]["kernel"] = jax.random.normal(key, k.shape, k.dtype)
    return p


def test_sinusoidal_embedding_values():
    t = jnp.array([0.0, 0.25, 1.0])
    e = sinusoidal_embedding(t, 4, max_period=100.0, scale=10.0)
    st = 10.0 * np.asarray(t)
    want = np.stack([np.sin(st), np.sin(st / 10.0), np.cos(st), np.cos(st / 10.0)], axis=-1)
    np.testing.assert_allclose(e, want, atol=1e-6)
    odd = sinusoidal_embedding(t, 5)
    assert odd.shape == (3, 5) and np.all(odd[:, -1] == 0)
    with pytest.raises(ValueError, match="t must have shape"):
        sinusoidal_embedding(jnp.zeros((3, 1)), 4)
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_embedding(t, 0)


def test_fourier_and_time_embeddings():
    t = jnp.array([0.0, 0.5, 1.0])
    gfp = GaussianFourierProjection(dim=8, scale=4.0)
    p = gfp.init(jax.random.key(0), t)
    e = gfp.apply(p, t)
    assert e.shape == (3, 8) and np.all(np.abs(e) <= 1.0)
    np.testing.assert_allclose(e[0], np.r_[np.zeros(4), np.ones(4)], atol=1e-6)
    w = p["params"]["W"]
    np.testing.assert_allclose(e[1, :4], np.sin(np.pi * np.asarray(w)), atol=1e-5)
    g = jax.grad(lambda q: jnp.sum(gfp.apply(q, t)))(p)
    assert np.all(g["params"]["W"] == 0)  # frequencies are fixed
    te = TimeEmbedding(dim=6)
    pe = te.init(jax.random.key(1), t)
    out = te.apply(pe, t)
    assert out.shape == (3, 6)
    assert not np.allclose(out[0], out[1])


def test_shapes_dtype_and_zero_init(built):
    name, net, params, apply, (x, t, c) = built
    y = apply(params, x, t, c)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert np.all(np.asarray(y) == 0.0)  # zero-initialised output layer
    assert np.all(np.asarray(apply(params, x, t, c)) == 0.0)


def test_output_depends_on_x_t_and_cond(built):
    name, net, params, apply, (x, t, c) = built
    p = _randomise_output(params, jax.random.key(3))
    y = apply(p, x, t, c)
    assert np.all(np.isfinite(y)) and float(jnp.abs(y).max()) > 0
    assert not np.allclose(apply(p, x, t[::-1], c), y)
    assert not np.allclose(apply(p, x, t, c + 1.0), y)
    assert not np.allclose(apply(p, x + 1.0, t, c), y)
    # A scalar t is broadcast to the batch.
    np.testing.assert_allclose(apply(p, x, jnp.full((B,), 0.3), c), apply(p, x, 0.3, c),
                               rtol=1e-6, atol=1e-6)
    # Samples do not interact (no batch statistics).
    np.testing.assert_allclose(apply(p, x[:1], t[:1], c[:1])[0], y[0], rtol=1e-5, atol=1e-5)


def test_dropout_needs_rng_and_is_random_only_in_training(built):
    name, net, params, apply, (x, t, c) = built
    drop = NETS[name][0](dropout=0.5)
    p = _randomise_output(params, jax.random.key(4))
    fn = jax.jit(lambda p, key, train: drop.apply(p, x, t, c, train=train,
                                                  rngs={"dropout": key}),
                 static_argnums=2)
    eval_a, eval_b = fn(p, jax.random.key(5), False), fn(p, jax.random.key(6), False)
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_allclose(eval_a, apply(p, x, t, c), rtol=1e-5, atol=1e-6)
    tr_a, tr_b = fn(p, jax.random.key(5), True), fn(p, jax.random.key(6), True)
    assert not np.allclose(tr_a, tr_b)
    np.testing.assert_array_equal(tr_a, fn(p, jax.random.key(5), True))
    with pytest.raises(Exception, match="dropout"):
        drop.apply(p, x, t, c, train=True)


def _shape_of(net, x_shape, c_shape=None):
    """Output shape via abstract evaluation (no compilation)."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    t = jax.ShapeDtypeStruct((x_shape[0],), jnp.float32)
    c = None if c_shape is None else jax.ShapeDtypeStruct(c_shape, jnp.float32)
    params = jax.eval_shape(net.init, jax.random.key(0), x, t, c)
    return jax.eval_shape(net.apply, params, x, t, c).shape


def test_out_channels_and_no_cond():
    assert _shape_of(ResidualMLP(out_dim=7), (4, 3)) == (4, 7)
    assert _shape_of(ResidualMLP(), (4, 3), (4, 5)) == (4, 3)
    assert _shape_of(TemporalNet(out_channels=2), (4, 16, 3)) == (4, 16, 2)
    assert _shape_of(TemporalNet(attention=False, dilations=(1,)), (4, 16, 3),
                     (4, 16, 2)) == (4, 16, 3)
    assert _shape_of(UNet(out_channels=2), (1, 16, 16, 3)) == (1, 16, 16, 2)
    assert _shape_of(UNet(channel_mults=(1, 2, 2, 2), num_res_blocks=2), (1, 24, 32, 1),
                     (1, 24, 32, 1)) == (1, 24, 32, 1)


def test_unet_divisibility_error():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(len\(channel_mults\)-1\) = 4"):
        _shape_of(UNet(channel_mults=(1, 2, 2)), (1, 12, 10, 1))
    with pytest.raises(ValueError, match="divisible by groups"):
        _shape_of(UNet(base_channels=12, groups=8), (1, 8, 8, 1))


@pytest.mark.parametrize("name", list(NETS))
def test_input_validation(name):
    make, x_shape, c_shape = NETS[name]
    net = make()
    with pytest.raises(ValueError, match="cond must have shape"):
        _shape_of(net, x_shape, (x_shape[0] + 1,) + c_shape[1:])
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        x = jnp.zeros(x_shape)
        net.init(jax.random.key(0), x, jnp.zeros((x_shape[0] + 1,)))
    with pytest.raises(ValueError, match="x must have shape"):
        _shape_of(net, x_shape + (1,))
    with pytest.raises(TypeError, match="floating"):
        net.init(jax.random.key(0), jnp.zeros(x_shape, jnp.int32), jnp.zeros((x_shape[0],)))


def test_temporal_heads_must_divide_channels():
    with pytest.raises(ValueError, match="num_heads must divide channels"):
        _shape_of(TemporalNet(channels=10, num_heads=4), (1, 8, 2))


def test_default_sizes_are_small():
    """The defaults stay CPU-friendly (parameter counts, abstractly evaluated)."""
    def count(net, x_shape):
        x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
        t = jax.ShapeDtypeStruct((x_shape[0],), jnp.float32)
        p = jax.eval_shape(net.init, jax.random.key(0), x, t)
        return sum(math.prod(a.shape) for a in jax.tree.leaves(p))

    assert count(ResidualMLP(), (1, 10)) < 1_000_000
    assert count(TemporalNet(), (1, 64, 5)) < 1_000_000
    assert count(UNet(), (1, 32, 32, 1)) < 5_000_000
