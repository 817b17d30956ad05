"""Transformer building blocks shared by both towers.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`) so that one rule
table in `rsjax.parallel` shards them over any mesh.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
logical = nn.with_logical_partitioning
dense_init = nn.initializers.normal(stddev=0.02)


def quick_gelu(x: jax.Array) -> jax.Array:
  """The sigmoid GELU approximation used by OpenAI's CLIP checkpoints."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
}


class LayerNorm(nn.Module):
  """LayerNorm with logically named scale/bias; statistics in float32 whatever the compute dtype."""
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.LayerNorm(
        epsilon=self.epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
        scale_init=logical(nn.initializers.ones, ("embed",)),
        bias_init=logical(nn.initializers.zeros, ("embed",)))(x)


class Attention(nn.Module):
  """Multi-head self-attention with one fused QKV projection.

  x: [B, L, D]; mask: broadcastable to [B, H, L, L] (True = attend) or None. Returns [B, L, D].
  The fused kernel [D, 3, H, Dh] maps one to one onto CLIP's `in_proj_weight` [3D, D].
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    width = x.shape[-1]
    heads, head_dim = self.num_heads, width // self.num_heads
    w_qkv = self.param("qkv_kernel", logical(dense_init, ("embed", None, "heads", "kv")),
                       (width, 3, heads, head_dim), self.param_dtype)
    b_qkv = self.param("qkv_bias", logical(nn.initializers.zeros, (None, "heads", "kv")),
                       (3, heads, head_dim), self.param_dtype)
    qkv = jnp.einsum("bld,dshk->blshk", x.astype(self.dtype),
                     w_qkv.astype(self.dtype)) + b_qkv.astype(self.dtype)  # [B, L, 3, H, Dh]
    # Tensor parallelism splits the heads: each device attends with its own heads only.
    qkv = nn.with_logical_constraint(qkv, ("batch", "length", None, "heads", "kv"))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, L, H, Dh]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)  # [B, L, H, Dh]
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    w_out = self.param("out_kernel", logical(dense_init, ("heads", "kv", "embed")),
                       (heads, head_dim, width), self.param_dtype)
    b_out = self.param("out_bias", logical(nn.initializers.zeros, ("embed",)), (width,),
                       self.param_dtype)
    return jnp.einsum("blhk,hkd->bld", out, w_out.astype(self.dtype)) + b_out.astype(self.dtype)


class Mlp(nn.Module):
  """Two dense layers with an activation: [B, L, D] -> [B, L, D]."""
  hidden: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                 kernel_init=logical(dense_init, ("embed", "mlp")),
                 bias_init=logical(nn.initializers.zeros, ("mlp",)), name="fc1")(x)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = ACTIVATIONS[self.activation](h)
    return nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=logical(dense_init, ("mlp", "embed")),
                    bias_init=logical(nn.initializers.zeros, ("embed",)), name="fc2")(h)


class Block(nn.Module):
  """Pre-LN transformer block (CLIP layout): x + attn(ln1(x)); x + mlp(ln2(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    x = x + Attention(self.num_heads, **kw, name="attn")(LayerNorm(**kw, name="ln1")(x), mask)
    hidden = int(x.shape[-1] * self.mlp_ratio)
    x = x + Mlp(hidden, self.activation, **kw, name="mlp")(LayerNorm(**kw, name="ln2")(x))
    return x


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class _ScanBlock(nn.Module):
  """Block in the (carry, x) -> (carry, y) form nn.scan needs."""
  num_heads: int
  mlp_ratio: float
  activation: str
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x, mask):
    return Block(self.num_heads, self.mlp_ratio, self.activation, self.dtype, self.param_dtype,
                 name="block")(x, mask), None


class Encoder(nn.Module):
  """A stack of `depth` blocks. Returns the final tokens and the outputs of the layers in `taps`.

  x: [B, L, D] -> ([B, L, D], {layer_index: [B, L, D]}).
  remat: a REMAT_POLICIES name (recompute activations in the backward pass to save memory).
  scan: run the blocks with nn.scan (parameters stacked on a leading `layers` axis), which compiles
  a deep stack once instead of `depth` times. Taps split the stack into scanned segments.
  """
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  activation: str = "gelu"
  remat: str = "none"
  scan: bool = False
  taps: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None):
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy '{self.remat}', choose from {sorted(REMAT_POLICIES)}")
    policy = REMAT_POLICIES[self.remat]
    kw = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, activation=self.activation,
              dtype=self.dtype, param_dtype=self.param_dtype)
    tapped = {}
    if not self.scan:
      block_cls = Block if self.remat == "none" else nn.remat(Block, policy=policy)
      for i in range(self.depth):
        x = block_cls(**kw, name=f"block{i}")(x, mask)
        if i in self.taps:
          tapped[i] = x
      return x, tapped
    block_cls = _ScanBlock if self.remat == "none" else nn.remat(_ScanBlock, policy=policy,
                                                                 prevent_cse=False)
    # Segment ends: every tap, then the last layer.
    ends = sorted({t for t in self.taps if t < self.depth - 1} | {self.depth - 1})
    first = 0
    for end in ends:
      stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=nn.broadcast, length=end - first + 1,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(**kw, name=f"blocks{first}_{end}")(x, mask)
      if end in self.taps:
        tapped[end] = x
      first = end + 1
    return x, tapped
