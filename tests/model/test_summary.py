"""Parameter / multiply-add counting and the layer table."""

import numpy as np

from nas_deeplab.model import summary

PAPER_S_MULT_ADDS = 333.25e9   # paper Table 2, 1024x2048


def test_multiply_adds_s_at_1024x2048(deeplab_s_regular):
    macs = summary.count_multiply_adds(deeplab_s_regular, input_size=(1024, 2048))
    print(f"\nAuto-DeepLab-S multiply-adds at 1024x2048: {macs / 1e9:.2f}B "
          f"(paper {PAPER_S_MULT_ADDS / 1e9:.2f}B; convs only, see summary.py)")
    # numbers.md: plain conv counting lands 4-6% under the paper.
    assert 0.93 * PAPER_S_MULT_ADDS < macs < PAPER_S_MULT_ADDS


def test_layer_table_rows_and_totals(small_deeplab):
    table = summary.layer_table(small_deeplab, input_size=(321, 321))
    lines = table.splitlines()
    conv0 = next(line for line in lines if line.startswith("hnasnet/conv0 "))
    # 3x3 conv, 3 -> 64 channels, 161x161 output: 161 * 161 * 9 * 3 * 64 multiply-adds.
    assert "(161, 161, 64)" in conv0 and f"{161 * 161 * 9 * 3 * 64:,}" in conv0
    params = sum(int(line.split()[-2].replace(",", "")) if len(line.split()) >= 5
                 else int(line.split()[-1].replace(",", "")) for line in lines[2:])
    assert params == summary.count_trainable_params(small_deeplab)
    macs = summary.count_multiply_adds(small_deeplab, input_size=None)   # shapes of the last trace
    row_macs = [int(line.split()[-1].replace(",", "")) for line in lines[2:]
                if len(line.split()) >= 5]
    assert sum(row_macs) == macs
    assert any(line.startswith("logits/semantic ") for line in lines)


def test_count_trainable_params_counts_only_trainable(deeplab_s_separable):
    total = sum(int(np.prod(v.shape)) for v in deeplab_s_separable.variables)
    assert summary.count_trainable_params(deeplab_s_separable) < total
