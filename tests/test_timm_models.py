"""``timm:<name>`` models: a local state-dict file, the pretrained config's normalisation
inside the model (inputs in [0, 1]), clear errors for unknown names and missing weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch

from car_attacks.evaluation import ExperimentError, check_references, load_config
from car_attacks.evaluation.inputs import load_inputs
from car_attacks.evaluation.shipped_configs import resolve_config_path
from car_attacks.models import load_model, model_spec


def _saved(tmp_path: Path, arch: str = "resnet18") -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    net = timm.create_model(arch, pretrained=False).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_local_weights_and_preprocessing_match_reference(tmp_path: Path) -> None:
    reference, path = _saved(tmp_path)
    net = load_model("timm:resnet18", weights=str(path))
    spec = model_spec("timm:resnet18")
    assert (spec.num_classes, spec.input_shape, spec.bounds) == (1000, (3, 224, 224), (0.0, 1.0))
    cfg = timm.models.get_pretrained_cfg("resnet18").to_dict()
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference((x - mean) / std))
    assert not any(p.requires_grad for p in net.parameters())


def test_input_size_comes_from_the_pretrained_config() -> None:
    cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_384").to_dict()
    spec = model_spec("timm:vit_tiny_patch16_384")
    assert spec.input_shape == tuple(cfg["input_size"]) == (3, 384, 384)
    assert "foolbox_imagenet" not in spec.datasets  # 384x384 inputs


def test_unknown_timm_name() -> None:
    with pytest.raises(ValueError, match="unknown timm model 'resnet181'.*did you mean"):
        model_spec("timm:resnet181")
    with pytest.raises(ValueError, match="unknown timm model"):
        load_model("timm:not_a_model")


def test_missing_or_wrong_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no default weights; pass weights=.*torch.save"):
        load_model("timm:resnet18")
    with pytest.raises(FileNotFoundError):
        load_model("timm:resnet18", weights=str(tmp_path / "missing.pth"))
    _, other = _saved(tmp_path, "resnet10t")
    with pytest.raises(ValueError):
        load_model("timm:resnet18", weights=str(other))


def test_shipped_timm_config_resolves(tmp_path: Path) -> None:
    config, _ = load_config(resolve_config_path("imagenet_timm"))
    assert config.model.name.startswith("timm:") and config.model.weights is None
    check_references(config)  # the weights file is the user's (--set model.weights=...)
    with pytest.raises(ExperimentError, match="pass weights=<file>"):
        load_inputs(config)
    reference, path = _saved(tmp_path, config.model.name.split(":", 1)[1])
    ready = replace(config, model=replace(config.model, weights=str(path)))
    assert check_references(ready)
    net, bounds, x, y = load_inputs(replace(ready, data=replace(ready.data, n=2)))
    assert bounds == (0.0, 1.0) and x.shape == (2, 3, 224, 224)


def test_missing_timm_is_a_clean_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from car_attacks.evaluation import ConfigError

    config, _ = load_config(resolve_config_path("imagenet_timm"))
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(ConfigError, match="model.name.*pip install timm"):
        check_references(config)
