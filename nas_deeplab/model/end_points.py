"""Which backbone features the DeepLab heads read, derived from the decoded path.

The official code hard-codes one map per network (`feature_extractor.networks_to_feature_maps`):
`nas_hnasnet` {4: Cell_2, 8: Cell_5, 16: Cell_7}, `nas_pnasnet` {4: Stem, 8: Cell_3, 16: Cell_7}. Those
maps are right only for their own paths. A searched path needs the same choice made by a rule, and
this module is the one place that makes it (the model, inference, export and the official flags all
ask here):

* **Output stride** of a backbone = the stride of its last layer, `4 * 2**backbone[-1]`
  (the ASPP runs on the last cell's output).
* **ASPP rates**: DeepLab's convention, 6/12/18 at output stride 16 and 12/24/36 at 8, i.e.
  `(1, 2, 3) * 96 / output_stride`: 24/48/72 at 4 and 3/6/9 at 32.
* **Decoder end point** at stride s (the low-level feature of DeepLabv3+): the *last cell at stride s
  before the path first reaches its deepest level*; `Stem` (the stem's stride-4 output) when no cell
  is there, which happens only at stride 4 for paths that start at stride 8. Cells after the deepest
  point have already seen the coarse context; the rule picks the finest features of the encoder half.
  It reproduces both official maps: published `[0,0,0,1,2,1,2,2,3,3,2,1]` gives Cell_2/Cell_5/Cell_7,
  pnasnet's `[1,1,1,1,2,2,2,2,3,3,3,3]` gives Stem/Cell_3/Cell_7.
* **Default decoder**: stride 4 when the backbone ends coarser than 4 (DeepLabv3+'s choice), none
  when it already ends at stride 4.
* **Pyramid levels** (`P2`..`P5`, strides 4..32, for heads written for keras-hub backbones): the
  decoder end point at every stride finer than the deepest level; at the deepest level the last
  cell of the path's first stay there; none coarser (`pyramid_end_point`). Published path:
  Cell_2/Cell_5/Cell_7/Cell_9.
"""

from __future__ import annotations

from typing import Sequence

STEM = "Stem"
# DeepLab's ASPP rates at output stride 16 are 6/12/18 = (1, 2, 3) * 96 / 16.
_RATE_NUMERATOR = 96
DEFAULT_DECODER_OUTPUT_STRIDE = 4


def level_stride(level: int) -> int:
    """Output stride of a backbone level (0 -> 4, 3 -> 32)."""
    return 4 * 2 ** int(level)


def stride_level(stride: int) -> int | None:
    """Level of an output stride, None when it is not 4 * 2**k."""
    stride = int(stride)
    level = 0
    while level_stride(level) < stride:
        level += 1
    return level if level_stride(level) == stride else None


def output_stride(backbone: Sequence[int]) -> int:
    """The backbone's output stride: that of its last layer."""
    return level_stride(backbone[-1])


def default_atrous_rates(stride: int) -> tuple[int, ...]:
    """DeepLab's ASPP rates for an output stride (6/12/18 at 16, 12/24/36 at 8, scaled alike)."""
    if _RATE_NUMERATOR % int(stride):
        raise ValueError(f"no DeepLab atrous-rate convention for output stride {stride}")
    base = _RATE_NUMERATOR // int(stride)
    return (base, 2 * base, 3 * base)


def decoder_end_point(backbone: Sequence[int], stride: int) -> str | None:
    """The low-level end point at `stride` by the module's rule; None when the path has none."""
    level = stride_level(stride)
    if level is None:
        return None
    deepest = max(backbone)
    if level >= deepest:
        return None            # not a feature of the encoder half: the path is never finer later
    first_deepest = list(backbone).index(deepest)
    cells = [i for i in range(first_deepest) if backbone[i] == level]
    if cells:
        return f"Cell_{cells[-1]}"
    return STEM if level == 0 else None


def decoder_end_points(backbone: Sequence[int]) -> dict[int, str]:
    """{stride: end point} for every stride where the rule gives one (the official map's form)."""
    out = {}
    for level in range(max(backbone)):
        name = decoder_end_point(backbone, level_stride(level))
        if name is not None:
            out[level_stride(level)] = name
    return out


def default_decoder_output_stride(backbone: Sequence[int]) -> int | None:
    """Stride 4 when the backbone ends coarser than that and has a stride-4 end point, else None."""
    stride = DEFAULT_DECODER_OUTPUT_STRIDE
    if output_stride(backbone) > stride and decoder_end_point(backbone, stride) is not None:
        return stride
    return None


def pyramid_end_point(backbone: Sequence[int], stride: int) -> str | None:
    """The backbone feature at `stride` for a feature pyramid (keras-hub `pyramid_outputs`).

    Finer than the deepest level: the decoder end point (`decoder_end_point`), so a head built on
    the pyramid reads what our decoder reads. At the deepest level: the last cell of the path's
    first stay there (the bottleneck: the coarsest, most processed feature before the path turns
    back; the last cell when the path ends there, i.e. the ASPP input). Coarser than the deepest
    level: None (the path never visits it). Published path: Cell_2, Cell_5, Cell_7, Cell_9."""
    level = stride_level(stride)
    if level is None:
        return None
    deepest = max(backbone)
    if level < deepest:
        return decoder_end_point(backbone, stride)
    if level > deepest:
        return None
    last = list(backbone).index(deepest)
    while last + 1 < len(backbone) and backbone[last + 1] == deepest:
        last += 1
    return f"Cell_{last}"


def pyramid_end_points(backbone: Sequence[int]) -> dict[str, str]:
    """{'P2': ..., 'P5': ...} (P<k> = stride 2**k) for every stride where `pyramid_end_point` has
    a feature, finest first."""
    out = {}
    for level in range(max(backbone) + 1):
        stride = level_stride(level)
        name = pyramid_end_point(backbone, stride)
        if name is not None:
            out[f"P{stride.bit_length() - 1}"] = name
    return out
