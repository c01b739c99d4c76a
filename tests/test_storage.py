"""Per-channel int8 weight storage: small files that load into the plain model with close outputs."""

import torch

from medvit.models import create_model
from medvit.models.storage import MIN_INT8_VALUES, SCALE_SUFFIX, dequantize, quantize
from medvit.run_dir import load_run_weights, read_run_weights, save_run_weights


def test_quantize_is_exact_on_the_int8_grid_and_keeps_vectors():
    weight = torch.tensor([[0.5, -1.0, 0.25, 0.0] * 2048, [2.0, 1.0, -2.0, 0.5] * 2048])  # 2 x 8192 values
    assert weight.numel() == MIN_INT8_VALUES
    tensors, metadata = quantize({"w": weight, "b": torch.tensor([0.1, 0.2]), "n": torch.tensor(3)})
    assert tensors["w"].dtype == torch.int8 and tensors["w"][0, 1] == -127 and tensors["w"][1, 0] == 127
    torch.testing.assert_close(tensors["w" + SCALE_SUFFIX], torch.tensor([1.0, 2.0]) / 127)
    state = dequantize(tensors, metadata)
    assert set(state) == {"w", "b", "n"}
    err = (state["w"] - weight).abs().max(dim=1).values
    assert (err <= weight.abs().max(dim=1).values / 254 + 1e-7).all()  # half a quantisation step
    assert state["b"].dtype == torch.float16 and state["n"].item() == 3
    assert dequantize({"w": weight}, {"format": "pt"})["w"] is weight  # ordinary files pass through


def test_small_kernels_stay_in_fp16():
    """The stem and early depthwise/pointwise kernels (few values, error carried by every later layer)."""
    stem = torch.randn(32, 3, 3, 3)  # 864 values, like EfficientNet-Lite's stem
    tensors, metadata = quantize({"stem": stem, "big": torch.randn(128, 128, 1, 1)})
    assert tensors["stem"].dtype == torch.float16 and "stem" + SCALE_SUFFIX not in tensors
    assert tensors["big"].dtype == torch.int8
    torch.testing.assert_close(dequantize(tensors, metadata)["stem"].float(), stem, atol=2e-3, rtol=1e-3)


def test_int8_file_is_a_quarter_and_predicts_like_the_float_model(tmp_path):
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", num_classes=3, pretrained=True).eval()
    full, small = tmp_path / "fp32.safetensors", tmp_path / "int8.safetensors"
    save_run_weights(model, full)
    save_run_weights(model, small, dtype="int8")
    assert small.stat().st_size < 0.3 * full.stat().st_size
    restored = load_run_weights(create_model("tf_efficientnet_lite0", num_classes=3).eval(), small)
    assert set(read_run_weights(small)) == set(model.state_dict())
    images = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        p, q = model(images).softmax(1), restored(images).softmax(1)
    assert (p - q).abs().max() < 0.05
