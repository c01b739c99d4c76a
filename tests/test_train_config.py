"""medvit.train.config: every key is type-checked from the dataclass annotations, image_size included."""

import typing

import pytest

from medvit.train.config import DistillConfig, TrainConfig, config_from_dict, config_to_dict, load_config


def test_every_default_passes_its_own_type_check():
    """A new field whose annotation the checker does not know fails here, not in a user's run."""
    defaults = config_to_dict(TrainConfig())
    assert config_from_dict(defaults) == TrainConfig()
    assert set(typing.get_type_hints(TrainConfig)) == set(defaults)
    assert set(typing.get_type_hints(DistillConfig)) == set(defaults["distill"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("image_size=64", [64, 64]),
        ("image_size=[48]", [48, 48]),
        ("image_size=[32, 48]", [32, 48]),
        ("pretrained=true", True),
        ("pretrained=weights/x.safetensors", "weights/x.safetensors"),
        ("lr=1", 1.0),
        ("lr=3e-4", 3e-4),  # YAML 1.1 reads an exponent without a dot as a string
        ("min_lr=1E-6", 1e-6),
        ("layer_decay=null", None),
        ("distill.teacher=runs/teacher", "runs/teacher"),
        ("model_kwargs={drop_path_rate: 0.1}", {"drop_path_rate": 0.1}),
    ],
)
def test_values_of_the_annotated_type_are_accepted(override, expected):
    cfg = load_config(None, [override])
    key = override.split("=")[0]
    value = getattr(cfg.distill, "teacher") if key == "distill.teacher" else getattr(cfg, key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=2.5", "config key 'epochs': expected an integer, got 2.5"),
        ("epochs=true", "config key 'epochs': expected an integer, got True"),
        ("epochs=null", "config key 'epochs': expected an integer, got None"),
        ("lr=fast", "config key 'lr': expected a number, got 'fast'"),
        ("lr=.inf", "config key 'lr': expected a number, got inf"),
        ("compile=1", "config key 'compile': expected true/false, got 1"),
        ("amp=1", "config key 'amp': expected true/false, got 1; it is retired, use precision: auto|fp32|bf16"),
        ("precision=fp16", "config key 'precision': got 'fp16'; allowed: auto, fp32, bf16"),
        ("train_images_per_epoch=0", "config key 'train_images_per_epoch': 0 is out of range; allowed: [1, inf]"),
        ("model=3", "config key 'model': expected a string, got 3"),
        ("model_kwargs=[1]", "config key 'model_kwargs': expected a mapping, got [1]"),
        ("distill.teacher=5", "config key 'distill.teacher': expected a string or null, got 5"),
        ("layer_decay=[0.5]", "config key 'layer_decay': expected a number or null, got [0.5]"),
        ("pretrained=3", "config key 'pretrained': expected true/false or a file path, got 3"),
        ("early_stopping=3", "config key 'early_stopping': expected a mapping, got 3"),
    ],
)
def test_wrong_types_name_the_key_and_the_type(override, message):
    with pytest.raises(ValueError) as error:
        load_config(None, [override])
    assert str(error.value) == message


@pytest.mark.parametrize("value", ["0", "-32", "[32, 0]", "[32, 32, 3]", "[]", "32.0", "[32.5]", "true", "'224'", "null"])
def test_image_size_must_be_one_or_two_positive_ints(value):
    with pytest.raises(ValueError, match=r"config key 'image_size': expected one positive integer or \[H, W\]"):
        load_config(None, [f"image_size={value}"])


def test_image_size_is_checked_when_built_in_python_too():
    assert TrainConfig(image_size=96).image_size == [96, 96]
    assert TrainConfig(image_size=(64, 80)).image_size == [64, 80]
    with pytest.raises(ValueError, match="config key 'image_size'"):
        TrainConfig(image_size=[64, -1])


def test_retired_amp_key_reads_as_precision():
    """Configs and run folders written before ``precision`` existed keep loading with the same meaning."""
    assert load_config(None, ["amp=true"]).precision == "auto"
    assert load_config(None, ["amp=false"]).precision == "fp32"
    assert load_config(None, ["amp=false", "precision=fp32"]).precision == "fp32"
    with pytest.raises(ValueError, match="'amp: false' and 'precision' disagree"):
        load_config(None, ["amp=false", "precision=bf16"])
    assert "amp" not in config_to_dict(load_config(None, ["amp=true"]))
