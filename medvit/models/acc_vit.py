"""ACC-ViT: atrous attention and atrous inverted-residual convolution in a hybrid pyramid ViT.

Paper: `ACC-ViT : Atrous Convolution's Comeback in Vision Transformers`, Ibtehaz, Yan, Mortazavi, Kihara,
2024, https://arxiv.org/abs/2403.04200. No official code or checkpoint exists; this is written from the
paper's description, in the style of timm's ``maxxvit.py`` (whose MaxViT-T is the paper's baseline).

Layout of the network (NCHW-shaped maps between blocks, stored channels-last; the attention half of a
block works on (B, H, W, C) views)::

    stem   3x3 conv s2 -> BN+GELU -> 3x3 conv s1                  stride 2
    stages.{0..3}  AccVitBlock x depth (first block strides 2)      strides 4, 8, 16, 32
        AtrousMbConv: BN -> 1x1 expand -> BN+GELU -> depthwise 3x3 at dilations 1, 2, 3 fused by a
                      per-pixel softmax gate -> BN+GELU -> SE -> 1x1 project  (+ shortcut)
        AtrousAttention: LN -> shared qkv -> window attention on the regular partition and on
                      ``atrous_levels`` dilated partitions (dilation 2, 4, 8, ...) -> per-token softmax
                      gate over the branches -> proj  (+ residual)
        one shared MLP: LN -> Linear -> GELU -> Linear (+ residual)
    head   global average pool -> LayerNorm -> Linear

Choices the paper leaves open (documented where they are made):

* The branches of the atrous attention share one qkv projection and one output projection; each branch
  has its own relative position bias table (its window spans a different physical extent). Because the
  gate weights sum to 1 per token, projecting after the gated sum equals projecting each branch with a
  shared projection, and costs one matmul instead of K.
* The gate of the attention is a Linear on the normalised attention input (one logit per branch and
  token, softmax over branches). The gate of the atrous convolution is a 1x1 conv on the expanded
  activation (average-pooled to the output grid in a strided block).
* Parameter budget: a block has one attention and one MLP (MaxViT has two of each), so the tiny model
  keeps MaxViT-T's widths, depths, stem and MBConv expansion and raises only the MLP ratio, to 8.5
  (the counts behind that choice: ``docs/models.md``).

Input-size rule: every side of the input must be a multiple of ``32 * window_size`` (224 for the default
window 7), so that at every stage the largest dilated window tiles the map exactly (stage 1 of a 224
input is 56 x 56 with dilations 2, 4, 8: 7 * 8 = 56). Other sizes raise a ``ValueError``; pass
``img_size`` (the window becomes ``img_size // 32``, as in timm's MaxViT) to build a model for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    LayerNorm,
    LayerNorm2d,
    Mlp,
    NormMlpClassifierHead,
    RelPosBias,
    SqueezeExcite,
    calculate_drop_path_rates,
    create_conv2d,
    create_pool2d,
    get_act_layer,
    get_norm_act_layer,
    make_divisible,
    to_2tuple,
)
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from medvit.models.chunking import CPU_CHUNK_BYTES, cpu_images_per_chunk, map_image_chunks
from medvit.models.init import init_linear_and_conv

__all__ = [
    "AccVitCfg",
    "AccVit",
    "AtrousAttention",
    "AtrousMbConv",
    "AccVitBlock",
    "AccVitStage",
    "atrous_partition",
    "atrous_merge",
    "checkpoint_filter_fn",
    "dilated_depthwise_conv2d",
]

_logger = logging.getLogger(__name__)

#: Input sides must be multiples of this times the window size (the network's total stride).
TOTAL_STRIDE = 32


@dataclass(frozen=True)
class AccVitCfg:
    """ACC-ViT architecture; variants are made with :func:`dataclasses.replace`.

    Attributes:
        embed_dim: Channels of the four stages.
        depths: Blocks per stage.
        atrous_levels: Dilated attention partitions per stage (dilations ``2 ** k``, k = 1..L); the
            regular window partition is always present, so a stage has ``L + 1`` attention branches.
        stem_width: Channels of the two stem convolutions.
        dim_head: Channels per attention head.
        window_size: Attention window in tokens, int or (height, width); ``None`` derives it from
            ``img_size // 32`` (7 at 224).
        mlp_ratio: Hidden width of the shared MLP relative to the stage width.
        conv_expand_ratio: Expansion of the atrous inverted-residual convolution (of its output width).
        conv_dilations: Dilations of the parallel depthwise 3x3 convolutions.
        se_ratio: Squeeze-excitation width relative to the block output width (0 disables SE).
        act_layer: Activation of convolutions and MLP (timm name).
        conv_norm_eps: Epsilon of the BatchNorms.
        attn_norm_eps: Epsilon of the LayerNorms.
    """

    embed_dim: Tuple[int, int, int, int] = (64, 128, 256, 512)
    depths: Tuple[int, int, int, int] = (2, 2, 5, 2)
    atrous_levels: Tuple[int, int, int, int] = (3, 2, 1, 0)
    stem_width: int = 64
    dim_head: int = 32
    window_size: Optional[Union[int, Tuple[int, int]]] = None
    mlp_ratio: float = 8.5
    conv_expand_ratio: float = 4.0
    conv_dilations: Tuple[int, ...] = (1, 2, 3)
    se_ratio: float = 0.25
    act_layer: str = "gelu"
    conv_norm_eps: float = 1e-5
    attn_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depths", "atrous_levels", "conv_dilations"):  # lists from YAML -> tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("embed_dim", "depths", "atrous_levels"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"AccVitCfg.{name} must have 4 entries (one per stage), got {getattr(self, name)}")
        for i, dim in enumerate(self.embed_dim):
            if dim % self.dim_head:
                raise ValueError(
                    f"AccVitCfg: stage {i} width {dim} is not a multiple of dim_head={self.dim_head}; "
                    "choose widths divisible by the head size")


def atrous_partition(x: torch.Tensor, window_size: Tuple[int, int], dilation: int) -> torch.Tensor:
    """Cut a channels-last map into (dilated) attention windows.

    The map is tiled into regions of ``(window_h * dilation) x (window_w * dilation)`` pixels. Each region
    holds ``dilation ** 2`` windows; the window with offset ``(d1, d2)`` gathers the pixels at rows
    ``region_top + d1 + dilation * i`` and columns ``region_left + d2 + dilation * j`` for
    ``i < window_h, j < window_w``, i.e. a ``window_h x window_w`` grid with stride ``dilation``.
    Dilation 1 is the regular (block) window partition. Windows are ordered ``(b, region_row,
    region_col, d1, d2)``; window 0 of a map therefore holds rows and columns ``0, d, ..., d * (window - 1)``.

    Args:
        x: Feature map, (B, H, W, C).
        window_size: Window (height, width) in tokens.
        dilation: Spacing between the pixels of a window.

    Returns:
        Windows, (B * num_windows, window_h * window_w, C).

    Raises:
        ValueError: If H or W is not a multiple of ``window * dilation``.
    """
    win_h, win_w = window_size
    _, height, width, _ = x.shape
    if height % (win_h * dilation) or width % (win_w * dilation):
        raise ValueError(
            f"atrous_partition: a {height}x{width} map cannot be tiled by {win_h}x{win_w} windows at dilation "
            f"{dilation} (needs multiples of {win_h * dilation}x{win_w * dilation}); use an input whose sides "
            "are multiples of 32 * window_size")
    # the inner (w d) grouping is MaxViT's grid partition applied inside each (window * dilation) region
    return rearrange(
        x, "b (x w1 d1) (y w2 d2) c -> (b x y d1 d2) (w1 w2) c", w1=win_h, w2=win_w, d1=dilation, d2=dilation)


def atrous_merge(
        windows: torch.Tensor, window_size: Tuple[int, int], dilation: int, size: Tuple[int, int],
) -> torch.Tensor:
    """Inverse of :func:`atrous_partition`.

    Args:
        windows: Windows, (B * num_windows, window_h * window_w, C).
        window_size: Window (height, width) in tokens.
        dilation: Dilation used to partition.
        size: (H, W) of the map.

    Returns:
        Feature map, (B, H, W, C).
    """
    win_h, win_w = window_size
    height, width = size
    return rearrange(
        windows, "(b x y d1 d2) (w1 w2) c -> b (x w1 d1) (y w2 d2) c",
        x=height // (win_h * dilation), y=width // (win_w * dilation), w1=win_h, w2=win_w, d1=dilation, d2=dilation)


def dilated_depthwise_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a depthwise ``conv`` with dilation > 1, with a backward made of fast convolutions.

    On the CPU, oneDNN's *forward* depthwise convolution is fast at any dilation and stride, its backward
    of a dilated one is not: at batch 8, 256 channels, 64² input, stride 2, dilation 3 the forward took
    3.6 ms, the input gradient 286 ms and the weight gradient 150 ms (undilated: 33 and 11 ms). When the
    dilation ``d`` divides the stride and the padding, every output reads the sub-grid ``x[::d, ::d]``,
    so one undilated convolution of it at stride ``s / d`` is exact. Otherwise :class:`_DilatedDepthwiseConv`
    runs oneDNN's forward and computes the input gradient as a forward convolution of the (zero-inserted,
    for stride > 1) output gradient with the flipped kernel and the weight gradient tap by tap (a multiply
    and a reduction per tap). Off the CPU, at dilation 1, without autograd (the forward alone is fast),
    under ``torch.compile``, or for non-square shapes or non-zero padding it calls ``conv`` itself.

    Args:
        x: Input, (B, C, H, W), channels-last memory format preferred.
        conv: A depthwise ``nn.Conv2d`` (groups == in == out channels).

    Returns:
        ``conv(x)``; its gradients equal ``conv``'s up to float rounding.
    """
    (stride, _), (dilation, _), (padding, _) = conv.stride, conv.dilation, conv.padding
    is_square = all(len(set(v)) == 1 for v in (conv.stride, conv.dilation, conv.padding, conv.kernel_size))
    if (dilation == 1 or not is_square or conv.padding_mode != "zeros" or x.device.type != "cpu"
            or not torch.is_grad_enabled() or torch.compiler.is_compiling()):
        return conv(x)
    if stride % dilation == 0 and padding % dilation == 0:  # every output reads the sub-grid x[::d, ::d]
        return F.conv2d(x[:, :, ::dilation, ::dilation], conv.weight, conv.bias, stride // dilation,
                        padding // dilation, 1, x.shape[1])
    return _DilatedDepthwiseConv.apply(x, conv.weight, conv.bias, stride, dilation, padding)


class _DilatedDepthwiseConv(torch.autograd.Function):
    """A depthwise 3x3-or-larger square convolution whose backward avoids oneDNN's dilated backward."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int,
                dilation: int, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.has_bias = (stride, dilation, padding), bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")  # the forward's autocast state (bf16 autocast: bf16 convolutions)
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        stride, dilation, padding = ctx.geometry
        kernel, channels, (height, width) = weight.shape[-1], x.shape[1], x.shape[-2:]
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        acc = torch.promote_types(grad_out.dtype, torch.float32)  # bf16 products, float32 (or wider) sums
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # the transposed convolution as a forward one: x_pad[p] gets grad_out[i] * w[k] where s * i + d * k = p
            reach = dilation * (kernel - 1)
            flipped = weight.flip(-2, -1)
            if stride == 1 and reach == 2 * padding:
                grad_x = F.conv2d(grad_out, flipped, None, 1, padding, dilation, channels)
            else:
                grad_x = F.conv2d(_zero_inserted(grad_out, stride, reach - padding, (height, width), padding),
                                  flipped, None, 1, 0, dilation, channels)
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            x_pad = F.pad(x, (padding,) * 4).to(grad_out.dtype)
            out_h, out_w = grad_out.shape[-2:]
            product = torch.empty_like(grad_out)
            taps = []
            for i in range(kernel):
                for j in range(kernel):
                    rows = slice(dilation * i, dilation * i + stride * (out_h - 1) + 1, stride)
                    cols = slice(dilation * j, dilation * j + stride * (out_w - 1) + 1, stride)
                    taps.append(torch.mul(grad_out, x_pad[:, :, rows, cols], out=product).sum((0, 2, 3), dtype=acc))
            grad_w = torch.stack(taps, dim=1).view_as(weight).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3), dtype=acc).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None


def _zero_inserted(
        grad_out: torch.Tensor, stride: int, left: int, size: Tuple[int, int], padding: int,
) -> torch.Tensor:
    """``grad_out`` spread ``stride`` apart on a zero map with margins (negative ones crop) such that a valid
    stride-1 convolution of reach ``left + padding`` returns an input-sized (``size``) map."""
    spread = [stride * (n - 1) + 1 for n in grad_out.shape[-2:]]
    right = [side - 1 + padding - (n - 1) for side, n in zip(size, spread)]
    pad = max(left, 0)
    full = grad_out.new_zeros(
        (*grad_out.shape[:2], pad + spread[0] + max(right[0], 0), pad + spread[1] + max(right[1], 0)),
    ).contiguous(memory_format=torch.channels_last)
    full[:, :, pad:pad + spread[0]:stride, pad:pad + spread[1]:stride] = grad_out
    return full[:, :, pad - left:pad + spread[0] + right[0], pad - left:pad + spread[1] + right[1]]


class AtrousAttention(nn.Module):
    """Atrous attention on a channels-last map: windowed MHSA on K partitions, fused by a per-token gate.

    Branch 0 attends within the regular ``window`` partition, branch k (k = 1..L) within the partition
    dilated by ``2 ** k``. All branches share the qkv projection and the output projection and run as one
    ``scaled_dot_product_attention`` call; each has its own relative position bias. Every partition cuts
    the map into the same number of windows, so the K partitions are stacked next to the heads: the call
    sees (B * num_windows, K * heads, N, head_dim) and the (1, K * heads, N, N) bias as its float mask.
    Input and output are (B, H, W, C).
    """

    def __init__(
            self,
            dim: int,
            window_size: Tuple[int, int],
            atrous_levels: int,
            dim_head: int = 32,
            qkv_bias: bool = True,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
    ) -> None:
        """
        Args:
            dim: Channels.
            window_size: Window (height, width) in tokens.
            atrous_levels: Number of dilated partitions L (dilations 2, 4, ..., 2 ** L).
            dim_head: Channels per head.
            qkv_bias: Bias in the qkv projection.
            attn_drop: Attention dropout.
            proj_drop: Dropout after the output projection.
        """
        super().__init__()
        self.num_heads = dim // dim_head
        self.window_size = to_2tuple(window_size)
        self.dilations = tuple(2 ** k for k in range(atrous_levels + 1))
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.rel_pos = nn.ModuleList(RelPosBias(self.window_size, self.num_heads) for _ in self.dilations)
        # one logit per branch and token; a single branch needs no gate
        self.gate = nn.Linear(dim, len(self.dilations)) if len(self.dilations) > 1 else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def num_branches(self) -> int:
        """Number of attention branches (regular window + dilated partitions)."""
        return len(self.dilations)

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token branch weights.

        Args:
            x: Normalised block input, (B, H, W, C).

        Returns:
            Weights, (B, H, W, K), non-negative and summing to 1 over K.
        """
        if self.gate is None:
            return x.new_ones(x.shape[:-1] + (1,))
        return self.gate(x).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend within every partition and fuse.

        Args:
            x: Normalised map, (B, H, W, C).

        Returns:
            Fused attention output, (B, H, W, C).
        """
        size = (x.shape[1], x.shape[2])
        qkv = self.qkv(x)
        # every partition has B * num_windows windows of N tokens: stack the K partitions next to the heads,
        # so one 4-D attention call (fused kernels need 4-D) serves all branches, with a (1, K * heads, N, N) bias
        windows = torch.stack([atrous_partition(qkv, self.window_size, d) for d in self.dilations], dim=1)
        q, k, v = rearrange(windows, "n k t (three h c) -> three n (k h) t c", three=3, h=self.num_heads)
        bias = torch.cat([rel_pos.get_bias() for rel_pos in self.rel_pos], dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.attn_drop if self.training else 0.0)
        out = rearrange(out, "n (k h) t c -> k n t (h c)", k=self.num_branches)

        weights = self.gate_weights(x)
        fused = atrous_merge(out[0], self.window_size, self.dilations[0], size) * weights[..., 0:1]
        for i in range(1, self.num_branches):
            branch = atrous_merge(out[i], self.window_size, self.dilations[i], size)
            fused = fused.addcmul_(branch, weights[..., i:i + 1])
        return self.proj_drop(self.proj(fused))


class AtrousMbConv(nn.Module):
    """Atrous inverted-residual block on NCHW maps (MaxViT's MBConv with parallel dilated depthwise convs).

    pre-norm BN -> 1x1 expand -> BN+act -> depthwise 3x3 at each dilation (stride on all) -> softmax-gated
    sum -> BN+act -> SE -> 1x1 project, plus a shortcut (avg-pool + 1x1 conv when striding or widening).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            expand_ratio: float = 4.0,
            dilations: Sequence[int] = (1, 2, 3),
            se_ratio: float = 0.25,
            act_layer: str = "gelu",
            norm_eps: float = 1e-5,
            drop_path: float = 0.0,
    ) -> None:
        """
        Args:
            in_chs: Input channels.
            out_chs: Output channels.
            stride: 1, or 2 to halve the resolution.
            expand_ratio: Expanded width relative to ``out_chs``.
            dilations: Dilations of the parallel depthwise convolutions.
            se_ratio: SE width relative to ``out_chs`` (0 disables SE).
            act_layer: Activation (timm name).
            norm_eps: BatchNorm epsilon.
            drop_path: Stochastic depth rate of the residual branch.
        """
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"AtrousMbConv: stride must be 1 or 2, got {stride}")
        norm_act_layer = partial(get_norm_act_layer("batchnorm2d", act_layer), eps=norm_eps)
        mid_chs = make_divisible(out_chs * expand_ratio)
        if stride == 2 or in_chs != out_chs:
            self.shortcut = nn.Sequential(
                create_pool2d("avg", 2, padding=0) if stride == 2 else nn.Identity(),
                create_conv2d(in_chs, out_chs, 1, bias=True),
            )
        else:
            self.shortcut = nn.Identity()
        self.pre_norm = norm_act_layer(in_chs, apply_act=False)
        self.conv1_1x1 = create_conv2d(in_chs, mid_chs, 1)
        self.norm1 = norm_act_layer(mid_chs)
        self.dilations = tuple(dilations)
        self.convs_dw = nn.ModuleList(
            create_conv2d(mid_chs, mid_chs, 3, stride=stride, dilation=d, depthwise=True) for d in self.dilations)
        self.gate_pool = create_pool2d("avg", 2, padding=0) if stride == 2 else nn.Identity()
        self.gate = create_conv2d(mid_chs, len(self.dilations), 1, bias=True) if len(self.dilations) > 1 else None
        self.norm2 = norm_act_layer(mid_chs)
        self.se = (
            SqueezeExcite(mid_chs, rd_channels=int(out_chs * se_ratio), act_layer=get_act_layer("silu"))
            if se_ratio > 0 else nn.Identity()
        )
        self.conv3_1x1 = create_conv2d(mid_chs, out_chs, 1, bias=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel weights of the dilated branches.

        Args:
            x: Expanded activation, (B, mid, H, W).

        Returns:
            Weights, (B, K, H / stride, W / stride), summing to 1 over K.
        """
        if self.gate is None:
            x = self.gate_pool(x)
            return x.new_ones((x.shape[0], 1) + x.shape[2:])
        # a 1x1 conv commutes with average pooling: pool the K logits rather than the wide activation. The
        # 1x1 conv is a Linear on the channels-last view: oneDNN's backward of a conv with K = 3 outputs was
        # 0.5 s at 112² x 256 channels (batch 16), a GEMM's is a small fraction of that
        logits = F.linear(rearrange(x, "b c h w -> b h w c"), self.gate.weight.flatten(1), self.gate.bias)
        return self.gate_pool(rearrange(logits, "b h w k -> b k h w")).softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, in_chs, H, W), any memory format.

        Returns:
            (B, out_chs, H / stride, W / stride), channels-last memory format.
        """
        # depthwise convolutions are several times faster channels-last on CPU; the attention half of the
        # previous block already hands over a channels-last view, so this copies only after the stem
        x = x.contiguous(memory_format=torch.channels_last)
        shortcut = self.shortcut(x)
        x = self.norm1(self.conv1_1x1(self.pre_norm(x)))
        weights = self.gate_weights(x)
        fused = dilated_depthwise_conv2d(x, self.convs_dw[0]) * weights[:, 0:1]
        for i in range(1, len(self.convs_dw)):
            fused = fused.addcmul_(dilated_depthwise_conv2d(x, self.convs_dw[i]), weights[:, i:i + 1])
        x = self.conv3_1x1(self.se(self.norm2(fused)))
        return self.drop_path(x) + shortcut


class AccVitBlock(nn.Module):
    """One ACC-ViT block: atrous MBConv, then atrous attention and one shared MLP. NCHW in and out.

    On the CPU a batch goes through in chunks of whole images whose largest activation (the MBConv's
    expansion at the input resolution, or the K stacked partitions of q, k, v) fits in
    ``cpu_chunk_bytes`` (at least one image per chunk), so that they stay cache-sized instead of streaming
    through main memory (why and what it gains: ``docs/models.md``). Every operation of the block is per
    image except BatchNorm in training mode, so in training
    the MBConv sees the whole batch (its batch statistics) and only the attention and MLP are chunked.
    Each image goes through the same operations; outputs match the whole batch up to float rounding.
    """

    cpu_chunk_bytes: int = CPU_CHUNK_BYTES  # 0 = never chunk

    def __init__(
            self,
            dim: int,
            dim_out: int,
            stride: int,
            atrous_levels: int,
            window_size: Tuple[int, int],
            cfg: AccVitCfg,
            drop_path: float = 0.0,
    ) -> None:
        """
        Args:
            dim: Input channels.
            dim_out: Output channels.
            stride: Stride of the convolution (2 for a stage's first block).
            atrous_levels: Dilated attention partitions of this stage.
            window_size: Attention window (height, width).
            cfg: Architecture config (widths of the expansions, norms, activation).
            drop_path: Stochastic depth rate.
        """
        super().__init__()
        self.conv = AtrousMbConv(
            dim, dim_out, stride=stride, expand_ratio=cfg.conv_expand_ratio, dilations=cfg.conv_dilations,
            se_ratio=cfg.se_ratio, act_layer=cfg.act_layer, norm_eps=cfg.conv_norm_eps, drop_path=drop_path)
        norm_layer = partial(LayerNorm, eps=cfg.attn_norm_eps)
        self.norm1 = norm_layer(dim_out)
        self.attn = AtrousAttention(dim_out, window_size, atrous_levels, dim_head=cfg.dim_head)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim_out)
        self.mlp = Mlp(dim_out, hidden_features=int(dim_out * cfg.mlp_ratio), act_layer=get_act_layer(cfg.act_layer))
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def images_per_chunk(self, x: torch.Tensor) -> int:
        """How many images of the block input ``x`` (B, C, H, W) go through at once (B unless on the CPU)."""
        height, width = x.shape[-2:]
        stride = self.conv.convs_dw[0].stride[0]
        expanded = self.conv.conv1_1x1.out_channels * height * width
        partitions = self.attn.num_branches * self.attn.qkv.out_features * (height // stride) * (width // stride)
        return cpu_images_per_chunk(x, max(expanded, partitions), self.cpu_chunk_bytes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, dim, H, W).

        Returns:
            (B, dim_out, H / stride, W / stride).
        """
        n = self.images_per_chunk(x)
        if not self.training:
            return map_image_chunks(lambda chunk: self._attend(self.conv(chunk)), x, n)
        x = self.conv(x)  # BatchNorm's batch statistics need the whole batch
        return map_image_chunks(self._attend, x, n)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention and MLP half: (B, C, H, W) in and out, on a channels-last (B, H, W, C) view."""
        x = rearrange(x, "b c h w -> b h w c")
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return rearrange(x, "b h w c -> b c h w")


class AccVitStage(nn.Module):
    """A stage: ``depth`` blocks, the first one halving the resolution. NCHW in and out."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            atrous_levels: int,
            window_size: Tuple[int, int],
            cfg: AccVitCfg,
            drop_path: Sequence[float],
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            AccVitBlock(
                in_chs if i == 0 else out_chs, out_chs, stride=2 if i == 0 else 1, atrous_levels=atrous_levels,
                window_size=window_size, cfg=cfg, drop_path=drop_path[i])
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class Stem(nn.Module):
    """MaxViT's stem: 3x3 conv stride 2 -> BN+act -> 3x3 conv stride 1 (NCHW, stride 2)."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: str = "gelu", norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.conv1 = create_conv2d(in_chs, out_chs, 3, stride=2, bias=True)
        self.norm1 = get_norm_act_layer("batchnorm2d", act_layer)(out_chs, eps=norm_eps)
        self.conv2 = create_conv2d(out_chs, out_chs, 3, stride=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.norm1(self.conv1(x)))


class AccVit(nn.Module):
    """ACC-ViT backbone and classifier (timm conventions; four NCHW stages at strides 4, 8, 16, 32)."""

    def __init__(
            self,
            cfg: AccVitCfg = AccVitCfg(),
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            cfg: Architecture.
            img_size: Nominal input size; sets the window (``img_size // 32``) unless ``cfg.window_size`` is set.
            in_chans: Input channels.
            num_classes: Classes of the linear head (0 for no head).
            global_pool: Pooling of the head (timm ``SelectAdaptivePool2d`` names).
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth, increasing linearly over blocks up to this rate.
            **kwargs: Fields of ``AccVitCfg`` to override (e.g. ``depths=(1, 1, 1, 1)``).
        """
        super().__init__()
        if kwargs:
            unknown = set(kwargs) - set(AccVitCfg.__dataclass_fields__)
            if unknown:
                raise TypeError(f"AccVit: unknown arguments {sorted(unknown)}; valid config fields are "
                                f"{sorted(AccVitCfg.__dataclass_fields__)}")
            cfg = replace(cfg, **kwargs)
        self.cfg = cfg
        self.img_size = to_2tuple(img_size)
        if cfg.window_size is not None:
            self.window_size = to_2tuple(cfg.window_size)
        else:
            self.window_size = tuple(s // TOTAL_STRIDE for s in self.img_size)
            if min(self.window_size) < 1 or any(s % TOTAL_STRIDE for s in self.img_size):
                raise ValueError(f"AccVit: img_size {self.img_size} must be a multiple of {TOTAL_STRIDE} "
                                 "(the window is img_size // 32); or set window_size explicitly")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = cfg.embed_dim[-1]
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, cfg.stem_width, act_layer=cfg.act_layer, norm_eps=cfg.conv_norm_eps)
        rates = calculate_drop_path_rates(drop_path_rate, sum(cfg.depths))  # per block, increasing linearly
        dpr = [rates[sum(cfg.depths[:i]):sum(cfg.depths[:i + 1])] for i in range(4)]
        stages = []
        in_chs = cfg.stem_width
        self.feature_info: List[Dict[str, Any]] = []
        for i in range(4):
            stages.append(AccVitStage(
                in_chs, cfg.embed_dim[i], cfg.depths[i], cfg.atrous_levels[i], self.window_size, cfg, dpr[i]))
            in_chs = cfg.embed_dim[i]
            self.feature_info.append(dict(num_chs=in_chs, reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head = NormMlpClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
            norm_layer=partial(LayerNorm2d, eps=cfg.attn_norm_eps))

        for module in self.modules():
            init_linear_and_conv(module)  # ViT-style Linear, EfficientNet-style (fan-out) conv init

    @property
    def input_multiple(self) -> Tuple[int, int]:
        """Every input side must be a multiple of this (32 x window), e.g. (224, 224) for window 7."""
        return (TOTAL_STRIDE * self.window_size[0], TOTAL_STRIDE * self.window_size[1])

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless (height, width) satisfies the window rule (see ``input_multiple``)."""
        mult_h, mult_w = self.input_multiple
        if height and width and not height % mult_h and not width % mult_w:
            return
        if height and width and not height % TOTAL_STRIDE and not width % TOTAL_STRIDE:
            fix = f", or build the model for this size with img_size=({height}, {width}) (window = img_size // 32)"
        else:
            fix = f" (sides that are not multiples of {TOTAL_STRIDE} are never supported)"
        raise ValueError(
            f"acc_vit: input {height}x{width} is not a multiple of {mult_h}x{mult_w} (32 x window "
            f"{self.window_size[0]}x{self.window_size[1]}); resize the images to multiples of {mult_h}x{mult_w}"
            f"{fix}")

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {k for k, _ in self.named_parameters() if "relative_position_bias_table" in k}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stem", blocks=[(r"^stages\.(\d+)", None), (r"^head\.norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the linear classifier (``num_classes=0`` removes it)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)
        if global_pool is not None:
            self.global_pool = global_pool

    def stage_modules(self) -> List[nn.Module]:
        """The four stage modules whose NCHW outputs are the pyramid (strides 4, 8, 16, 32)."""
        return list(self.stages)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the stage maps (timm convention).

        Args:
            x: Images, (B, C, H, W).
            indices: Last n stages if int, all if None, else the stage indices to take.
            norm: Unused (the final norm lives in the head, after pooling).
            stop_early: Stop after the last requested stage.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the list of maps.

        Returns:
            The maps (B, C_i, H / 2^(i+2), W / 2^(i+2)), or (final features, maps).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"acc_vit: output_fmt must be 'NCHW', got {output_fmt!r}")
        self.check_input_size(x.shape[-2], x.shape[-1])
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            # the head's norm is sized for the last stage, which is gone
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.head.reset(0, "", reset_other=True, in_features=self.num_features)
        elif prune_head:
            self.head.reset(0, "", reset_other=prune_norm)
        if prune_head or prune_end:
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> last stage map (B, C_4, H / 32, W / 32)."""
        self.check_input_size(x.shape[-2], x.shape[-1])
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Last stage map -> pooled, normalised features (``pre_logits``) or logits."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map a saved ACC-ViT state dict onto ``model``'s keys.

    There is no official checkpoint; native checkpoints (ours, timm's training scripts) only need the
    ``module.`` (DDP) or ``model.`` / ``state_dict`` wrappers removed.
    """
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
            break
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


# Variants (parameters at 1000 classes). tiny = AccVitCfg(): MaxViT-T's widths, depths, stem and MBConv
# expansion with MLP ratio 8.5 (module docstring): 28,183,385 = 0.912 x MaxViT-T. small / base: MaxViT-S / -B
# widths and depths, same block: 62,616,277 = 0.908 x MaxViT-S, 109,064,602 = 0.913 x MaxViT-B.
# nano: tiny's widths, depths (1, 1, 3, 1), MLP ratio 7.5: 14,190,219.
model_cfgs: Dict[str, AccVitCfg] = {}
model_cfgs["acc_vit_tiny"] = AccVitCfg()
model_cfgs["acc_vit_nano"] = replace(model_cfgs["acc_vit_tiny"], depths=(1, 1, 3, 1), mlp_ratio=7.5)
model_cfgs["acc_vit_small"] = replace(model_cfgs["acc_vit_tiny"], embed_dim=(96, 192, 384, 768))
model_cfgs["acc_vit_base"] = replace(model_cfgs["acc_vit_small"], depths=(2, 6, 14, 2))


def _create_acc_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> AccVit:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        AccVit,
        variant,
        pretrained,
        cfg=model_cfgs[variant],
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.95,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1",
        "classifier": "head.fc",
        "fixed_input_size": True,
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "acc_vit_nano": _cfg(),
    "acc_vit_tiny": _cfg(),
    "acc_vit_small": _cfg(),
    "acc_vit_base": _cfg(),
})


@register_model
def acc_vit_nano(pretrained: bool = False, **kwargs: Any) -> AccVit:
    """ACC-ViT nano (~14 M parameters): a fast model for experiments."""
    return _create_acc_vit("acc_vit_nano", pretrained=pretrained, **kwargs)


@register_model
def acc_vit_tiny(pretrained: bool = False, **kwargs: Any) -> AccVit:
    """ACC-ViT tiny (28.0-28.5 M parameters; MaxViT-T widths and depths)."""
    return _create_acc_vit("acc_vit_tiny", pretrained=pretrained, **kwargs)


@register_model
def acc_vit_small(pretrained: bool = False, **kwargs: Any) -> AccVit:
    """ACC-ViT small (about 9% fewer parameters than MaxViT-S)."""
    return _create_acc_vit("acc_vit_small", pretrained=pretrained, **kwargs)


@register_model
def acc_vit_base(pretrained: bool = False, **kwargs: Any) -> AccVit:
    """ACC-ViT base (about 9% fewer parameters than MaxViT-B)."""
    return _create_acc_vit("acc_vit_base", pretrained=pretrained, **kwargs)
