"""hnasnet backbone: end-point shapes, exact parameter counts, official names, other genotypes."""

import json

import keras
import numpy as np
import tensorflow as tf

from nas_deeplab import architecture
from nas_deeplab.model.backbone import layer_transitions
from nas_deeplab.model.deeplab import build_backbone
from nas_deeplab.official.names import official_variable_map
from nas_deeplab.model.summary import count_trainable_params

# Official graph at 321x321, F=20 (spec section 1.4).
EXPECTED_321_F20 = {
    "Stem": (81, 81, 128),
    "Cell_0": (81, 81, 100), "Cell_1": (81, 81, 100), "Cell_2": (81, 81, 100),
    "Cell_3": (41, 41, 200), "Cell_4": (21, 21, 400), "Cell_5": (41, 41, 200),
    "Cell_6": (21, 21, 400), "Cell_7": (21, 21, 400), "Cell_8": (11, 11, 800),
    "Cell_9": (11, 11, 800), "Cell_10": (21, 21, 400), "Cell_11": (41, 41, 200),
    "features": (41, 41, 200),
}


def test_end_point_shapes_321_f20(backbone_f20):
    ends = backbone_f20(keras.Input(shape=(321, 321, 3)))
    assert {k: tuple(v.shape[1:]) for k, v in ends.items()} == EXPECTED_321_F20


def test_transitions_follow_the_official_rule():
    got = layer_transitions(architecture.published(20))
    strides = [s for s, _ in got]
    ups = [i for i, (_, u) in enumerate(got) if u]
    assert strides == [1, 1, 1, 2, 2, 1, 2, 1, 2, 1, 1, 1]
    assert ups == [5, 10, 11]


def test_backbone_param_count_f20(backbone_f20):
    assert count_trainable_params(backbone_f20) == 7_030_832




def _names_shapes(model):
    return [(k, tuple(int(d) for d in v.shape)) for k, v in official_variable_map(model).items()]


def test_official_names_f20(backbone_f20, official_vars):
    assert _names_shapes(backbone_f20) == official_vars("official_hnasnet_vars_f20.tsv")
    # Every variable is mapped exactly once.
    mapped = {id(v) for v in official_variable_map(backbone_f20).values()}
    assert mapped == {id(v) for v in backbone_f20.variables}


def test_param_count_and_official_names_f8(official_vars):
    bb = build_backbone(architecture.published(8), input_shape=(None, None, 3))
    assert count_trainable_params(bb) == 1_272_416
    assert len(bb.variables) == 1323
    assert _names_shapes(bb) == official_vars("official_hnasnet_vars_f8.tsv")


# A hand-made genotype: every op kind, skip/pool reading h0/h1 in stride-2 cells, and a path that
# goes down, up and down again.
CUSTOM_OPS = ("skip_connect", "avg_pool_3x3",
              "max_pool_3x3", "separable_5x5_2",
              "skip_connect", "atrous_3x3",
              "avg_pool_3x3", "atrous_5x5",
              "separable_3x3_2", "max_pool_3x3")
CUSTOM_IDX = (0, 1, 1, 2, 3, 0, 2, 4, 5, 1)
CUSTOM_BACKBONE = (1, 2, 1, 0, 1, 2, 3, 2)


def test_custom_genotype_builds_and_runs():
    arch = architecture.Architecture(CUSTOM_OPS, CUSTOM_IDX, CUSTOM_BACKBONE, filter_multiplier=4)
    # As search.py hands it over: through the architecture.json schema.
    arch = architecture.Architecture.from_dict(json.loads(arch.to_json()))
    bb = build_backbone(arch)
    x = tf.random.uniform((2, 33, 33, 3), -1.0, 1.0)
    ends = bb(x, training=False)
    f = 4
    # Stem OS4 = 9; levels 1,2,1,0,1,2,3,2 -> sizes 5,3,5,9,5,3,2,3 (upsampling gives 2d-1).
    expected_hw = [5, 3, 5, 9, 5, 3, 2, 3]
    for i, level in enumerate(CUSTOM_BACKBONE):
        assert tuple(ends[f"Cell_{i}"].shape) == (2, expected_hw[i], expected_hw[i],
                                                  5 * f * 2 ** level), i
    assert np.all(np.isfinite(ends["features"].numpy()))
    assert float(tf.reduce_min(ends["features"])) >= 0.0   # ReLU on the last cell

    names = official_variable_map(bb)
    assert len(names) == len(bb.variables)
    # Skip reading h0 in a stride-2 cell projects with '1x1' + 'bn_1'; at stride 1 it is identity.
    assert "hnasnet/cell_0/comb_iter_0/left/1x1/weights" in names
    assert "hnasnet/cell_0/comb_iter_0/left/bn_1/moving_variance" in names
    assert not any(k.startswith("hnasnet/cell_2/comb_iter_0/left/") for k in names)
    # Pools never project inside a cell (their input already has the cell's filters).
    assert not any(k.startswith("hnasnet/cell_0/comb_iter_0/right/") for k in names)
    assert names["hnasnet/cell_1/comb_iter_1/right/separable_5x5_1/depthwise_weights"].shape == \
        (5, 5, 4 * f, 1)
