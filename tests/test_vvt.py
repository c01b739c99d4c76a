"""VVT: parameter counts, FLOPs, equality with the official implementation, the pyramid contract."""

import json
import math
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

import medvit.models.vvt as vvt
from medvit.models.vvt import VicinityAttention, VvtBlock, VvtCfg, checkpoint_filter_fn

FIXTURES = Path(__file__).parent / "fixtures" / "vvt"

# official counts, 1000 classes (reference/vvt/params_flops.csv)
PARAMS = dict(vvt_tiny=12_882_440, vvt_small=25_492_264, vvt_medium=47_907_304, vvt_large=61_848_520)
FLOPS = dict(vvt_tiny=3_000_000_000, vvt_small=5_610_502_144, vvt_medium=9_423_299_584, vvt_large=10_828_933_632)


def _official_kwargs() -> dict:
    """The official constructor arguments of the fixture model (test_config.json)."""
    cfg = json.loads((FIXTURES / "test_config.json").read_text())
    assert cfg.pop("norm_layer") == "partial(nn.LayerNorm, eps=1e-6)"
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
    kwargs["norm_layer"] = partial(nn.LayerNorm, eps=1e-6)
    return kwargs


@pytest.fixture(scope="module")
def test_model() -> nn.Module:
    return timm.create_model("vvt_tiny", **_official_kwargs()).eval()


@pytest.mark.parametrize("name", list(PARAMS))
def test_param_counts_match_official(name: str) -> None:
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert sum(b.numel() for b in model.buffers()) == 0


def test_fixture_model_matches_official_size(test_model: nn.Module) -> None:
    assert sum(p.numel() for p in test_model.parameters()) == 167_887
    official = load_file(FIXTURES / "vvt_test_official.safetensors")
    assert len(official) == 126
    assert sum(v.numel() for v in official.values()) == 167_887


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vvt_tiny", "vvt_small", "vvt_medium", "vvt_large"])
def test_fvcore_flops_within_2_percent(name: str) -> None:
    fvcore_nn = pytest.importorskip("fvcore.nn")
    model = timm.create_model(name).eval()
    analysis = fvcore_nn.FlopCountAnalysis(model, torch.randn(1, 3, 224, 224))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    assert analysis.total() == pytest.approx(FLOPS[name], rel=0.02)


@pytest.mark.parametrize("weights, io_file, batch, stage_atol, logits_atol", [
    ("vvt_test_official", "vvt_test_io_224", slice(None), 1e-5, 1e-6),
    ("vvt_test_official", "vvt_test_io_160x256", slice(None), 1e-5, 1e-6),
    ("vvt_test_stress_weights", "vvt_test_stress_io_160x256", slice(0, 1), 1e-4, 1e-5),
])
def test_equals_official_outputs(test_model, weights, io_file, batch, stage_atol, logits_atol) -> None:
    state_dict = checkpoint_filter_fn(load_file(FIXTURES / f"{weights}.safetensors"), test_model)
    test_model.load_state_dict(state_dict, strict=True)
    expected = load_file(FIXTURES / f"{io_file}.safetensors")
    # the stress file holds no input: it is input[0:1] of the 160x256 set
    x = load_file(FIXTURES / "vvt_test_io_160x256.safetensors")["input"][batch] if "stress" in io_file \
        else expected["input"]
    with torch.inference_mode():
        final, stages = test_model.forward_intermediates(x)
        logits = test_model.forward_head(final)
    for i, stage in enumerate(stages):
        ref = expected[f"stage{i + 1}"]
        assert stage.shape == ref.shape
        torch.testing.assert_close(stage, ref, atol=stage_atol, rtol=0, msg=f"stage{i + 1} of {io_file}")
    torch.testing.assert_close(logits, expected["logits"], atol=logits_atol, rtol=0)


@pytest.mark.parametrize("chunk_bytes, images_per_chunk", [(1, 1), (0, 2), (2 ** 40, 2)])
def test_cpu_chunked_mlp_equals_whole_batch(test_model, monkeypatch, chunk_bytes, images_per_chunk) -> None:
    """Image-by-image MLPs (the CPU cache blocking) give the official outputs and the same gradients."""
    state_dict = checkpoint_filter_fn(load_file(FIXTURES / "vvt_test_official.safetensors"), test_model)
    test_model.load_state_dict(state_dict, strict=True)
    expected = load_file(FIXTURES / "vvt_test_io_160x256.safetensors")
    x = expected["input"]
    assert x.shape[0] == 2
    monkeypatch.setattr(vvt.VvtMlp, "cpu_chunk_bytes", 0)
    whole_logits = test_model(x.requires_grad_(True))
    (whole_grad,) = torch.autograd.grad(whole_logits.square().sum(), x)
    monkeypatch.setattr(vvt.VvtMlp, "cpu_chunk_bytes", chunk_bytes)
    mlp = test_model.stages[0].blocks[0].mlp
    assert mlp.images_per_chunk(torch.empty(2, 40 * 64, 8)) == images_per_chunk
    with torch.inference_mode():
        final, stages = test_model.forward_intermediates(x.detach())
        logits = test_model.forward_head(final)
    for i, stage in enumerate(stages):
        torch.testing.assert_close(stage, expected[f"stage{i + 1}"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, expected["logits"], atol=1e-6, rtol=0)
    chunked_logits = test_model(x)
    (chunked_grad,) = torch.autograd.grad(chunked_logits.square().sum(), x)
    torch.testing.assert_close(chunked_logits, whole_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked_grad, whole_grad, atol=1e-6, rtol=1e-5)


def test_mlp_is_not_chunked_off_the_cpu() -> None:
    mlp = vvt.VvtMlp(8, 768, device="meta")
    assert mlp.images_per_chunk(torch.empty(8, 3136, 8, device="meta")) == 8
    assert vvt.VvtMlp(8, 768).images_per_chunk(torch.empty(8, 3136, 8)) == 1  # 9.6 MB per image


def test_official_pth_wrappers_and_native_keys(test_model: nn.Module, tmp_path: Path) -> None:
    official = load_file(FIXTURES / "vvt_test_stress_weights.safetensors")
    path = tmp_path / "official.pth"
    torch.save({"model": official}, path)
    converted = checkpoint_filter_fn(torch.load(path, weights_only=True), test_model)
    assert converted.keys() == test_model.state_dict().keys()
    for key, value in checkpoint_filter_fn({"state_dict": official}).items():
        torch.testing.assert_close(value, converted[key], atol=0, rtol=0)
    # q, k, v are fused in the order q | k | v
    fused = converted["stages.0.blocks.0.attn.qkv.weight"]
    torch.testing.assert_close(fused[:8], official["block1.0.attn.q_proj.weight"], atol=0, rtol=0)
    torch.testing.assert_close(fused[8:16], official["block1.0.attn.k_proj.weight"], atol=0, rtol=0)
    # a native state dict passes through unchanged
    native = test_model.state_dict()
    assert checkpoint_filter_fn(native, test_model).keys() == native.keys()
    del official["block1.0.attn.v_proj.bias"]
    with pytest.raises(KeyError, match="v_proj.bias"):
        checkpoint_filter_fn(official)


@pytest.mark.parametrize("size", [(200, 224), (224, 100), (33, 64)])
def test_size_not_multiple_of_32_raises(test_model: nn.Module, size: tuple) -> None:
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]}.*multiples of 32"):
        test_model(torch.randn(1, 3, *size))


def test_features_only_gives_four_nchw_maps() -> None:
    model = timm.create_model("vvt_tiny", features_only=True, embed_dims=[16, 32, 40, 64], depths=[1, 1, 1, 1])
    maps = model(torch.randn(2, 3, 64, 96))
    assert model.feature_info.channels() == [16, 32, 40, 64]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 40, 4, 6), (2, 64, 2, 3)]


def test_forward_intermediates_match_forward_and_stages(test_model: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 128)
    with torch.inference_mode():
        final, maps = test_model.forward_intermediates(x)
        torch.testing.assert_close(final, test_model.forward_features(x), atol=0, rtol=0)
        torch.testing.assert_close(test_model.forward_head(final), test_model(x), atol=0, rtol=0)
        only_last = test_model.forward_intermediates(x, indices=1, intermediates_only=True)
        outputs = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in test_model.stage_modules()]
        test_model(x)
        for hook in hooks:
            hook.remove()
    for info, fmap, hooked in zip(test_model.feature_info, maps, outputs):
        assert info["module"].startswith("stages.")
        assert fmap.shape == (2, info["num_chs"], 64 // info["reduction"], 128 // info["reduction"])
        torch.testing.assert_close(fmap, hooked, atol=0, rtol=0)
    torch.testing.assert_close(only_last[0], maps[-1], atol=0, rtol=0)
    test_model.reset_classifier(3)
    assert test_model.get_classifier().out_features == 3
    assert test_model(x).shape == (2, 3)


def _naive_attention(attn: VicinityAttention, x: torch.Tensor, size: tuple) -> torch.Tensor:
    """Vicinity attention written out as the official code does: 4d concatenations, six clamps."""
    def clamp(t):
        return t.sign() * t.abs().clamp(1e-4, 1e4)

    def angles(h, w):
        index = torch.arange(h * w)
        return math.pi / 2 * (index // w) / h, math.pi / 2 * (index % w) / w

    def expand(t, a, b):  # (B, L, heads, d) -> (B, L, heads, 4d)
        a, b = a.reshape(1, -1, 1, 1), b.reshape(1, -1, 1, 1)
        return torch.cat([t * a.cos(), t * a.sin(), t * b.cos(), t * b.sin()], dim=-1)

    B, N, C = x.shape
    H, W = size
    heads, d = attn.num_heads, attn.head_dim
    gate = attn.se_fc(x.mean(1))
    w_q, w_k, w_v = attn.qkv.weight.chunk(3)
    b_q, b_k, b_v = attn.qkv.bias.chunk(3)
    kv_in, kv_size = x, size
    if attn.sr is not None:
        reduced = attn.sr(x.transpose(1, 2).reshape(B, C, H, W))
        kv_size = reduced.shape[-2:]
        kv_in = attn.norm(reduced.flatten(2).transpose(1, 2))
    q = torch.relu(nn.functional.linear(x, w_q, b_q)).view(B, N, heads, d)
    k = torch.relu(nn.functional.linear(kv_in, w_k, b_k)).view(B, -1, heads, d)
    v = nn.functional.linear(kv_in, w_v, b_v).view(B, -1, heads, d)
    q_, k_ = expand(q, *angles(H, W)), expand(k, *angles(*kv_size))
    kv = clamp(torch.einsum("bnhi,bnhj->bhij", k_, v))
    z = clamp(1 / (torch.einsum("bnhi,bhi->bnh", q_, k_.sum(1)) + 1e-4))
    out = clamp(clamp(torch.einsum("bnhi,bhij->bnhj", q_, kv)) * z.unsqueeze(-1))
    out = clamp(attn.proj(out.reshape(B, N, heads * d)))
    return clamp(out + out * gate.unsqueeze(1))


@pytest.mark.parametrize("sr_ratio", [1, 2])
def test_fast_attention_equals_naive_formula(sr_ratio: int) -> None:
    torch.manual_seed(0)
    attn = VicinityAttention(24, num_heads=3, fr_ratio=2, sr_ratio=sr_ratio).double()
    for param in attn.parameters():
        nn.init.normal_(param, 0.0, 0.3)
    with torch.no_grad():  # head 0: ReLU(q) is exactly 0, so its output is 0 and z = 1e4
        attn.qkv.weight[:4].zero_()
        attn.qkv.bias[:4].fill_(-1.0)
    x = torch.randn(2, 8 * 12, 24, dtype=torch.double)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, (8, 12)), _naive_attention(attn, x, (8, 12)), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("sr_ratio", [1, 2])
def test_block_gradients_are_correct(sr_ratio: int) -> None:
    block = VvtBlock(8, num_heads=2, mlp_ratio=2, sr_ratio=sr_ratio).double()
    for param in block.parameters():
        nn.init.normal_(param, 0.0, 0.5)
    x = torch.randn(1, 2 * 4, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: block(t, (2, 4)), (x,), eps=1e-7, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(linear=True), "linear=True"),
    (dict(num_stages=3), "num_stages=3"),
    (dict(prod_types=["left", "up", "left", "left"]), "prod_types"),
    (dict(embed_dims=[96, 160, 320]), "4 entries"),
    (dict(fr_ratios=[2, 2, 2, 128]), "stage 3"),
])
def test_unsupported_official_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VvtCfg(**kwargs)


def test_unknown_keyword_and_missing_weights_raise() -> None:
    with pytest.raises(TypeError, match="embed_dim"):
        vvt.VicinityVisionTransformer(embed_dim=64)
    with pytest.raises(ValueError, match="checkpoint file"):
        timm.create_model("vvt_tiny", pretrained=True)


def test_sr_ratio_rejects_indivisible_grid() -> None:
    model = timm.create_model("vvt_tiny", embed_dims=[16, 32, 40, 64], depths=[1, 1, 1, 1], sr_ratios=[16, 4, 2, 1])
    assert sum(p.numel() for n, p in model.named_parameters() if ".attn.sr." in n or ".attn.norm." in n) > 0
    model(torch.randn(1, 3, 64, 128))  # stage grids 16x32, 8x16, 4x8: divisible by 16, 4, 2
    with pytest.raises(ValueError, match="sr_ratio 16"):
        model(torch.randn(1, 3, 96, 128))  # stage-1 grid 24x32: 24 is not a multiple of 16


# ---- the training path against the implementation it replaced (issue 11) ------------------------------------


def _reference_abs_clamp_(x: torch.Tensor) -> torch.Tensor:
    sign = x.sign()
    return x.abs_().clamp_(1e-4, 1e4).mul_(sign)


def _reference_attention_forward(self: VicinityAttention, x: torch.Tensor, feat_size: tuple) -> torch.Tensor:
    """VicinityAttention.forward before the training speed-up: in-place ReLU of the qkv slice and in-place clamps."""
    B, N, C = x.shape
    d, h = self.head_dim, self.num_heads
    gate = self.se_fc(x.mean(dim=1))
    qkv = self.qkv(x)
    qkv[..., :2 * self.attn_dim].relu_()
    q, k, v = qkv.view(B, N, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    weights = vvt.vicinity_weights(feat_size[0], feat_size[1], x.device, x.dtype)
    q = (q.unsqueeze(-2) * weights).flatten(-2)
    k = (k.unsqueeze(-2) * weights).flatten(-2)
    kv = _reference_abs_clamp_(k.transpose(-2, -1) @ v)
    out = q @ torch.cat([kv, k.sum(dim=-2).unsqueeze(-1)], dim=-1)
    z = out[..., d:].add(1e-4).reciprocal().clamp(1e-4, 1e4)
    x = _reference_abs_clamp_(_reference_abs_clamp_(out[..., :d]).mul_(z))
    x = _reference_abs_clamp_(self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim)))
    return x.mul_(gate.unsqueeze(1) + 1).clamp_(-1e4, 1e4)


def _reference_mlp_images(self: vvt.VvtMlp, x: torch.Tensor, feat_size: tuple) -> torch.Tensor:
    x = self.dwconv(self.fc1(x).view(x.shape[0], feat_size[0], feat_size[1], -1).permute(0, 3, 1, 2))
    x = torch.ops.aten.gelu_(x.flatten(2).transpose(1, 2))
    return self.drop(self.fc2(self.drop(x)))


@pytest.mark.parametrize("sr_ratio", [1, 2])
def test_attention_gradients_equal_naive_formula(sr_ratio: int) -> None:
    torch.manual_seed(0)
    attn = VicinityAttention(24, num_heads=3, fr_ratio=2, sr_ratio=sr_ratio).double()
    for param in attn.parameters():
        nn.init.normal_(param, 0.0, 0.3)
    x = torch.randn(2, 8 * 12, 24, dtype=torch.double, requires_grad=True)
    grad_out = torch.randn(2, 8 * 12, 24, dtype=torch.double)
    inputs = [x, *attn.parameters()]
    got = torch.autograd.grad(attn(x, (8, 12)), inputs, grad_out)
    expected = torch.autograd.grad(_naive_attention(attn, x, (8, 12)), inputs, grad_out)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_abs_clamp_gradient_is_the_pass_through_mask() -> None:
    x = torch.tensor([0.0, 5e-5, -5e-5, 1e-4, -0.5, 2.0, 1e4, -2e4], requires_grad=True)
    y = vvt._abs_clamp(x)
    torch.testing.assert_close(y.detach(), torch.tensor([0.0, 1e-4, -1e-4, 1e-4, -0.5, 2.0, 1e4, -1e4]))
    (grad,) = torch.autograd.grad(y, x, torch.arange(1.0, 9.0))
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, 0.0, 4.0, 5.0, 6.0, 7.0, 0.0]))
    with torch.no_grad():
        z = x.detach().clone()
        assert vvt._abs_clamp(z) is z  # in place without autograd


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("chunk_bytes", [0, 1])
def test_training_loss_and_gradients_equal_reference(monkeypatch, train: bool, chunk_bytes: int) -> None:
    """Loss and every parameter gradient equal those of the in-place implementation the training path
    replaced, in train (with stochastic depth) and eval mode, whole batch and one image per MLP chunk."""
    torch.manual_seed(0)
    model = timm.create_model("vvt_tiny", **{**_official_kwargs(), "drop_path_rate": 0.2 if train else 0.0})
    state_dict = checkpoint_filter_fn(load_file(FIXTURES / "vvt_test_official.safetensors"), model)
    model.load_state_dict(state_dict, strict=True)
    model.train(train)
    x = load_file(FIXTURES / "vvt_test_io_160x256.safetensors")["input"]
    labels = torch.arange(x.shape[0])
    monkeypatch.setattr(vvt.VvtMlp, "cpu_chunk_bytes", chunk_bytes)
    names = [name for name, _ in model.named_parameters()]

    def loss_and_grads():
        torch.manual_seed(1)
        loss = nn.functional.cross_entropy(model(x), labels)
        return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))

    loss, grads = loss_and_grads()
    monkeypatch.setattr(VicinityAttention, "forward", _reference_attention_forward)
    monkeypatch.setattr(vvt.VvtMlp, "_forward_images", _reference_mlp_images)
    expected_loss, expected_grads = loss_and_grads()
    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-7)
    for name, grad, expected in zip(names, grads, expected_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_nano_is_a_narrow_tiny() -> None:
    # medvit's own variant (no official weights): VVT-Tiny's depths, ratios and attention at 3/5-1/2 width
    nano, tiny = vvt.model_cfgs["vvt_nano"], vvt.model_cfgs["vvt_tiny"]
    assert nano.embed_dims == (48, 96, 192, 320) and nano.mlp_ratios == (4, 4, 4, 4)
    assert (nano.depths, nano.fr_ratios, nano.sr_ratios) == (tiny.depths, tiny.fr_ratios, tiny.sr_ratios)
    assert all(d // h == 48 or d // h == 64 for d, h in zip(nano.embed_dims, nano.num_heads))
    with torch.device("meta"):
        model = timm.create_model("vvt_nano")
    assert sum(p.numel() for p in model.parameters()) == 4_778_040
