"""PyTorch reference of adiff's tabular score network and DSM train step (issue 10 benchmark).

A line-by-line port of `adiff.nets.ResidualMLP` (the flax module) and of the train step that
`adiff.training.make_train_step` builds around `adiff.losses.dsm_loss` with the VP SDE, used only
by `experiments/benchmarks/scale.py` to time the same work in both frameworks. Importing this
module needs torch (the bench extra pins torch==2.13.0); adiff itself never imports it.

Network (same as adiff/nets/mlp.py and adiff/nets/embeddings.py):
  temb = silu(Dense(silu(Dense(sinusoidal(1000 t, time_dim)))))        # TimeEmbedding, then silu
  h = Dense(features)([x, cond])
  num_blocks x: r = Dense(silu(LayerNorm(h))) + Dense(temb); r = Dense(silu(LayerNorm(r))); h += r
  out = Dense(out_dim)(silu(LayerNorm(h)))                              # zero-initialised
LayerNorm eps is 1e-6 (flax's default), sinusoids [sin, cos] with max_period 10,000.

Train step (same as make_train_step + dsm_loss defaults, parameterization "eps", reduce "mean"):
t ~ U(1e-5, 1), z ~ N(0, I), x_t = alpha_t x0 + sigma_t z with the VP SDE (beta 0.1 -> 20),
loss = mean over the batch of the per-sample mean of (eps_theta(x_t, t) - z)^2; gradients clipped
to global norm 1.0, AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-4: optax.adamw's
defaults), EMA (decay 0.999) of the parameters; a step whose loss or gradient norm is not finite
is skipped (adiff's NaN guard).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["sinusoidal_embedding", "TorchResidualMLP", "load_flax_params", "vp_alpha_sigma",
           "dsm_eps_loss", "TorchTrainStep", "num_params"]

_LN_EPS = 1e-6  # flax.linen.LayerNorm's default epsilon


def sinusoidal_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0,
                         scale: float = 1000.0) -> torch.Tensor:
    """[sin(scale t f_k), cos(scale t f_k)] with f_k = max_period^(-k/half), as adiff's.

    Args:
      t: [B] times.
      dim: embedding size (zero-padded by one column when odd).
      max_period: the longest period.
      scale: multiplier applied to t.

    Returns:
      [B, dim] float32 embedding.
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape [B], got shape {tuple(t.shape)}")
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1))
    args = (scale * t.float())[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _lecun_normal_(weight: torch.Tensor) -> None:
    """flax's default Dense kernel init: truncated normal with variance 1 / fan_in."""
    fan_in = weight.shape[1]
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # std of N(0,1) truncated to [-2, 2]
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class _Block(nn.Module):
    """One pre-norm residual block of ResidualMLP (same parameter names as the flax module)."""

    def __init__(self, features: int, time_dim: int, dropout: float):
        super().__init__()
        self.norm_0 = nn.LayerNorm(features, eps=_LN_EPS)
        self.dense_0 = nn.Linear(features, features)
        self.time = nn.Linear(time_dim, features)
        self.norm_1 = nn.LayerNorm(features, eps=_LN_EPS)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dense_1 = nn.Linear(features, features)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        r = self.dense_0(F.silu(self.norm_0(h))) + self.time(temb)
        r = self.dense_1(self.dropout(F.silu(self.norm_1(r))))
        return h + r


class TorchResidualMLP(nn.Module):
    """PyTorch port of `adiff.nets.ResidualMLP`: (x [B, D], t [B], cond [B, Dc]) -> [B, out_dim].

    Args:
      in_dim: D, the size of x.
      features: hidden width.
      num_blocks: number of residual blocks.
      time_dim: size of the time embedding.
      cond_dim: Dc, size of the conditioning input concatenated to x (0: none).
      dropout: dropout rate inside each block (train mode only).
      out_dim: output size; defaults to in_dim.
    """

    def __init__(self, in_dim: int, *, features: int = 256, num_blocks: int = 3,
                 time_dim: int = 128, cond_dim: int = 0, dropout: float = 0.0,
                 out_dim: Optional[int] = None):
        super().__init__()
        for name, v in (("in_dim", in_dim), ("features", features), ("num_blocks", num_blocks),
                        ("time_dim", time_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.time_dim = time_dim
        self.cond_dim = cond_dim
        self.time_dense_0 = nn.Linear(time_dim, time_dim)
        self.time_dense_1 = nn.Linear(time_dim, time_dim)
        self.input = nn.Linear(in_dim + cond_dim, features)
        self.blocks = nn.ModuleList(
            [_Block(features, time_dim, dropout) for _ in range(num_blocks)])
        self.output_norm = nn.LayerNorm(features, eps=_LN_EPS)
        self.output = nn.Linear(features, in_dim if out_dim is None else out_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _lecun_normal_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.output.weight)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Applies the network; t may be a scalar (broadcast to [B])."""
        if x.ndim != 2:
            raise ValueError(f"x must have shape [B, D], got shape {tuple(x.shape)}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_dense_1(F.silu(self.time_dense_0(sinusoidal_embedding(t, self.time_dim))))
        temb = F.silu(temb)
        h = x if cond is None else torch.cat([x, cond], dim=-1)
        h = self.input(h)
        for block in self.blocks:
            h = block(h, temb)
        return self.output(F.silu(self.output_norm(h)))


def num_params(model: nn.Module) -> int:
    """Number of scalar parameters of a torch module."""
    return sum(p.numel() for p in model.parameters())


def load_flax_params(model: TorchResidualMLP, params: Mapping) -> None:
    """Copies the parameters of a flax `ResidualMLP` (its "params" dict) into `model`, in place.

    Dense kernels [in, out] become Linear weights [out, in]; LayerNorm scale/bias map to
    weight/bias. Raises ValueError when a shape differs or a parameter is left unassigned.
    """
    def arr(a):
        return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))

    pairs = [(model.time_dense_0, params["time_embedding"]["dense_0"]),
             (model.time_dense_1, params["time_embedding"]["dense_1"]),
             (model.input, params["input"]), (model.output, params["output"]),
             (model.output_norm, params["output_norm"])]
    for i, block in enumerate(model.blocks):
        for sub in ("norm_0", "dense_0", "time", "norm_1", "dense_1"):
            pairs.append((getattr(block, sub), params[f"block_{i}_{sub}"]))
    assigned = 0
    with torch.no_grad():
        for module, p in pairs:
            if isinstance(module, nn.Linear):
                w, b = arr(p["kernel"]).T, arr(p["bias"])
            else:
                w, b = arr(p["scale"]), arr(p["bias"])
            if w.shape != module.weight.shape or b.shape != module.bias.shape:
                raise ValueError(f"shape mismatch for {module}: flax {tuple(w.shape)}, "
                                 f"{tuple(b.shape)}; torch {tuple(module.weight.shape)}, "
                                 f"{tuple(module.bias.shape)}")
            module.weight.copy_(w)
            module.bias.copy_(b)
            assigned += w.numel() + b.numel()
    if assigned != num_params(model):
        raise ValueError(f"assigned {assigned} of {num_params(model)} torch parameters")


def vp_alpha_sigma(t: torch.Tensor, *, beta_min: float = 0.1, beta_max: float = 20.0):
    """alpha_t and sigma_t of the VP SDE, computed as adiff.sde.VPSDE does (expm1 for sigma)."""
    ib = beta_min * t + 0.5 * (beta_max - beta_min) * t * t
    return torch.exp(-0.5 * ib), torch.sqrt(torch.clamp(-torch.expm1(-ib), min=0.0))


def dsm_eps_loss(model: nn.Module, x0: torch.Tensor, t: torch.Tensor,
                 z: torch.Tensor) -> torch.Tensor:
    """DSM loss of an eps network for given times and noise (adiff.losses.dsm_loss defaults).

    Args:
      model: eps network `(x_t, t) -> [B, D]`.
      x0: [B, D] clean data.
      t: [B] times.
      z: [B, D] standard normal noise.

    Returns:
      [] mean over the batch of the per-sample mean squared error (eps_theta - z)^2.
    """
    alpha, sigma = vp_alpha_sigma(t)
    xt = alpha[:, None] * x0 + sigma[:, None] * z
    return torch.mean(torch.square(model(xt, t) - z))


class TorchTrainStep:
    """The adiff train step in PyTorch eager (optionally with a torch.compile'd loss).

    Args:
      model: the eps network (trained in place).
      lr: AdamW learning rate.
      weight_decay: AdamW decoupled weight decay (optax.adamw's default 1e-4).
      grad_clip_norm: global-norm gradient clipping.
      ema_decay: decay of the parameter EMA.
      eps: smallest diffusion time.
      compile: wrap the loss (forward + backward through AOTAutograd) in torch.compile.
      seed: seed of the step's torch.Generator.
    """

    def __init__(self, model: nn.Module, *, lr: float = 1e-3, weight_decay: float = 1e-4,
                 grad_clip_norm: float = 1.0, ema_decay: float = 0.999, eps: float = 1e-5,
                 compile: bool = False, seed: int = 0):  # pylint: disable=redefined-builtin
        self.model = model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        try:  # the fused CPU AdamW kernel (torch >= 2.4); the multi-tensor one otherwise
            self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=weight_decay, fused=True)
            self.optimizer_impl = "fused"
        except (RuntimeError, TypeError):
            self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=weight_decay, foreach=True)
            self.optimizer_impl = "foreach"
        self.ema = [p.detach().clone() for p in self.params]
        self.grad_clip_norm = grad_clip_norm
        self.ema_decay = ema_decay
        self.eps = eps
        self.step = 0
        self.skipped = 0
        self.gen = torch.Generator().manual_seed(seed)
        loss = lambda x0, t, z: dsm_eps_loss(self.model, x0, t, z)
        self._loss = torch.compile(loss) if compile else loss

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        """One train step on the batch x0 [B, D]; returns the (detached) loss."""
        t = torch.rand(x0.shape[0], generator=self.gen) * (1.0 - self.eps) + self.eps
        z = torch.randn(x0.shape, generator=self.gen)
        return self.apply(x0, t, z)

    def apply(self, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """One train step with given times t [B] and noise z [B, D]; returns the loss."""
        loss = self._loss(x0, t, z)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip_norm, foreach=True)
        if bool(torch.isfinite(loss)) and bool(torch.isfinite(norm)):
            self.opt.step()
            with torch.no_grad():  # ema <- d ema + (1 - d) p
                torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)  # pylint: disable=protected-access
        else:
            self.skipped += 1
        self.step += 1
        return loss.detach()
