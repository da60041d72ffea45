"""The inverted-residual (MBConv) teaching formulas of helpers.block_costs (notebook 03, step 4) against
Keras: one block in many shapes, with and without its shortcut, dermsep_net's residual unit beside it, and
all 16 blocks of EfficientNet-Lite0."""

from __future__ import annotations

import keras
import pytest

from helpers import backbones, block_costs
from helpers.block_costs import (
    keras_counts,
    lite0_block_costs,
    mbconv_check,
    mbconv_macs,
    mbconv_model,
    mbconv_params,
    mbconv_shortcut,
    separable_unit_macs,
    separable_unit_model,
    separable_unit_params,
)
from helpers.models import count_macs, dermsep_net, layer_table


def _has_add(model: keras.Model) -> bool:
    return any(isinstance(layer, keras.layers.Add) for layer in model.layers)


@pytest.mark.parametrize(
    ("hw", "c_in", "c_out", "expansion", "kernel", "stride"),
    [
        (16, 40, 40, 6, 5, 1),  # Lite0's block 4 at 128 px: the notebook's example, with a shortcut
        (16, 40, 40, 6, 5, 2),  # same widths, stride 2: no shortcut, depthwise and project at 8 x 8
        (15, 16, 24, 6, 3, 2),  # odd side: 15 -> 8 ("same" padding rounds up)
        (8, 32, 16, 1, 3, 1),  # expansion 1: no expand conv (Lite0's block 0)
        (9, 24, 24, 1, 3, 2),  # expansion 1 and stride 2
        (4, 80, 112, 4, 5, 1),  # widths change at stride 1: no shortcut
        (7, 12, 12, 3, 7, 1),
    ],
)
def test_mbconv_formulas_match_keras(hw, c_in, c_out, expansion, kernel, stride):
    model = mbconv_model(hw, c_in, c_out, expansion, kernel, stride)
    counts = keras_counts(model)
    assert counts["keras_params"] == mbconv_params(c_in, c_out, expansion, kernel)
    assert counts["keras_trainable"] == mbconv_params(c_in, c_out, expansion, kernel, trainable=True)
    assert counts["counted_macs"] == mbconv_macs(hw, hw, c_in, c_out, expansion, kernel, stride)
    assert _has_add(model) == mbconv_shortcut(c_in, c_out, stride)
    assert model.output_shape[1:] == (block_costs.same_padding_side(hw, stride),) * 2 + (c_out,)
    assert any(layer.name == "mbconv_expand" for layer in model.layers) == (expansion != 1)


def test_the_shortcut_costs_no_parameters_and_the_stride_only_shrinks_the_later_convs():
    kept, strided = mbconv_model(16, 40, 40, 6, 5), mbconv_model(16, 40, 40, 6, 5, 2)
    widened = mbconv_model(16, 40, 48, 6, 5)
    assert _has_add(kept) and not _has_add(strided) and not _has_add(widened)
    assert kept.count_params() == strided.count_params() == mbconv_params(40, 40, 6, 5)
    expand = 16 * 16 * 40 * 240  # at the input resolution in both
    rest = 5 * 5 * 240 + 240 * 40  # depthwise + project per output position
    assert count_macs(kept) == expand + 16 * 16 * rest
    assert count_macs(strided) == expand + 8 * 8 * rest


def test_the_notebook_example_checks_by_hand():
    wide = 6 * 40
    by_hand = 40 * wide + 4 * wide + 25 * wide + 4 * wide + wide * 40 + 4 * 40
    assert mbconv_params(40, 40, 6, 5) == by_hand
    assert mbconv_params(40, 40, 6, 5, trainable=True) == by_hand - 2 * (wide + wide + 40)
    assert mbconv_macs(16, 16, 40, 40, 6, 5) == 16 * 16 * (40 * wide + 25 * wide + wide * 40)
    assert separable_unit_params(40) == 2 * (9 * 40 + 4 * 40 + 40 * 40 + 4 * 40)
    assert separable_unit_macs(16, 16, 40) == 2 * 16 * 16 * (9 * 40 + 40 * 40)


def test_the_separable_unit_is_dermsep_nets_own():
    """The standalone unit has the layers of the residual unit inside dermsep_net (16 px, one 40-wide stage:
    the stem keeps the resolution and the unit runs on 16 x 16 x 40)."""
    inside = layer_table(dermsep_net(16, widths=(40,)))
    inside = inside[inside["layer"].str.startswith("stage1_res_")].reset_index(drop=True)
    alone = layer_table(separable_unit_model(16, 40))
    alone["layer"] = alone["layer"].str.replace("unit_", "stage1_res_", n=1)
    assert alone.to_dict("records") == inside.to_dict("records")
    assert alone["params"].sum() == separable_unit_params(40)
    assert alone["macs"].sum() == separable_unit_macs(16, 16, 40)


def test_mbconv_check_compares_both_blocks_with_keras():
    check = mbconv_check(hw=8, channels=24, expansion=4, kernel=3)
    assert len(check) == 2
    for formula, keras_value in [
        ("formula_params", "keras_params"),
        ("formula_trainable", "keras_trainable"),
        ("formula_macs", "counted_macs"),
    ]:
        assert (check[formula] == check[keras_value]).all()
    assert check["formula_params"].iloc[0] == mbconv_params(24, 24, 4, 3)
    assert check["formula_macs"].iloc[1] == separable_unit_macs(8, 8, 24)


def test_the_formulas_add_up_block_by_block_to_efficientnet_lite0():
    img_size = 100  # odd sides on the way down: 50, 25, 13, 7, 4
    model = backbones.efficientnet_lite0(img_size, pretrained=False)
    blocks = lite0_block_costs(img_size, layer_table(model))
    assert len(blocks) == 16 and blocks["side_out"].iloc[-1] == 4
    assert (blocks["params"] == blocks["keras_params"]).all()
    assert (blocks["macs"] == blocks["counted_macs"]).all()
    for name, row in blocks.iterrows():
        assert any(layer.name == f"{name}_add" for layer in model.layers) == row["shortcut"]
