"""Shared, session-cached models for the network tests (building a full model costs seconds)."""

import pytest
import spec_tables


@pytest.fixture(scope="session")
def official_vars():
    """official_vars(filename) -> [(name, shape tuple)] from a spec TSV; skips when absent."""
    return spec_tables.official_vars


@pytest.fixture(scope="session")
def backbone_f20(deeplab_s_regular):
    """Published backbone, F=20 (the backbone layer of Auto-DeepLab-S; saves a build)."""
    return deeplab_s_regular.backbone


@pytest.fixture(scope="session")
def deeplab_s_separable():
    """Auto-DeepLab-S with the official default (separable) heads, 19 classes, dynamic input."""
    from nas_deeplab import architecture
    from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
    return build_deeplab(architecture.preset("auto_deeplab_s"), ModelOptions(num_classes=19))


@pytest.fixture(scope="session")
def deeplab_s_regular():
    """Auto-DeepLab-S with regular-conv heads (the paper's parameter counts)."""
    from nas_deeplab import architecture
    from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
    return build_deeplab(architecture.preset("auto_deeplab_s"),
                         ModelOptions(num_classes=19, aspp_with_separable_conv=False,
                                      decoder_use_separable_conv=False))


@pytest.fixture(scope="session")
def small_deeplab():
    """A small full model (F=4, 6 layers with down and up moves, decoder at stride 4, narrow
    heads, drop path on) for forward-pass tests."""
    from nas_deeplab import architecture
    from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
    arch = architecture.Architecture(architecture.PUBLISHED_OPERATIONS,
                                     architecture.PUBLISHED_HIDDENSTATE_INDICES,
                                     (0, 0, 0, 1, 2, 1), filter_multiplier=4)
    return build_deeplab(arch, ModelOptions(num_classes=3, aspp_convs_filters=16, decoder_filters=16,
                                            drop_path_keep_prob=0.7, total_training_steps=10))
