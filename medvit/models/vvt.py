"""Vicinity Vision Transformer (VVT).

Paper: W. Sun, Z. Qin, H. Deng et al., "Vicinity Vision Transformer", IEEE TPAMI 2023,
https://arxiv.org/abs/2206.10552. Official code (Apache-2.0):
https://github.com/OpenNLPLab/Vicinity-Vision-Transformer (``classification/vvt.py``).

A four-stage pyramid (overlapping patch embeddings, strides 4/8/16/32) whose blocks use *vicinity
attention*: linear attention with ReLU feature maps, re-weighted by the 2-D Manhattan-distance
kernel cos(α_i - α_j) + cos(β_i - β_j) written as cos/sin features of each token's row and column
angle (α = π/2·row/H, β = π/2·col/W), with feature reduction (q, k, v of width C/fr), a
squeeze-excitation "feature-preserving connection", and a depthwise-conv MLP.

Written for medvit in timm's style; the computation equals the official code, including its value
clamps (sign(t)·min(max(|t|, 1e-4), 1e4), six per attention) and its epsilons (patch-embed LayerNorm
1e-5, all other LayerNorms 1e-6), so official checkpoints load through :func:`checkpoint_filter_fn`.
Differences from the official code, none of which changes the outputs beyond float rounding:

* q/k/v are one fused ``qkv`` Linear (the official ``q_proj``/``k_proj``/``v_proj`` concatenated;
  same parameter count), ``out_proj`` is ``proj`` and ``mlp.dwconv.dwconv`` is ``mlp.dwconv``.
* The 4d-wide cos/sin features are built with one broadcast multiply, the normaliser q̃·Σk̃ comes out
  of the same batched matmul as q̃·KV, and clamps whose input sign is known are one-sided.
* With autograd on (training, Grad-CAM), the ReLU of q and k, the clamps and GELU run out of place, the
  clamp with a one-pass custom backward (:class:`_AbsClamp`); without it they run in place.
* On the CPU the MLPs run image by image where a batch's hidden activation would not fit in cache
  (see :class:`VvtMlp`); each image's arithmetic is unchanged.
* Each stage module takes and returns an NCHW map (the official code keeps stage 4 as tokens).
* Input height and width must be multiples of 32 (the official code accepts any size; the pyramid
  contract of medvit wants exact strides 4/8/16/32).
* ``linear=True`` and ``num_stages != 4`` are rejected; ``sr_ratios > 1`` (spatial reduction of
  k and v, unused by every published variant) is implemented as in the official code.
* The official constructor's ``img_size``, ``patch_size``, ``qkv_bias``, ``qk_scale``,
  ``attn_drop_rate`` and ``prod_types`` are accepted and, as in the official code, have no effect;
  ``drop_rate`` is the MLP dropout, as in the official code (timm uses it for the head).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, calculate_drop_path_rates, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.pvt_v2 import OverlapPatchEmbed
from torch import Tensor, nn

from medvit.errors import UnknownNameError
from medvit.models.chunking import CPU_CHUNK_BYTES, cpu_images_per_chunk, map_image_chunks
from medvit.models.init import init_linear_and_conv

__all__ = ["VvtCfg", "VicinityAttention", "VvtBlock", "VvtStage", "VicinityVisionTransformer", "checkpoint_filter_fn"]

_logger = logging.getLogger(__name__)

_CLAMP_MIN = 1e-4
_CLAMP_MAX = 1e4
_Z_EPS = 1e-4
_TOTAL_STRIDE = 32


def _tuple4(value: Any, name: str) -> Tuple[Any, ...]:
    """Return ``value`` as a 4-tuple (a scalar is repeated); raise for another length."""
    if isinstance(value, (list, tuple)):
        if len(value) != 4:
            raise ValueError(f"VvtCfg.{name} must have 4 entries (one per stage), got {list(value)}")
        return tuple(value)
    return (value,) * 4


@dataclass
class VvtCfg:
    """Architecture of a VVT; field names are the official constructor's keywords.

    Attributes:
        embed_dims: Channels of the four stages.
        num_heads: Attention heads per stage.
        mlp_ratios: MLP hidden width over channels, per stage.
        depths: Blocks per stage.
        sr_ratios: Spatial reduction of k and v per stage (1 = none, as in all published variants).
        fr_ratios: Feature reduction per stage: q, k, v have ``embed_dim // fr`` channels.
        se_ratio: Reduction of the squeeze-excitation gate's hidden layer.
        drop_rate: Dropout inside the MLPs (the official meaning of this keyword).
        drop_path_rate: Stochastic depth, rising linearly over all blocks to this value.
        norm_layer: Block and stage-closing norm; patch embeddings always use LayerNorm eps 1e-5.
        img_size: Accepted for the official signature; unused (any multiple of 32 works).
        patch_size: Accepted for the official signature; unused (the stem is 7x7 stride 4).
        qkv_bias: Accepted for the official signature; q, k, v always have a bias there too.
        qk_scale: Accepted for the official signature; unused there too.
        attn_drop_rate: Accepted for the official signature; unused there too (no attention matrix).
        prod_types: Accepted for the official signature ('left'/'right'); unused there too.
        num_stages: Must be 4.
        linear: Must be False (the official ``linear=True`` path is broken for vicinity attention).
    """

    embed_dims: Tuple[int, ...] = (96, 160, 320, 512)
    num_heads: Tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: Tuple[float, ...] = (8, 8, 4, 4)
    depths: Tuple[int, ...] = (2, 2, 2, 2)
    sr_ratios: Tuple[int, ...] = (1, 1, 1, 1)
    fr_ratios: Tuple[int, ...] = (2, 2, 2, 2)
    se_ratio: int = 1
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_layer: Callable[..., nn.Module] = field(default=partial(nn.LayerNorm, eps=1e-6))
    img_size: Any = 224
    patch_size: Any = 4
    qkv_bias: bool = True
    qk_scale: Optional[float] = None
    attn_drop_rate: float = 0.0
    prod_types: Tuple[str, ...] = ("left", "left", "left", "left")
    num_stages: int = 4
    linear: bool = False

    def __post_init__(self) -> None:
        if self.num_stages != 4:
            raise ValueError(f"VvtCfg.num_stages={self.num_stages} is not supported: VVT has exactly 4 stages")
        if self.linear:
            raise ValueError(
                "VvtCfg.linear=True is not supported: the official linear (pooled) spatial reduction gives k a "
                "7x7 grid that its position angles do not match; use linear=False")
        for name in ("embed_dims", "num_heads", "mlp_ratios", "depths", "sr_ratios", "fr_ratios", "prod_types"):
            setattr(self, name, _tuple4(getattr(self, name), name))
        for i, (dim, heads, fr, sr) in enumerate(zip(self.embed_dims, self.num_heads, self.fr_ratios, self.sr_ratios)):
            head_dim = dim // heads // fr
            if dim % heads or head_dim < 1 or dim // fr != heads * head_dim:
                raise ValueError(
                    f"VvtCfg stage {i}: embed_dim {dim} must split into {heads} heads of a reduced width "
                    f"(embed_dim / num_heads / fr_ratio = {dim / heads / fr:g}) that is a whole number >= 1")
            if int(sr) != sr or sr < 1:
                raise ValueError(f"VvtCfg.sr_ratios[{i}]={sr} must be a whole number >= 1")
            if dim // self.se_ratio < 1:
                raise ValueError(f"VvtCfg.se_ratio={self.se_ratio} leaves no channels in stage {i} (embed_dim {dim})")
        bad = [p for p in self.prod_types if p not in ("left", "right")]
        if bad:
            raise ValueError(f"VvtCfg.prod_types has {bad}; the official code accepts 'left' or 'right' (both unused)")


class _AbsClamp(torch.autograd.Function):
    """The official value clamp with a one-pass backward that keeps one boolean mask.

    The gradient of sign(x) * clamp(|x|, 1e-4, 1e4) is the incoming gradient where 1e-4 <= |x| <= 1e4
    (inclusive, as ``clamp``'s backward) and 0 elsewhere, exact zeros included. Autograd through abs,
    clamp and the sign product gives the same numbers in three passes and, for the in-place forward,
    copies the input first to keep it for the backward.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        magnitude = x.abs()
        ctx.save_for_backward((magnitude >= _CLAMP_MIN) & (magnitude <= _CLAMP_MAX))
        return magnitude.clamp_(_CLAMP_MIN, _CLAMP_MAX).mul_(x.sign())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (passes,) = ctx.saved_tensors
        return torch.where(passes, grad, 0.0)


def _abs_clamp(x: Tensor) -> Tensor:
    """Official value clamp sign(x) * min(max(|x|, 1e-4), 1e4); exact zeros stay zero.

    In place on ``x`` when autograd is off (inference); otherwise a new tensor with a cheap backward.
    """
    if torch.is_grad_enabled():
        return _AbsClamp.apply(x)
    sign = x.sign()
    return x.abs_().clamp_(_CLAMP_MIN, _CLAMP_MAX).mul_(sign)


def vicinity_weights(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Cos/sin position features of a row-major token grid.

    Token n = row * W + col has α = (π/2)·row/H and β = (π/2)·col/W (Eq. 9 of the paper, divisors as
    in the official code), computed in float32 exactly as the official code does.

    Returns:
        (H * W, 4, 1) tensor: [cos α, sin α, cos β, sin β] per token.
    """
    half_pi = math.pi / 2
    alpha = half_pi * torch.arange(height, device=device) / height
    beta = half_pi * torch.arange(width, device=device) / width
    rows = torch.stack([alpha.cos(), alpha.sin()], dim=-1)  # (H, 2)
    cols = torch.stack([beta.cos(), beta.sin()], dim=-1)  # (W, 2)
    grid = torch.cat([rows[:, None, :].expand(height, width, 2), cols[None, :, :].expand(height, width, 2)], dim=-1)
    return grid.reshape(height * width, 4, 1).to(dtype)


class VicinityAttention(nn.Module):
    """Vicinity attention with feature reduction and the feature-preserving (SE) gate.

    Input and output are tokens (B, N, C) of a row-major H x W grid. Per head, with ReLU features
    q, k of reduced width d and angle features q̃ = [q cos α, q sin α, q cos β, q sin β] (width 4d):
    KV = clamp(Σ k̃ᵀ v), z = clamp(1 / (q̃·Σ k̃ + 1e-4)), o = clamp(clamp(q̃·KV) · z); then
    a = clamp(proj(o)) and y = clamp(a · (1 + s)) with s = sigmoid(W2 relu(W1 mean(x))).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            fr_ratio: int = 2,
            se_ratio: int = 1,
            sr_ratio: int = 1,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.attn_dim = dim // fr_ratio
        self.head_dim = dim // num_heads // fr_ratio
        self.sr_ratio = sr_ratio
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, **dd)  # [q | k | v]
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio, **dd)
            self.norm = nn.LayerNorm(dim, **dd)  # eps 1e-5, as in the official code
        else:
            self.sr = None
            self.norm = None
        self.proj = nn.Linear(self.attn_dim, dim, **dd)
        self.se_fc = nn.Sequential(
            nn.Linear(dim, dim // se_ratio, bias=False, **dd),
            nn.ReLU(),
            nn.Linear(dim // se_ratio, dim, bias=False, **dd),
            nn.Sigmoid(),
        )

    def _project(self, x: Tensor, feat_size: Tuple[int, int]) -> Tuple[Tensor, Tensor, Tensor, Tuple[int, int]]:
        """q (B, h, N, d) and k, v (B, h, M, d), with q and k already through ReLU; M's grid size."""
        B, N, _ = x.shape
        H, W = feat_size
        h, d = self.num_heads, self.head_dim
        if self.sr is None:
            qkv = self.qkv(x)
            if torch.is_grad_enabled():  # an in-place ReLU of a slice would make autograd copy all of qkv
                q, k, v = qkv.view(B, N, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
                return q.relu(), k.relu(), v, (H, W)
            qkv[..., :2 * self.attn_dim].relu_()
            q, k, v = qkv.view(B, N, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
            return q, k, v, (H, W)
        if H % self.sr_ratio or W % self.sr_ratio:
            raise ValueError(
                f"VicinityAttention: sr_ratio {self.sr_ratio} must divide the token grid {H}x{W}; "
                f"choose an input size whose stage grids are multiples of the sr_ratios")
        weight_q, weight_kv = self.qkv.weight.split([self.attn_dim, 2 * self.attn_dim])
        bias_q, bias_kv = self.qkv.bias.split([self.attn_dim, 2 * self.attn_dim])
        q = F.relu(F.linear(x, weight_q, bias_q)).view(B, N, h, d).transpose(1, 2)
        reduced = self.sr(x.transpose(1, 2).reshape(B, -1, H, W))
        kv_size = (reduced.shape[-2], reduced.shape[-1])
        reduced = self.norm(reduced.flatten(2).transpose(1, 2))
        kv = F.linear(reduced, weight_kv, bias_kv)
        k, v = kv.view(B, -1, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k.relu(), v, kv_size

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        """Args: x: tokens (B, N, C), N = H * W; feat_size: (H, W). Returns: (B, N, C)."""
        B, N, C = x.shape
        d = self.head_dim
        gate = self.se_fc(x.mean(dim=1))  # (B, C)
        q, k, v, kv_size = self._project(x, feat_size)
        q_weights = vicinity_weights(feat_size[0], feat_size[1], x.device, x.dtype)
        k_weights = q_weights if kv_size == tuple(feat_size) else vicinity_weights(*kv_size, x.device, x.dtype)
        # (B, h, N, 1, d) * (N, 4, 1) -> (B, h, N, 4d) in the official order [cos α, sin α, cos β, sin β]
        q = (q.unsqueeze(-2) * q_weights).flatten(-2)
        k = (k.unsqueeze(-2) * k_weights).flatten(-2)
        kv = _abs_clamp(k.transpose(-2, -1) @ v)  # (B, h, 4d, d)
        k_sum = k.sum(dim=-2).unsqueeze(-1)  # (B, h, 4d, 1)
        out = q @ torch.cat([kv, k_sum], dim=-1)  # (B, h, N, d + 1): q̃·KV and q̃·Σk̃ in one matmul
        z = out[..., d:].add(_Z_EPS).reciprocal().clamp(_CLAMP_MIN, _CLAMP_MAX)  # positive, so a plain clamp
        # in place only without autograd, which would otherwise copy each input to keep it for the backward
        inplace = not torch.is_grad_enabled()
        x = _abs_clamp(out[..., :d])
        x = _abs_clamp(x.mul_(z) if inplace else x * z)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = _abs_clamp(self.proj(x))
        # |x| >= 1e-4 (or 0) and 1 + gate >= 1, so only the upper bound of the clamp can bite
        if inplace:
            return x.mul_(gate.unsqueeze(1) + 1).clamp_(-_CLAMP_MAX, _CLAMP_MAX)
        return (x * (gate.unsqueeze(1) + 1)).clamp(-_CLAMP_MAX, _CLAMP_MAX)


class VvtMlp(nn.Module):
    """fc1 -> depthwise 3x3 conv -> exact GELU -> fc2 on tokens (B, N, C) of an H x W grid.

    As the official ``Mlp`` (no activation before the depthwise conv). The conv runs on a
    channels-last view of the tokens and GELU is applied in place on the conv's output.

    On the CPU the batch goes through in chunks of whole images whose hidden activation (N x
    hidden_features) fits in ``cpu_chunk_bytes`` (at least one image per chunk), so that fc1, the
    depthwise conv, GELU and fc2 work on a cache-sized block instead of each streaming a large
    activation through main memory (why and what it gains: ``docs/models.md``). Each image goes
    through the same operations as in the whole batch (tests compare with the unchunked outputs).
    """

    cpu_chunk_bytes: int = CPU_CHUNK_BYTES  # 0 = never chunk

    def __init__(
            self,
            in_features: int,
            hidden_features: int,
            drop: float = 0.0,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(in_features, hidden_features, **dd)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, 1, 1, groups=hidden_features, **dd)
        self.fc2 = nn.Linear(hidden_features, in_features, **dd)
        self.drop = nn.Dropout(drop)

    def images_per_chunk(self, x: Tensor) -> int:
        """How many images of ``x`` (B, N, C) go through at once (B unless chunking on the CPU)."""
        return cpu_images_per_chunk(x, x.shape[1] * self.fc1.out_features, self.cpu_chunk_bytes)

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        return map_image_chunks(partial(self._forward_images, feat_size=feat_size), x, self.images_per_chunk(x))

    def _forward_images(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        x = self.fc1(x)
        # (B, H, W, C) permuted to NCHW: a channels-last tensor that the conv takes without a copy,
        # also for B = 1 (a transpose(1, 2).view(...) leaves a batch stride that forces an NCHW copy)
        x = self.dwconv(x.view(x.shape[0], feat_size[0], feat_size[1], -1).permute(0, 3, 1, 2))
        x = x.flatten(2).transpose(1, 2)
        # exact (erf) GELU, in place without autograd (with it, autograd would copy the input to keep it)
        x = F.gelu(x) if torch.is_grad_enabled() else torch.ops.aten.gelu_(x)
        x = self.drop(x)
        x = self.fc2(x)
        return self.drop(x)


class VvtBlock(nn.Module):
    """Pre-norm block on tokens (B, N, C): x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float,
            sr_ratio: int = 1,
            fr_ratio: int = 2,
            se_ratio: int = 1,
            proj_drop: float = 0.0,
            drop_path: float = 0.0,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.attn = VicinityAttention(dim, num_heads, fr_ratio=fr_ratio, se_ratio=se_ratio, sr_ratio=sr_ratio, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = VvtMlp(dim, int(dim * mlp_ratio), drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor, feat_size: Tuple[int, int]) -> Tensor:
        # the branch outputs are fresh tensors, so the residual is added into them in place
        x = self.drop_path1(self.attn(self.norm1(x), feat_size)).add_(x)
        x = self.drop_path2(self.mlp(self.norm2(x), feat_size)).add_(x)
        return x


class VvtStage(nn.Module):
    """Overlapping patch embedding, blocks and closing norm: NCHW map in, NCHW map out."""

    def __init__(
            self,
            in_chs: int,
            dim: int,
            depth: int,
            is_first: bool,
            input_multiple: int,
            num_heads: int,
            mlp_ratio: float,
            sr_ratio: int = 1,
            fr_ratio: int = 2,
            se_ratio: int = 1,
            proj_drop: float = 0.0,
            drop_path: Union[List[float], float] = 0.0,
            norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-6),
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        """Args (those not obvious): is_first: 7x7 stride-4 embedding, else 3x3 stride 2;
        input_multiple: the input's height and width must be multiples of this."""
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.is_first = is_first
        self.input_multiple = input_multiple
        self.grad_checkpointing = False
        # conv + LayerNorm with PyTorch's default eps 1e-5, as in the official code
        self.patch_embed = OverlapPatchEmbed(
            patch_size=7 if is_first else 3, stride=4 if is_first else 2, in_chans=in_chs, embed_dim=dim, **dd)
        self.blocks = nn.ModuleList([
            VvtBlock(
                dim, num_heads, mlp_ratio, sr_ratio=sr_ratio, fr_ratio=fr_ratio, se_ratio=se_ratio,
                proj_drop=proj_drop, drop_path=drop_path[i] if isinstance(drop_path, list) else drop_path,
                norm_layer=norm_layer, **dd)
            for i in range(depth)])
        self.norm = norm_layer(dim, **dd)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x: (B, C_in, H, W). Returns: (B, C, H', W') (channels-last strides)."""
        H, W = x.shape[-2:]
        if H % self.input_multiple or W % self.input_multiple:
            what = "input image size" if self.is_first else "stage input size"
            raise ValueError(
                f"VVT: {what} {H}x{W} is not supported; height and width must be multiples of "
                f"{self.input_multiple} (total stride {_TOTAL_STRIDE}); resize or pad the input")
        x = self.patch_embed(x)  # (B, H, W, C)
        B, H, W, C = x.shape
        feat_size = (H, W)
        x = x.reshape(B, H * W, C)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, feat_size)
            else:
                x = blk(x, feat_size)
        x = self.norm(x)
        return x.reshape(B, H, W, C).permute(0, 3, 1, 2)


class VicinityVisionTransformer(nn.Module):
    """VVT: four :class:`VvtStage` (strides 4, 8, 16, 32) and a linear head on the mean of stage 4."""

    def __init__(
            self,
            cfg: Optional[VvtCfg] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            **kwargs: Any,
    ):
        """Args:
            cfg: Architecture; default ``VvtCfg()`` (vvt_tiny).
            in_chans: Input channels.
            num_classes: Classes of the head; 0 for no head.
            global_pool: 'avg' (mean over the stage-4 map, as the official code) or '' (no pooling).
            **kwargs: Overrides of ``cfg`` fields, named as the official constructor's keywords.

        Raises:
            TypeError: A keyword is neither a model argument nor a ``VvtCfg`` field.
            ValueError: An unsupported configuration (see :class:`VvtCfg`).
        """
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        cfg = cfg or VvtCfg()
        cfg_names = {f.name for f in fields(VvtCfg)}
        unknown = sorted(set(kwargs) - cfg_names)
        if unknown:
            raise TypeError(f"VicinityVisionTransformer got unknown keyword(s) {unknown}; accepted: {sorted(cfg_names)}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"VVT global_pool={global_pool!r} is not supported; use 'avg' or ''")
        self.cfg = cfg = replace(cfg, **kwargs) if kwargs else cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.feature_info: List[Dict[str, Any]] = []

        dpr = calculate_drop_path_rates(cfg.drop_path_rate, list(cfg.depths), stagewise=True)
        stages = []
        prev_dim = in_chans
        for i in range(4):
            in_reduction = 1 if i == 0 else 2 ** (i + 1)
            stages.append(VvtStage(
                prev_dim, cfg.embed_dims[i], cfg.depths[i], is_first=i == 0,
                input_multiple=_TOTAL_STRIDE // in_reduction, num_heads=cfg.num_heads[i],
                mlp_ratio=cfg.mlp_ratios[i], sr_ratio=int(cfg.sr_ratios[i]), fr_ratio=cfg.fr_ratios[i],
                se_ratio=cfg.se_ratio, proj_drop=cfg.drop_rate, drop_path=dpr[i], norm_layer=cfg.norm_layer, **dd))
            prev_dim = cfg.embed_dims[i]
            self.feature_info.append(dict(num_chs=prev_dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = cfg.embed_dims[-1]
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(init_linear_and_conv)  # the official init

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stages\.0\.patch_embed", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0 = none)."""
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"VVT global_pool={global_pool!r} is not supported; use 'avg' or ''")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_linear_and_conv(self.head)
        self.head.train(self.training)

    def stage_modules(self) -> List[nn.Module]:
        """The four stage modules; each returns its NCHW stage map."""
        return list(self.stages)

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Forward features that also returns stage maps (timm convention).

        Args:
            x: Images (B, C, H, W), H and W multiples of 32.
            indices: Take the last n stages if int, all if None, or these stage indices.
            norm: Unused: every stage map is already normed by its stage.
            stop_early: Stop after the last requested stage.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the list of maps.

        Returns:
            (final map, [maps]) or [maps]; maps are (B, C_i, H / 4·2^i, W / 4·2^i).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"VVT forward_intermediates: output_fmt={output_fmt!r} is not supported; use 'NCHW'")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) not needed for the requested intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> stage-4 map (B, C4, H/32, W/32)."""
        return self.stages(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Stage-4 map -> logits (or pooled features with ``pre_logits``)."""
        if self.global_pool == "avg":
            x = x.mean(dim=(-2, -1))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: Optional[nn.Module] = None) -> Dict[str, Tensor]:
    """Convert an official VVT state dict (``patch_embed1.proj.weight``, ``block1.0.attn.k_proj.weight``,
    ``norm1.weight``, ``head.weight``, ...) to this module's keys; native state dicts pass unchanged.

    Also unwraps ``{'model': sd}`` / ``{'state_dict': sd}`` files and DDP's ``module.`` prefix.

    Raises:
        KeyError: An official attention lacks one of q_proj, k_proj, v_proj.
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), Mapping):
            state_dict = state_dict[wrapper]
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if any(k.startswith("stages.") for k in state_dict):
        return state_dict  # native

    out: Dict[str, Tensor] = {}
    qkv_parts: Dict[Tuple[str, str], Dict[str, Tensor]] = {}
    for k, v in state_dict.items():
        k = re.sub(r"^patch_embed(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.patch_embed.", k)
        k = re.sub(r"^block(\d+)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.", k)
        k = re.sub(r"^norm(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.norm.", k)
        k = k.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.").replace(".attn.out_proj.", ".attn.proj.")
        match = re.match(r"^(.*\.attn\.)([qkv])_proj\.(weight|bias)$", k)
        if match:
            qkv_parts.setdefault((match[1], match[3]), {})[match[2]] = v
        else:
            out[k] = v
    for (prefix, kind), parts in qkv_parts.items():
        missing = [f"{prefix}{name}_proj.{kind}" for name in "qkv" if name not in parts]
        if missing:
            raise UnknownNameError(f"official VVT checkpoint is missing {missing}; is the file complete?")
        out[f"{prefix}qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _create_vvt(variant: str, cfg: VvtCfg, pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """Build a registered VVT variant through timm's builder (features_only, pretrained file overlays)."""
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not (overlay.get("file") or overlay.get("state_dict")):
        raise ValueError(
            f"{variant} has no downloadable weights; pass a checkpoint file, e.g. "
            f"medvit.models.create_model({variant!r}, pretrained='vvt_tiny.pth') or "
            f"timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH))")
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        VicinityVisionTransformer,
        variant,
        pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.patch_embed.proj", "classifier": "head",
        "license": "apache-2.0", "paper_ids": "arXiv:2206.10552", "paper_name": "Vicinity Vision Transformer",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vvt_nano": _cfg(license="apache-2.0 (medvit variant; no official weights)"),
    "vvt_tiny": _cfg(),
    "vvt_small": _cfg(),
    "vvt_medium": _cfg(),
    "vvt_large": _cfg(),
})

model_cfgs = dict(vvt_tiny=VvtCfg())
# Not in the paper: a narrow VVT-Tiny with MLP ratio 4 for CPU training and small embedded demo models.
model_cfgs["vvt_nano"] = replace(
    model_cfgs["vvt_tiny"], embed_dims=(48, 96, 192, 320), num_heads=(1, 2, 3, 5), mlp_ratios=(4, 4, 4, 4))
model_cfgs["vvt_small"] = replace(model_cfgs["vvt_tiny"], depths=(3, 3, 9, 3))
model_cfgs["vvt_medium"] = replace(model_cfgs["vvt_tiny"], depths=(3, 3, 27, 3))
model_cfgs["vvt_large"] = replace(model_cfgs["vvt_tiny"], depths=(4, 4, 36, 4), mlp_ratios=(4, 4, 4, 4))


@register_model
def vvt_nano(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-Nano (medvit's, not the paper's): 4.8 M params; VVT-Tiny at 3/5-1/2 width, MLP ratio 4."""
    return _create_vvt("vvt_nano", model_cfgs["vvt_nano"], pretrained=pretrained, **kwargs)


@register_model
def vvt_tiny(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-Tiny: 12.9 M params, 3.0 GFLOPs at 224."""
    return _create_vvt("vvt_tiny", model_cfgs["vvt_tiny"], pretrained=pretrained, **kwargs)


@register_model
def vvt_small(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-Small: 25.5 M params, 5.6 GFLOPs at 224."""
    return _create_vvt("vvt_small", model_cfgs["vvt_small"], pretrained=pretrained, **kwargs)


@register_model
def vvt_medium(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-Medium: 47.9 M params, 9.4 GFLOPs at 224."""
    return _create_vvt("vvt_medium", model_cfgs["vvt_medium"], pretrained=pretrained, **kwargs)


@register_model
def vvt_large(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-Large: 61.8 M params, 10.8 GFLOPs at 224."""
    return _create_vvt("vvt_large", model_cfgs["vvt_large"], pretrained=pretrained, **kwargs)
