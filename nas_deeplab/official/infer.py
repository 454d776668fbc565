"""What an official-format checkpoint says about the model that wrote it, read off names and shapes.

A TF1 checkpoint stores no flags, but its variables fix most of them: the filter multiplier
(`hnasnet/cell_0/1x1/weights` has F * 2**backbone[0] outputs), the number of cells, the number of
classes (`logits/semantic/weights`), separable or regular ASPP convs (`aspp1_depthwise/*` vs
`aspp1/weights`) and decoder convs (`decoder/decoder_conv0_depthwise/*` vs the slim.repeat
`decoder/decoder_conv0/decoder_conv0_1/weights`), whether there is a decoder and at which stride (the
channels of `decoder/feature_projection0/weights` name one end point of the path), how many atrous
branches, image pooling, and the ASPP/decoder widths. Not stored: the atrous rates themselves (a
dilation is no weight) and the output stride; those come from the path (`model/end_points.py`).

Export builds what the checkpoint says (explicit flags that contradict it are refused); training
builds what its flags say and is refused, naming the flag to change, when the checkpoint contradicts
it outside the layers `--initialize_last_layer=false` leaves out. Either way the restore that follows
must then be complete (`restore.py`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from nas_deeplab.model import end_points as end_points_lib
from nas_deeplab.model.backbone import STEM_FILTERS
from nas_deeplab.official.checkpoint import CheckpointError
from nas_deeplab.official.names import BACKBONE_SCOPE, in_scopes

CELL_0 = "hnasnet/cell_0/1x1/weights"
LOGITS = "logits/semantic/weights"
IMAGE_POOLING = "image_pooling/weights"
ASPP0 = "aspp0/weights"
FEATURE_PROJECTION = "decoder/feature_projection0/weights"
SEPARABLE_DECODER = "decoder/decoder_conv0_depthwise/depthwise_weights"
REGULAR_DECODER = "decoder/decoder_conv0/decoder_conv0_1/weights"
DECODER_OUT = ("decoder/decoder_conv1_pointwise/weights", "decoder/decoder_conv0/decoder_conv0_2/weights")
DEFAULT_NUM_ATROUS_RATES = 3    # DeepLab's convention at every output stride (end_points.py)

_CELL = re.compile(rf"^{BACKBONE_SCOPE}/cell_(\d+)/")
_ASPP_BRANCH = re.compile(r"^aspp(\d+)(_depthwise|_pointwise)?/")


@dataclasses.dataclass(frozen=True)
class Implied:
    """One model option the checkpoint fixes: its value and the checkpoint entry that shows it."""

    value: Any
    evidence: str


@dataclasses.dataclass(frozen=True)
class CheckpointFacts:
    """Raw facts of an official checkpoint (None: the checkpoint has nothing that tells)."""

    cell_0_filters: int | None
    num_cells: int
    num_classes: int | None
    has_heads: bool                       # aspp0 present (a backbone-only checkpoint has none)
    add_image_level_feature: bool
    num_atrous_rates: int
    aspp_with_separable_conv: bool | None
    aspp_convs_filters: int | None
    low_level_channels: int | None        # None: no decoder
    decoder_use_separable_conv: bool | None
    decoder_filters: int | None
    aspp_evidence: str | None = None


def read_facts(shapes: Mapping[str, Sequence[int]], where: str) -> CheckpointFacts:
    """Facts of the checkpoint whose {name: shape} map is `shapes`; `where` names it in errors."""
    if not any(name.startswith(BACKBONE_SCOPE + "/") for name in shapes):
        sample = ", ".join(sorted(shapes)[:3])
        raise CheckpointError(f"{where} is not an hnasnet DeepLab checkpoint: no {BACKBONE_SCOPE}/ variables "
                              f"(it has e.g. {sample})")
    cells = {int(m.group(1)) for m in map(_CELL.match, shapes) if m}
    separable, regular = set(), set()
    for name in shapes:
        m = _ASPP_BRANCH.match(name)
        if m and int(m.group(1)) >= 1:
            (separable if m.group(2) else regular).add(int(m.group(1)))
    if separable and regular:
        raise CheckpointError(f"{where} mixes separable (aspp{min(separable)}_depthwise) and regular "
                              f"(aspp{min(regular)}/weights) ASPP branches; no DeepLab graph creates both")
    branches = separable or regular
    if branches and branches != set(range(1, max(branches) + 1)):
        raise CheckpointError(f"{where} has ASPP branches {sorted(branches)}: not aspp1..aspp{max(branches)}")
    aspp_evidence = ("aspp1_depthwise/depthwise_weights" if separable else "aspp1/weights") if branches else None

    def last(name):
        return int(shapes[name][-1]) if name in shapes else None

    has_decoder = FEATURE_PROJECTION in shapes
    decoder_sep = True if SEPARABLE_DECODER in shapes else (False if REGULAR_DECODER in shapes else None)
    return CheckpointFacts(
        cell_0_filters=last(CELL_0), num_cells=max(cells) + 1 if cells else 0, num_classes=last(LOGITS),
        has_heads=ASPP0 in shapes, add_image_level_feature=IMAGE_POOLING in shapes,
        num_atrous_rates=len(branches), aspp_with_separable_conv=bool(separable) if branches else None,
        aspp_convs_filters=last(ASPP0),
        low_level_channels=int(shapes[FEATURE_PROJECTION][2]) if has_decoder else None,
        decoder_use_separable_conv=decoder_sep if has_decoder else None,
        decoder_filters=next((last(n) for n in DECODER_OUT if n in shapes), None),
        aspp_evidence=aspp_evidence)


def backbone_problems(facts: CheckpointFacts, arch) -> list[str]:
    """How the checkpoint's backbone differs from `arch` (each names the flag that fixes it)."""
    out = []
    if facts.num_cells != arch.num_layers:
        out.append(f"it has {facts.num_cells} cells ({BACKBONE_SCOPE}/cell_0..cell_{facts.num_cells - 1}), "
                   f"architecture {arch.name!r} has {arch.num_layers} (--architecture)")
    f = filter_multiplier(facts, arch)
    if f is not None and f != arch.filter_multiplier:
        out.append(f"it has filter multiplier {f} ({CELL_0} has {facts.cell_0_filters} outputs), the model "
                   f"{arch.filter_multiplier}: pass --nas_stem_output_num_conv_filters={f}")
    return out


def filter_multiplier(facts: CheckpointFacts, arch) -> int | None:
    """F of the checkpoint, given the path's first level (cell 0 has F * 2**backbone[0] filters)."""
    if facts.cell_0_filters is None:
        return None
    scale = 2 ** arch.backbone[0]
    return facts.cell_0_filters // scale if facts.cell_0_filters % scale == 0 else facts.cell_0_filters / scale


def decoder_strides(facts: CheckpointFacts, arch) -> list[int]:
    """The decoder output strides whose end point (end_points.py's rule, on arch's path) has the
    channels `decoder/feature_projection0` reads; [] when none does."""
    out = []
    for stride, point in end_points_lib.decoder_end_points(arch.backbone).items():
        channels = (STEM_FILTERS[2] if point == end_points_lib.STEM
                    else arch.cell_filters(int(point.split("_")[1])) * arch.num_blocks)
        if channels == facts.low_level_channels:
            out.append(stride)
    return out


def implied_options(facts: CheckpointFacts, arch, decoder_output_stride: int | None = None,
                    exclude_scopes: Sequence[str] = ()) -> dict[str, Implied]:
    """{ModelOptions field (or 'num_atrous_rates'): Implied} for what the checkpoint fixes, leaving
    out the options whose variables lie under `exclude_scopes` (they will not be restored).

    `decoder_output_stride` picks among several strides whose end points have the same channels;
    a checkpoint whose low-level channels match no end point of `arch` is refused."""
    out = _implied(facts, arch, decoder_output_stride, skip_decoder=in_scopes("decoder", exclude_scopes))
    return {k: v for k, v in out.items() if not in_scopes(_SCOPE[k], exclude_scopes)}


def _implied(facts, arch, decoder_output_stride, skip_decoder) -> dict[str, Implied]:
    out: dict[str, Implied] = {}
    if facts.num_classes is not None:
        out["num_classes"] = Implied(facts.num_classes, LOGITS)
    if not facts.has_heads:
        return out
    out["add_image_level_feature"] = Implied(facts.add_image_level_feature, IMAGE_POOLING)
    out["num_atrous_rates"] = Implied(facts.num_atrous_rates, facts.aspp_evidence or ASPP0)
    if facts.aspp_with_separable_conv is not None:
        out["aspp_with_separable_conv"] = Implied(facts.aspp_with_separable_conv, facts.aspp_evidence)
    out["aspp_convs_filters"] = Implied(facts.aspp_convs_filters, ASPP0)
    if skip_decoder:
        return out
    if facts.low_level_channels is None:
        out["decoder_output_stride"] = Implied(None, f"no {FEATURE_PROJECTION}")
        return out
    strides = decoder_strides(facts, arch)
    evidence = f"{FEATURE_PROJECTION} reads {facts.low_level_channels} channels"
    if not strides:
        points = end_points_lib.decoder_end_points(arch.backbone)
        raise CheckpointError(f"the checkpoint's decoder fits no end point of architecture {arch.name!r} "
                              f"(F={arch.filter_multiplier}, end points {points}): {evidence}")
    if decoder_output_stride in strides:
        stride = decoder_output_stride
    elif len(strides) == 1:
        stride = strides[0]
    else:
        raise CheckpointError(f"{evidence}, the channels of the end points at strides {strides}: pass "
                              "--decoder_output_stride to say which")
    out["decoder_output_stride"] = Implied(stride, evidence)
    if facts.decoder_use_separable_conv is not None:
        out["decoder_use_separable_conv"] = Implied(
            facts.decoder_use_separable_conv,
            SEPARABLE_DECODER if facts.decoder_use_separable_conv else REGULAR_DECODER)
    if facts.decoder_filters is not None:
        evidence = DECODER_OUT[0 if facts.decoder_use_separable_conv else 1]
        out["decoder_filters"] = Implied(facts.decoder_filters, evidence)
    return out


# -- comparing with what was asked for ---------------------------------------------------------------

# The official scope each option's variables live in (for --initialize_last_layer=false exclusions).
_SCOPE = {"num_classes": "logits", "add_image_level_feature": "image_pooling", "num_atrous_rates": "aspp",
          "aspp_with_separable_conv": "aspp", "aspp_convs_filters": "aspp",
          "decoder_output_stride": "decoder", "decoder_use_separable_conv": "decoder",
          "decoder_filters": "decoder"}
# The CLI flag that sets each option (None: no flag, the official default is the only choice).
FLAG = {"num_classes": "num_classes", "add_image_level_feature": None, "num_atrous_rates": "atrous_rates",
        "aspp_with_separable_conv": "aspp_with_separable_conv", "aspp_convs_filters": None,
        "decoder_output_stride": "decoder_output_stride",
        "decoder_use_separable_conv": "decoder_use_separable_conv", "decoder_filters": None}


def describe(key: str, value) -> str:
    """An option value in words ('regular 3x3 ASPP convs', 'no decoder', '19 classes')."""
    if key == "aspp_with_separable_conv":
        return f"{'separable' if value else 'regular'} 3x3 ASPP convs"
    if key == "decoder_use_separable_conv":
        return f"{'separable' if value else 'regular'} 3x3 decoder convs"
    if key == "decoder_output_stride":
        return "no decoder" if value is None else f"a decoder at stride {value}"
    if key == "add_image_level_feature":
        return "an image pooling branch" if value else "no image pooling branch"
    return {"num_classes": f"{value} classes", "num_atrous_rates": f"{value} atrous ASPP branches",
            "aspp_convs_filters": f"{value} ASPP filters", "decoder_filters": f"{value} decoder filters"}[key]


def flag_value(key: str, value) -> str | None:
    """The flag setting that asks for `value` ('--aspp_with_separable_conv=false'); None: no flag."""
    flag = FLAG[key]
    if flag is None:
        return None
    if isinstance(value, bool):
        return f"--{flag}={str(value).lower()}"
    if key == "decoder_output_stride":
        return f"--{flag}={'none' if value is None else value}"
    if key == "num_atrous_rates":
        return "--atrous_rates=none" if value == 0 else f"--atrous_rates with {value} values"
    return f"--{flag}={value}"


@dataclasses.dataclass(frozen=True)
class Conflict:
    key: str
    asked: Any
    implied: Implied


def conflicts(implied: Mapping[str, Implied], asked: Mapping[str, Any], exclude_scopes=()) -> list[Conflict]:
    """Options in `asked` (same keys as implied_options) that differ from the checkpoint's, except
    those whose variables lie under `exclude_scopes` (they are not restored)."""
    out = []
    for key, imp in implied.items():
        if key in asked and not in_scopes(_SCOPE[key], exclude_scopes) and asked[key] != imp.value:
            out.append(Conflict(key, asked[key], imp))
    return out


def asked_by_options(options) -> dict[str, Any]:
    """What a built model's ModelOptions ask for, in implied_options' keys."""
    out = {k: getattr(options, k) for k in _SCOPE if k != "num_atrous_rates" and hasattr(options, k)}
    out["num_atrous_rates"] = len(options.atrous_rates or ())
    return out
