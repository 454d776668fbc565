"""The architecture as plain data: what `search.py` writes and `train.py` / `export.py` read.

The form is the official DeepLab genotype (`research/deeplab/core/nas_network.py`): a cell is
`operations` (2 per block, left then right) and `hiddenstate_indices` (which state each op reads:
0 = H^{l-1} after the cell's 1x1, 1 = H^{l-2} after `prev_1x1`, 2 + k = output of block k), and the
network is `backbone`, one level per layer (level l means output stride 2**(l + 2): 0 -> 4 ... 3 -> 32).
Add the filter multiplier F and this is everything needed to build the network.

Schema of `architecture.json` (version 1)::

    {
      "format": "nas_deeplab.architecture", "version": 1,
      "name": "auto_deeplab_s",
      "operations": ["atrous_5x5", ...],          # 2*B names from OP_VOCABULARY (no "zero")
      "hiddenstate_indices": [1, 0, ...],          # 2*B ints, block i may read 0 .. i+1
      "used_hiddenstates": [1, 1, 0, 0, 0, 0, 0],  # official form; derived, checked on load
      "backbone": [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1],
      "filter_multiplier": 20,
      "num_blocks": 5,
      "op_vocabulary": [...]                       # the candidate set the search used
    }

`skip_connect` is the official `none` op (identity, or ReLU -> 1x1 -> BN when it must stride);
`none` is accepted on input as that alias because the official code spells it so. `zero` is a search
candidate only and can never appear in a decoded cell.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

FORMAT_NAME = "nas_deeplab.architecture"
FORMAT_VERSION = 1

# The 8 candidate operations of the paper, in the order used for the last axis of alpha.
OP_VOCABULARY = (
    "separable_3x3_2",
    "separable_5x5_2",
    "atrous_3x3",
    "atrous_5x5",
    "avg_pool_3x3",
    "max_pool_3x3",
    "skip_connect",
    "zero",
)
ZERO_OP = "zero"
OFFICIAL_OP_ALIASES = {"none": "skip_connect"}

# The published Auto-DeepLab cell and path (official hnasnet()).
PUBLISHED_OPERATIONS = (
    "atrous_5x5", "separable_3x3_2",
    "separable_3x3_2", "atrous_3x3",
    "separable_3x3_2", "separable_3x3_2",
    "separable_5x5_2", "separable_5x5_2",
    "separable_5x5_2", "atrous_5x5",
)
PUBLISHED_HIDDENSTATE_INDICES = (1, 0, 1, 0, 3, 1, 4, 2, 3, 5)
PUBLISHED_BACKBONE = (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)

PRESET_FILTER_MULTIPLIERS = {"auto_deeplab_s": 20, "auto_deeplab_m": 32, "auto_deeplab_l": 48}
MAX_LEVEL = 3  # output stride 32


class ArchitectureError(ValueError):
    """An architecture (or architecture.json) that cannot describe a network."""


@dataclasses.dataclass(frozen=True)
class Architecture:
    operations: tuple[str, ...]
    hiddenstate_indices: tuple[int, ...]
    backbone: tuple[int, ...]
    filter_multiplier: int
    name: str = "custom"
    op_vocabulary: tuple[str, ...] = OP_VOCABULARY

    def __post_init__(self):
        object.__setattr__(self, "operations",
                           tuple(OFFICIAL_OP_ALIASES.get(o, o) for o in self.operations))
        object.__setattr__(self, "hiddenstate_indices", tuple(int(i) for i in self.hiddenstate_indices))
        object.__setattr__(self, "backbone", tuple(int(b) for b in self.backbone))
        object.__setattr__(self, "op_vocabulary", tuple(self.op_vocabulary))
        self.validate()

    # -- derived facts -------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.operations) // 2

    @property
    def num_layers(self) -> int:
        return len(self.backbone)

    @property
    def used_hiddenstates(self) -> tuple[int, ...]:
        """Official flag list: the two cell inputs are 'used', every block output is concatenated."""
        return (1, 1) + (0,) * self.num_blocks

    def cell_filters(self, layer: int) -> int:
        """Filters inside cell `layer` (official `int(F * filter_scaling)` = F * 2**level)."""
        return int(self.filter_multiplier * 2 ** self.backbone[layer])

    def output_strides(self) -> tuple[int, ...]:
        return tuple(2 ** (level + 2) for level in self.backbone)

    def block(self, i: int) -> tuple[tuple[str, int], tuple[str, int]]:
        """((left_op, left_input), (right_op, right_input)) of block i."""
        return ((self.operations[2 * i], self.hiddenstate_indices[2 * i]),
                (self.operations[2 * i + 1], self.hiddenstate_indices[2 * i + 1]))

    def is_published(self) -> bool:
        """True for the Auto-DeepLab cell and path that the official hnasnet code hard-codes."""
        return (self.operations == PUBLISHED_OPERATIONS
                and self.hiddenstate_indices == PUBLISHED_HIDDENSTATE_INDICES
                and self.backbone == PUBLISHED_BACKBONE)

    def with_filter_multiplier(self, f: int) -> "Architecture":
        return dataclasses.replace(self, filter_multiplier=int(f))

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        ops, idx, bb = self.operations, self.hiddenstate_indices, self.backbone
        if len(ops) == 0 or len(ops) % 2:
            raise ArchitectureError(f"'operations' must hold 2 entries per block, got {len(ops)}")
        if len(idx) != len(ops):
            raise ArchitectureError(
                f"'hiddenstate_indices' has {len(idx)} entries but 'operations' has {len(ops)}")
        for k, op in enumerate(ops):
            if op == ZERO_OP:
                raise ArchitectureError(f"operations[{k}] is 'zero': a decoded cell cannot use it")
            if op not in OP_VOCABULARY:
                raise ArchitectureError(
                    f"operations[{k}] = {op!r} is not a known operation {list(OP_VOCABULARY)}")
        for k, j in enumerate(idx):
            block = k // 2
            if not 0 <= j <= block + 1:
                raise ArchitectureError(
                    f"hiddenstate_indices[{k}] = {j}: block {block} may only read states 0..{block + 1}")
        if not bb:
            raise ArchitectureError("'backbone' is empty")
        for k, level in enumerate(bb):
            if not 0 <= level <= MAX_LEVEL:
                raise ArchitectureError(f"backbone[{k}] = {level}: levels are 0..{MAX_LEVEL} (stride 4..32)")
            prev = 0 if k == 0 else bb[k - 1]
            if abs(level - prev) > 1:
                raise ArchitectureError(
                    f"backbone[{k}] = {level} after level {prev}: a layer may only keep, halve or double "
                    "the resolution (the first layer follows the stride-4 stem)")
        if int(self.filter_multiplier) <= 0:
            raise ArchitectureError(f"filter_multiplier must be positive, got {self.filter_multiplier}")

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": self.name,
            "operations": list(self.operations),
            "hiddenstate_indices": list(self.hiddenstate_indices),
            "used_hiddenstates": list(self.used_hiddenstates),
            "backbone": list(self.backbone),
            "filter_multiplier": int(self.filter_multiplier),
            "num_blocks": self.num_blocks,
            "op_vocabulary": list(self.op_vocabulary),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> "Architecture":
        if not isinstance(d, dict):
            raise ArchitectureError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("format", FORMAT_NAME) != FORMAT_NAME:
            raise ArchitectureError(f"{source}: 'format' is {d.get('format')!r}, expected {FORMAT_NAME!r}")
        version = d.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ArchitectureError(
                f"{source}: architecture format version {version} is not supported (this is version "
                f"{FORMAT_VERSION})")
        missing = [k for k in ("operations", "hiddenstate_indices", "backbone", "filter_multiplier")
                   if k not in d]
        if missing:
            raise ArchitectureError(f"{source}: missing keys {missing}")
        try:
            arch = cls(operations=tuple(d["operations"]),
                       hiddenstate_indices=tuple(d["hiddenstate_indices"]),
                       backbone=tuple(d["backbone"]),
                       filter_multiplier=int(d["filter_multiplier"]),
                       name=str(d.get("name", "custom")),
                       op_vocabulary=tuple(d.get("op_vocabulary", OP_VOCABULARY)))
        except ArchitectureError as e:
            raise ArchitectureError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ArchitectureError(f"{source}: malformed architecture: {e}") from None
        if "num_blocks" in d and int(d["num_blocks"]) != arch.num_blocks:
            raise ArchitectureError(
                f"{source}: num_blocks = {d['num_blocks']} but 'operations' describes {arch.num_blocks}")
        if "used_hiddenstates" in d and tuple(d["used_hiddenstates"]) != arch.used_hiddenstates:
            raise ArchitectureError(
                f"{source}: used_hiddenstates {d['used_hiddenstates']} is not supported; every block "
                f"output must be concatenated ({list(arch.used_hiddenstates)})")
        return arch

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str) -> None:
        """Write atomically: a crash never leaves a half-written architecture.json."""
        from nas_deeplab.io_utils import atomic_write_text
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> "Architecture":
        try:
            with open(path, "r", encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ArchitectureError(f"architecture file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ArchitectureError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=path)


def published(filter_multiplier: int = 20, name: str = "custom") -> Architecture:
    """The architecture of the paper (Fig. 3) / the official `hnasnet` at filter multiplier F."""
    return Architecture(PUBLISHED_OPERATIONS, PUBLISHED_HIDDENSTATE_INDICES, PUBLISHED_BACKBONE,
                        filter_multiplier, name=name)


def preset(name: str) -> Architecture:
    if name not in PRESET_FILTER_MULTIPLIERS:
        raise ArchitectureError(
            f"unknown architecture preset {name!r}; presets are {sorted(PRESET_FILTER_MULTIPLIERS)} "
            "or a path to an architecture.json")
    return published(PRESET_FILTER_MULTIPLIERS[name], name=name)


def resolve(spec: str, filter_multiplier: int | None = None) -> Architecture:
    """A preset name or a path to architecture.json (the `--architecture` flag), optionally re-scaled."""
    if spec in PRESET_FILTER_MULTIPLIERS:
        arch = preset(spec)
    elif os.path.exists(spec) or spec.endswith(".json") or os.sep in spec:
        arch = Architecture.load(spec)
    else:
        raise ArchitectureError(
            f"--architecture={spec!r} is neither a preset {sorted(PRESET_FILTER_MULTIPLIERS)} nor an "
            "existing architecture.json")
    if filter_multiplier:
        arch = arch.with_filter_multiplier(filter_multiplier)
    return arch


def genotype_from_blocks(blocks: Sequence[tuple[tuple[str, int], tuple[str, int]]]):
    """(operations, hiddenstate_indices) from [((left_op, left_in), (right_op, right_in)), ...]."""
    ops, idx = [], []
    for (lo, li), (ro, ri) in blocks:
        ops += [lo, ro]
        idx += [li, ri]
    return tuple(ops), tuple(idx)
