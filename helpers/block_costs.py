"""Teaching formulas for notebook 03: the parameters and multiply-accumulates of the inverted-residual
(MBConv) block of the pretrained default (:func:`helpers.backbones.mbconv_block`) and of the project's own
residual unit of two separable convolutions (``dermsep_net``), checked against Keras' counts."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from helpers.backbones import LITE0_STAGES, LITE0_STEM, mbconv_block
from helpers.models import count_macs

BN_VALUES, BN_TRAINABLE = 4, 2
"""Values a BatchNormalization layer keeps per channel (gamma, beta, moving mean, moving variance) and how
many of them are trained by gradient descent (gamma and beta)."""


def same_padding_side(side: int, stride: int) -> int:
    """Output side of a ``"same"``-padded conv: ceil(side / stride)."""
    return -(-side // stride)


def mbconv_shortcut(c_in: int, c_out: int, stride: int) -> bool:
    """Whether :func:`mbconv_block` adds its input to its output: only when the shape is kept."""
    return stride == 1 and c_in == c_out


def mbconv_params(c_in: int, c_out: int, expansion: int, kernel: int, trainable: bool = False) -> int:
    """Parameters of :func:`mbconv_block`, with ``wide`` = expansion * c_in: a 1x1 expand conv c_in*wide
    (none when ``expansion`` is 1), a k x k depthwise conv k^2*wide, a 1x1 project conv wide*c_out, no
    biases, each conv followed by BatchNorm (4 values per channel; ``trainable``: count only its 2 trained
    ones)."""
    wide, bn = expansion * c_in, BN_TRAINABLE if trainable else BN_VALUES
    expand = c_in * wide + bn * wide if expansion != 1 else 0
    return expand + kernel * kernel * wide + bn * wide + wide * c_out + bn * c_out


def mbconv_macs(
    h_in: int, w_in: int, c_in: int, c_out: int, expansion: int, kernel: int, stride: int = 1
) -> int:
    """Multiply-accumulates of :func:`mbconv_block` on an ``h_in`` x ``w_in`` map: the expand conv at the
    input resolution, H_in*W_in*c_in*wide; the depthwise conv (which applies the stride) and the project
    conv at the output resolution, H_out*W_out*(k^2*wide + wide*c_out)."""
    wide = expansion * c_in
    out = same_padding_side(h_in, stride) * same_padding_side(w_in, stride)
    expand = h_in * w_in * c_in * wide if expansion != 1 else 0
    return expand + out * (kernel * kernel * wide + wide * c_out)


def separable_unit_params(width: int, kernel: int = 3, trainable: bool = False) -> int:
    """Parameters of dermsep_net's residual unit: two separable convs at constant ``width``, each a k x k
    depthwise conv + BatchNorm and a 1x1 pointwise conv + BatchNorm, no biases."""
    bn = BN_TRAINABLE if trainable else BN_VALUES
    return 2 * (kernel * kernel * width + bn * width + width * width + bn * width)


def separable_unit_macs(h: int, w: int, width: int, kernel: int = 3) -> int:
    """Multiply-accumulates of dermsep_net's residual unit on an ``h`` x ``w`` map: 2*H*W*(k^2*C + C^2)."""
    return 2 * h * w * (kernel * kernel * width + width * width)


def mbconv_model(hw: int, c_in: int, c_out: int, expansion: int, kernel: int, stride: int = 1) -> keras.Model:
    """One :func:`mbconv_block` on an ``hw`` x ``hw`` x ``c_in`` map, as a model (layers ``mbconv_*``)."""
    inputs = keras.Input((hw, hw, c_in))
    return keras.Model(
        inputs, mbconv_block(inputs, expansion, kernel, stride, c_out, "mbconv"), name="mbconv"
    )


def separable_unit_model(hw: int, width: int) -> keras.Model:
    """dermsep_net's residual unit (``helpers.models._residual_unit``, without squeeze-excitation) on an
    ``hw`` x ``hw`` x ``width`` map, as a model with the same layers and names (``unit_*``): two 3x3
    depthwise + 1x1 pointwise convs with BatchNorm, ReLU after all but the last, the input added, a ReLU."""
    inputs = x = keras.Input((hw, hw, width))
    for part in ("a", "b"):
        name = f"unit_{part}"
        x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_dw_bn")(x)
        x = keras.layers.ReLU(name=f"{name}_dw_relu")(x)
        x = keras.layers.Conv2D(width, 1, use_bias=False, name=f"{name}_pw")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        if part == "a":
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
    x = keras.layers.Add(name="unit_add")([inputs, x])
    return keras.Model(inputs, keras.layers.ReLU(name="unit_out")(x), name="separable_unit")


def keras_counts(model: keras.Model) -> dict[str, int]:
    """Keras' parameter counts (all, trainable) of ``model`` and its MACs (``helpers.models.count_macs``)."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return {
        "keras_params": model.count_params(),
        "keras_trainable": trainable,
        "counted_macs": count_macs(model),
    }


def mbconv_check(
    hw: int = 16,
    channels: int = 40,
    expansion: int = 6,
    kernel: int = 5,
) -> pd.DataFrame:
    """Formula vs Keras parameters (all and trainable) and formula vs counted MACs of an
    MBConv block and of dermsep_net's residual unit, both ``channels`` wide on an ``hw`` x ``hw`` map."""
    blocks = {
        f"MBConv (expansion {expansion}, {kernel}x{kernel})": (
            mbconv_model(hw, channels, channels, expansion, kernel),
            mbconv_params(channels, channels, expansion, kernel),
            mbconv_params(channels, channels, expansion, kernel, trainable=True),
            mbconv_macs(hw, hw, channels, channels, expansion, kernel),
        ),
        "dermsep_net unit (2 separable 3x3)": (
            separable_unit_model(hw, channels),
            separable_unit_params(channels),
            separable_unit_params(channels, trainable=True),
            separable_unit_macs(hw, hw, channels),
        ),
    }
    rows = []
    for name, (model, params, trainable, macs) in blocks.items():
        counts = keras_counts(model)
        rows.append(
            {
                "block": name,
                "formula_params": params,
                "keras_params": counts["keras_params"],
                "formula_trainable": trainable,
                "keras_trainable": counts["keras_trainable"],
                "formula_macs": macs,
                "counted_macs": counts["counted_macs"],
            }
        )
    return pd.DataFrame(rows).set_index("block")


def lite0_block_costs(img_size: int, layers: pd.DataFrame | None = None) -> pd.DataFrame:
    """EfficientNet-Lite0's 16 MBConv blocks at ``img_size``, one row each: expansion, kernel, stride,
    channels and map side in and out, shortcut, and :func:`mbconv_params` / :func:`mbconv_macs`. With
    ``layers`` (``helpers.models.layer_table`` of the model) also Keras' parameters and the counted MACs of
    each block's layers (``block{i}_*``), to check the formulas against."""
    rows, c_in, side = [], LITE0_STEM, same_padding_side(img_size, 2)
    for expansion, kernel, first_stride, c_out, repeats in LITE0_STAGES:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            rows.append(
                {
                    "block": f"block{len(rows)}",
                    "expansion": expansion,
                    "kernel": kernel,
                    "stride": stride,
                    "c_in": c_in,
                    "c_out": c_out,
                    "side_in": side,
                    "side_out": same_padding_side(side, stride),
                    "shortcut": mbconv_shortcut(c_in, c_out, stride),
                    "params": mbconv_params(c_in, c_out, expansion, kernel),
                    "macs": mbconv_macs(side, side, c_in, c_out, expansion, kernel, stride),
                }
            )
            c_in, side = c_out, same_padding_side(side, stride)
    table = pd.DataFrame(rows).set_index("block")
    if layers is not None:
        block = layers["layer"].str.extract(r"^(block\d+)_", expand=False)
        counted = layers.groupby(block)[["params", "macs"]].sum()
        table["keras_params"] = counted["params"].reindex(table.index)
        table["counted_macs"] = counted["macs"].reindex(table.index)
    return table
