"""Layer tables read from the models, checked against receptive fields worked out by hand."""

from __future__ import annotations

import pytest
from torch import nn

from mnist_repro.core.models import MODELS, ConvBlock, build_model, count_parameters
from mnist_repro.report.receptive_field import layer_table


def rf_path(rows):
    return [(r.n_out, r.j_out, r.r_out) for r in rows]


def test_3x3_conv_from_the_input():
    (row,) = layer_table(nn.Sequential(ConvBlock(1, 8, 3, "BR")))
    # n = 28 - 3 + 1, jump stays 1, r = 1 + (3 - 1) * 1
    assert (row.n_in, row.n_out, row.j_in, row.j_out, row.r_in, row.r_out) == (28, 26, 1, 1, 1, 3)
    assert row.output_shape == (8, 26, 26)
    assert row.params == 8 * 9 + 2 * 8  # conv weights + BatchNorm weight and bias


def test_max_pool_halves_the_map_doubles_the_jump_and_adds_one_pixel():
    rows = layer_table(nn.Sequential(ConvBlock(1, 8, 3), nn.MaxPool2d(2, 2)))
    pool = rows[1]
    # n: floor((26 - 2) / 2) + 1 = 13; j: 1 * 2; r: 3 + (2 - 1) * 1
    assert (pool.kernel, pool.stride, pool.padding) == (2, 2, 0)
    assert (pool.n_in, pool.n_out, pool.j_in, pool.j_out, pool.r_in, pool.r_out) == (26, 13, 1, 2, 3, 4)
    assert pool.params == 0 and pool.output_shape == (8, 13, 13)


def test_1x1_conv_does_not_grow_the_receptive_field():
    rows = layer_table(nn.Sequential(ConvBlock(1, 8, 3), nn.MaxPool2d(2, 2), ConvBlock(8, 4, 1)))
    one_by_one = rows[2]
    assert one_by_one.r_out == one_by_one.r_in == 4
    assert one_by_one.n_out == one_by_one.n_in == 13
    assert one_by_one.j_out == one_by_one.j_in == 2
    assert one_by_one.params == 8 * 4


def test_3x3_conv_after_max_pool_grows_by_twice_the_jump():
    rows = layer_table(nn.Sequential(ConvBlock(1, 8, 3), nn.MaxPool2d(2, 2), ConvBlock(8, 8, 3)))
    conv = rows[2]
    assert conv.j_in == 2
    assert conv.r_out - conv.r_in == 4  # (3 - 1) * 2
    assert (conv.n_in, conv.n_out) == (13, 11)


def test_padding_keeps_the_map_size_but_still_grows_the_field():
    (row,) = layer_table(nn.Sequential(ConvBlock(1, 4, 3, padding=1)))
    assert (row.n_out, row.r_out, row.padding) == (28, 3, 1)


def test_lr_scheduler_model_against_a_hand_computation():
    rows = layer_table(build_model("lr_scheduler", 0.03))
    # (n_out, j_out, r_out) per layer, by hand from n = 28, j = 1, r = 1:
    expected = [
        (26, 1, 3),    # conv 3x3 1->8:    r = 1 + 2*1
        (24, 1, 5),    # conv 3x3 8->16:   r = 3 + 2*1
        (12, 2, 6),    # max-pool 2, s 2:  j = 2, r = 5 + 1*1
        (12, 2, 6),    # conv 1x1 16->8:   unchanged (the published table says 12)
        (10, 2, 10),   # conv 3x3 8->10:   r = 6 + 2*2
        (8, 2, 14),    # conv 3x3 10->16
        (6, 2, 18),    # conv 3x3 16->18
        (1, 12, 28),   # GAP 6, stride 6:  j = 2*6, r = 18 + 5*2
        (1, 12, 28),   # conv 1x1 18->16
        (1, 12, 28),   # conv 1x1 16->10
    ]
    assert rf_path(rows) == expected
    assert [r.params for r in rows] == [88, 1184, 0, 128, 740, 1472, 2628, 0, 320, 160]
    assert rows[-1].output_shape == (10, 1, 1)


# The named architectures and family models of each length, five to seven convs.
@pytest.mark.parametrize("name", [*MODELS, "c8-8-12-12-16", "s16-16-24-24-32-32", "c4-4-4-4-4-4-4", "s8-8-8-8-8-8-8"])
def test_parameter_column_sums_to_the_model_count(name):
    model = build_model(name, 0.1)
    rows = layer_table(model)
    assert sum(r.params for r in rows) == count_parameters(model)
    assert rows[-1].output_shape[1:] == (1, 1)  # every model ends on a 1x1 map before log_softmax
    assert all(r.c_in == prev.c_out for prev, r in zip(rows, rows[1:]))


def test_a_parametrised_layer_it_cannot_place_is_an_error():
    with pytest.raises(ValueError, match="has parameters"):
        layer_table(nn.Sequential(ConvBlock(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)))


def test_the_table_leaves_the_model_in_training_mode():
    model = build_model("dropout", 0.1)
    layer_table(model)
    assert model.training
