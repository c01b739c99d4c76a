"""ACC-ViT: atrous partitions, gates, parameter counts, the pyramid contract and a tiny overfit."""

import functools
from dataclasses import replace

import pytest
import timm
import torch
import torch.nn.functional as F
from einops import rearrange
from timm.models import checkpoint_seq

from medvit.models.acc_vit import (
    AccVit,
    AccVitBlock,
    AccVitCfg,
    AtrousAttention,
    AtrousMbConv,
    atrous_merge,
    atrous_partition,
    checkpoint_filter_fn,
    dilated_depthwise_conv2d,
    model_cfgs,
)

# a configuration small enough for CPU tests: window 2 at img_size 64 (64 = 32 x 2), 2-channel heads
TINY_CFG = AccVitCfg(embed_dim=(16, 32, 32, 64), depths=(1, 1, 1, 1), stem_width=16, dim_head=16,
                     mlp_ratio=2.0, conv_expand_ratio=2.0)


def _tiny_model(**kwargs) -> AccVit:
    return AccVit(TINY_CFG, img_size=64, **kwargs)


@functools.lru_cache(maxsize=None)
def _num_params(name: str) -> int:
    with torch.device("meta"):
        model = timm.create_model(name)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are dominated by per-op overhead; a second thread only adds contention on busy machines."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("dilation", [1, 2, 4, 8])
@pytest.mark.parametrize("window", [(7, 7), (2, 3)])
def test_partition_merge_round_trip(dilation: int, window: tuple) -> None:
    height, width = window[0] * dilation * 2, window[1] * dilation * 3  # non-square, several regions
    x = torch.randn(2, height, width, 5)
    windows = atrous_partition(x, window, dilation)
    assert windows.shape == (2 * height * width // (window[0] * window[1]), window[0] * window[1], 5)
    assert torch.equal(atrous_merge(windows, window, dilation, (height, width)), x)


def test_dilated_window_gathers_the_right_pixels() -> None:
    size = 28
    index = torch.arange(size * size).reshape(1, size, size, 1)  # value = row * 28 + col
    windows = atrous_partition(index, (7, 7), 2)[..., 0]  # (1 * 2 * 2 * 2 * 2, 49)
    assert windows.shape == (16, 49)

    def pixels(rows, cols):
        return sorted(r * size + c for r in rows for c in cols)

    evens, odds = range(0, 14, 2), range(1, 14, 2)
    # order (region_row, region_col, d1, d2): window 0 = region (0, 0), offset (0, 0)
    assert sorted(windows[0].tolist()) == pixels(evens, evens)
    assert sorted(windows[1].tolist()) == pixels(evens, odds)  # column offset 1
    assert sorted(windows[2].tolist()) == pixels(odds, evens)  # row offset 1
    assert sorted(windows[4].tolist()) == pixels(evens, range(14, 28, 2))  # region (0, 1)
    # token order inside a window is row-major over the dilated grid
    assert windows[0, :8].tolist() == [0, 2, 4, 6, 8, 10, 12, 2 * size]
    # dilation 4 on the same map: one region, window 0 spans the whole map at stride 4
    assert sorted(atrous_partition(index, (7, 7), 4)[0, :, 0].tolist()) == pixels(range(0, 28, 4), range(0, 28, 4))
    # every pixel lands in exactly one window
    assert sorted(windows.flatten().tolist()) == list(range(size * size))


def test_partition_rejects_maps_that_do_not_tile() -> None:
    with pytest.raises(ValueError, match="cannot be tiled"):
        atrous_partition(torch.zeros(1, 28, 30, 4), (7, 7), 2)


def test_attention_gate_weights_sum_to_one_per_token() -> None:
    attn = AtrousAttention(32, (2, 2), atrous_levels=3, dim_head=16)
    torch.nn.init.normal_(attn.gate.weight, std=1.0)
    weights = attn.gate_weights(torch.randn(2, 16, 24, 32))
    assert weights.shape == (2, 16, 24, 4)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 16, 24))
    assert weights.std(dim=(1, 2)).min() > 0.01  # really per token, not one weight for the whole map
    single = AtrousAttention(32, (2, 2), atrous_levels=0, dim_head=16)
    assert single.gate is None and torch.equal(single.gate_weights(torch.randn(1, 4, 4, 32)), torch.ones(1, 4, 4, 1))


def test_conv_gate_weights_sum_to_one_per_pixel() -> None:
    conv = AtrousMbConv(8, 16, stride=2, expand_ratio=2.0).eval()
    torch.nn.init.normal_(conv.gate.weight, std=1.0)
    weights = conv.gate_weights(torch.randn(2, 32, 12, 10))
    assert weights.shape == (2, 3, 6, 5)
    torch.testing.assert_close(weights.sum(1), torch.ones(2, 6, 5))
    assert conv(torch.randn(2, 8, 12, 10)).shape == (2, 16, 6, 5)


def test_atrous_attention_equals_per_branch_reference() -> None:
    dim, heads, window = 32, 2, (2, 3)
    attn = AtrousAttention(dim, window, atrous_levels=2, dim_head=16).eval()
    for rel_pos in attn.rel_pos:
        torch.nn.init.normal_(rel_pos.relative_position_bias_table, std=1.0)
    x = torch.randn(2, 8, 12, dim)
    with torch.no_grad():
        qkv = attn.qkv(x)
        gates = attn.gate_weights(x)
        expected = torch.zeros_like(x)
        for i, dilation in enumerate((1, 2, 4)):
            q, k, v = rearrange(atrous_partition(qkv, window, dilation), "n t (three h c) -> three n h t c",
                                three=3, h=heads)
            scores = q @ k.transpose(-1, -2) / 16 ** 0.5 + attn.rel_pos[i].get_bias()
            out = rearrange(scores.softmax(-1) @ v, "n h t c -> n t (h c)")
            expected += atrous_merge(out, window, dilation, (8, 12)) * gates[..., i:i + 1]
        expected = attn.proj(expected)
        torch.testing.assert_close(attn(x), expected, rtol=1e-4, atol=1e-5)


def test_atrous_attention_receptive_field() -> None:
    """A pixel reaches exactly its regular window and its dilated windows (here 28 x 28, window 7, d = 1, 2)."""
    attn = AtrousAttention(32, (7, 7), atrous_levels=1, dim_head=16).eval()
    x = torch.randn(1, 28, 28, 32)
    moved = x.clone()
    moved[0, 0, 0] += 10.0
    with torch.no_grad():
        changed = (attn(moved) - attn(x)).abs().amax(-1)[0] > 0
    expected = torch.zeros(28, 28, dtype=torch.bool)
    expected[:7, :7] = True  # regular window of pixel (0, 0)
    expected[0:14:2, 0:14:2] = True  # dilation-2 window of pixel (0, 0)
    assert torch.equal(changed, expected)


def test_parameter_counts() -> None:
    tiny = _num_params("acc_vit_tiny")
    assert 28.0e6 <= tiny <= 28.5e6, tiny
    assert 13.0e6 <= _num_params("acc_vit_nano") <= 15.0e6
    for ours, maxvit in (("acc_vit_tiny", "maxvit_tiny_tf_224"), ("acc_vit_small", "maxvit_small_tf_224"),
                         ("acc_vit_base", "maxvit_base_tf_224")):
        ratio = _num_params(ours) / _num_params(maxvit)
        assert 0.90 <= ratio <= 0.92, (ours, ratio)  # about 9% fewer than MaxViT


def test_variants_derive_from_tiny() -> None:
    assert model_cfgs["acc_vit_tiny"] == AccVitCfg()
    assert model_cfgs["acc_vit_tiny"].embed_dim == (64, 128, 256, 512)
    assert model_cfgs["acc_vit_tiny"].depths == (2, 2, 5, 2)
    assert model_cfgs["acc_vit_tiny"].atrous_levels == (3, 2, 1, 0)
    assert model_cfgs["acc_vit_base"] == replace(model_cfgs["acc_vit_small"], depths=(2, 6, 14, 2))


@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
def test_pyramid_contract(size: tuple) -> None:
    model = _tiny_model(num_classes=3).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        features = model.forward_features(x)
        logits = model(x)
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    assert [info["module"] for info in model.feature_info] == [f"stages.{i}" for i in range(4)]
    for fmap, info in zip(maps, model.feature_info):
        assert fmap.shape == (2, info["num_chs"], size[0] // info["reduction"], size[1] // info["reduction"])
    torch.testing.assert_close(final, features)
    torch.testing.assert_close(maps[-1], features)
    assert logits.shape == (2, 3)
    assert model.forward_head(features, pre_logits=True).shape == (2, 64)
    assert model.stage_modules() == [model.get_submodule(f"stages.{i}") for i in range(4)]
    assert len(model.forward_intermediates(x, indices=[1], intermediates_only=True, stop_early=True)) == 1
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model(x).shape == (2, 5)


def test_grad_checkpointing_matches_plain_forward_and_backward(monkeypatch) -> None:
    import medvit.models.acc_vit as acc_vit

    calls = []
    monkeypatch.setattr(acc_vit, "checkpoint_seq", lambda *a, **k: calls.append(1) or checkpoint_seq(*a, **k))
    torch.manual_seed(0)
    model = _tiny_model(num_classes=3)
    x = torch.randn(2, 3, 64, 64)

    def logits_and_grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.set_grad_checkpointing(checkpointing)
        model.train()
        for module in model.modules():  # keep BatchNorm in eval mode so both passes normalise alike
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        model.zero_grad(set_to_none=True)
        logits = model(x)
        (logits * torch.arange(1.0, 4.0)).sum().backward()  # unequal class weights: a non-trivial gradient
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected_logits, expected = logits_and_grads(False)
    assert not calls
    logits, grads = logits_and_grads(True)
    assert len(calls) == 4  # every stage ran through the checkpoint
    torch.testing.assert_close(logits, expected_logits)
    assert grads.keys() == expected.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(grad.abs().sum() > 0 for grad in grads.values())


@pytest.mark.parametrize("train", [False, True])
def test_cpu_chunked_blocks_equal_whole_batch(monkeypatch, train: bool) -> None:
    """Image-by-image blocks (the CPU cache blocking) give the whole batch's outputs and gradients; in
    training the MBConv still sees the whole batch, so BatchNorm's batch statistics are unchanged."""
    torch.manual_seed(0)
    model = _tiny_model(num_classes=3).train(train)
    x = torch.randn(3, 3, 64, 64, requires_grad=True)
    results = []
    for chunk_bytes in (0, 1):
        monkeypatch.setattr(AccVitBlock, "cpu_chunk_bytes", chunk_bytes)
        torch.manual_seed(1)
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.square().sum(), x)
        results.append((logits.detach(), grad))
    assert model.stages[0].blocks[0].images_per_chunk(x) == 1
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)


def test_images_per_chunk_rule() -> None:
    block = timm.create_model("acc_vit_tiny").stages[0].blocks[0]  # 64 -> 64 ch, stride 2, expansion 256
    x = torch.empty(8, 64, 112, 112)
    assert block.images_per_chunk(x) == 1  # 256 x 112 x 112 x 4 B = 12.8 MB per image
    assert block.images_per_chunk(x[:, :, :56, :56]) == 5  # 3.2 MB per image
    with torch.device("meta"):
        assert block.to("meta").images_per_chunk(torch.empty(8, 64, 112, 112)) == 8  # only on the CPU


def test_timm_registration_and_features_only() -> None:
    kwargs = dict(embed_dim=TINY_CFG.embed_dim, depths=TINY_CFG.depths, stem_width=16, dim_head=16, img_size=64)
    model = timm.create_model("acc_vit_tiny", num_classes=4, **kwargs)
    assert isinstance(model, AccVit) and model.window_size == (2, 2)
    assert model.pretrained_cfg["input_size"] == (3, 224, 224) and not model.pretrained_cfg["url"]
    features = timm.create_model("acc_vit_tiny", features_only=True, **kwargs)
    maps = features(torch.randn(1, 3, 64, 128))
    assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 32), (1, 32, 8, 16), (1, 32, 4, 8), (1, 64, 2, 4)]
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    assert features.feature_info.channels() == list(TINY_CFG.embed_dim)


def test_default_window_needs_multiples_of_224() -> None:
    model = AccVit(replace(TINY_CFG, atrous_levels=(3, 2, 1, 0)), num_classes=2).eval()  # window 7
    assert model.input_multiple == (224, 224)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 448)).shape == (1, 2)
    with pytest.raises(ValueError, match="multiple of 224x224"):
        model(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match="img_size"):
        AccVit(TINY_CFG, img_size=100)


def test_checkpoint_filter_strips_wrappers() -> None:
    model = _tiny_model(num_classes=3)
    state = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    fresh = _tiny_model(num_classes=3)
    fresh.load_state_dict(checkpoint_filter_fn(state, fresh), strict=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)


def test_tiny_config_overfits_eight_images() -> None:
    torch.manual_seed(0)
    model = _tiny_model(num_classes=8)
    images, labels = torch.randn(8, 3, 64, 64), torch.arange(8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy == 1.0, (accuracy, loss.item())


# ---- the fast training path against a straightforward reference (issue 11) ----------------------------------


def _reference_mbconv_forward(self: AtrousMbConv, x: torch.Tensor) -> torch.Tensor:
    """AtrousMbConv as first written: nn.Conv2d modules for the gate and the dilated depthwise branches."""
    x = x.contiguous(memory_format=torch.channels_last)
    shortcut = self.shortcut(x)
    x = self.norm1(self.conv1_1x1(self.pre_norm(x)))
    weights = self.gate_pool(self.gate(x)).softmax(dim=1)
    fused = sum(conv(x) * weights[:, i:i + 1] for i, conv in enumerate(self.convs_dw))
    x = self.conv3_1x1(self.se(self.norm2(fused)))
    return self.drop_path(x) + shortcut


REFERENCE_FORWARDS = {AtrousMbConv: _reference_mbconv_forward}


def _loss_and_grads(model: AccVit, x: torch.Tensor, labels: torch.Tensor) -> tuple:
    torch.manual_seed(1)
    loss = F.cross_entropy(model(x), labels)
    grads = torch.autograd.grad(loss, [p for _, p in model.named_parameters()])
    return loss.detach(), dict(zip([n for n, _ in model.named_parameters()], grads))


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(13, 12), (16, 16), (7, 9)])
def test_dilated_depthwise_conv_equals_conv(stride: int, dilation: int, size: tuple) -> None:
    torch.manual_seed(0)
    conv = timm.layers.create_conv2d(6, 6, 3, stride=stride, dilation=dilation, depthwise=True, bias=True).double()
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 6, *size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    expected, out = conv(x), dilated_depthwise_conv2d(x, conv)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, conv.weight, conv.bias), grad_out)
    for got, want in zip(torch.autograd.grad(out, (x, conv.weight, conv.bias), grad_out), expected_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kernel, stride, dilation, padding", [
    (3, 1, 2, 0), (3, 2, 3, 1), (3, 2, 3, 5), (5, 2, 3, 6), (5, 1, 2, 4), (3, 3, 2, 2)])
@pytest.mark.parametrize("needs", ["both", "input", "weight"])
def test_dilated_depthwise_backward_any_padding(kernel: int, stride: int, dilation: int, padding: int,
                                                needs: str) -> None:
    """The custom backward (transposed convolution as a forward one, tap-wise weight gradient) equals
    oneDNN's for paddings that crop or widen its zero-inserted map, and when only one input needs a gradient."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, kernel, stride, padding, dilation, groups=4).double()
    x = torch.randn(2, 4, 15, 14, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(needs != "weight")
    conv.weight.requires_grad_(needs != "input")
    inputs = [t for t in (x, conv.weight, conv.bias) if t.requires_grad]
    out = dilated_depthwise_conv2d(x, conv)
    grad_out = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, inputs, grad_out),
                         torch.autograd.grad(conv(x), inputs, grad_out)):
        torch.testing.assert_close(got, want)


def test_dilated_depthwise_backward_under_bf16_autocast() -> None:
    """Under CPU bf16 autocast (the engine's ``precision: bf16``) the custom backward runs in bf16 like oneDNN's
    and returns gradients in the dtypes of the inputs, close to those of ``conv`` under the same autocast."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, 2, 3, 3, groups=8)
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    results = []
    for fn in (dilated_depthwise_conv2d, lambda v, c: c(v)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(x, conv)
        results.append((out, torch.autograd.grad(out.float().square().sum(), (x, conv.weight, conv.bias))))
    (out, grads), (want, want_grads) = results
    assert out.dtype == want.dtype == torch.bfloat16
    for got, expected in zip(grads, want_grads):
        assert got.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("chunk_bytes", [0, 1])
def test_fast_path_loss_and_gradients_equal_reference(monkeypatch, train: bool, chunk_bytes: int) -> None:
    """Loss and every parameter gradient of the model equal those of the reference layers, in train and
    eval mode, with the CPU chunking off (whole batch) and at one image per chunk."""
    torch.manual_seed(0)
    model = _tiny_model(num_classes=3, drop_path_rate=0.1 if train else 0.0).train(train)
    for module in model.modules():  # non-trivial gates and biases
        if isinstance(module, (AtrousMbConv, AtrousAttention)) and module.gate is not None:
            torch.nn.init.normal_(module.gate.weight, std=0.5)
        if isinstance(module, AtrousAttention):
            for rel_pos in module.rel_pos:
                torch.nn.init.normal_(rel_pos.relative_position_bias_table, std=0.5)
    x, labels = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 2])
    monkeypatch.setattr(AccVitBlock, "cpu_chunk_bytes", chunk_bytes)
    loss, grads = _loss_and_grads(model, x, labels)
    for cls, forward in REFERENCE_FORWARDS.items():
        monkeypatch.setattr(cls, "forward", forward)
    expected_loss, expected_grads = _loss_and_grads(model, x, labels)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
