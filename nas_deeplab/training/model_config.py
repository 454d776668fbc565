"""The model half of a run's configuration: which architecture and which DeepLab heads.

Shared by training, evaluation and export so that all three build the same network from the same
flags, and so the checkpoint metadata can record exactly what must match on resume.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nas_deeplab import architecture as arch_lib

# `python train.py` with no flags: the published cell and path at a small filter multiplier, a model
# that trains on two CPU cores in minutes. `--architecture=auto_deeplab_s` is the paper's S (F=20).
DEMO_FILTER_MULTIPLIER = 8
DEMO_NAME = "auto_deeplab_demo_f8"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str | None = None        # preset name or architecture.json; None = published, F=8
    filter_multiplier: int | None = None   # --nas_stem_output_num_conv_filters (overrides the file's F)
    # None / "auto": what the architecture's path implies (model/end_points.py); for the published
    # path that is DeepLab's (12, 24, 36), output stride 8 and the stride-4 decoder on Cell_2.
    atrous_rates: tuple[int, ...] | None = None
    output_stride: int | None = None
    decoder_output_stride: int | str | None = "auto"
    aspp_with_separable_conv: bool = True
    decoder_use_separable_conv: bool = True

    def __post_init__(self):
        if self.atrous_rates is not None:
            object.__setattr__(self, "atrous_rates", tuple(int(r) for r in self.atrous_rates))
            if any(r <= 0 for r in self.atrous_rates):
                raise ValueError(f"--atrous_rates must be positive, got {list(self.atrous_rates)}")
        if self.filter_multiplier is not None and self.filter_multiplier <= 0:
            raise ValueError(f"--nas_stem_output_num_conv_filters must be positive, got "
                             f"{self.filter_multiplier}")
        for name in ("output_stride", "decoder_output_stride"):
            value = getattr(self, name)
            if value not in (None, "auto") and value not in (4, 8, 16, 32):
                raise ValueError(f"--{name}={value}: must be one of 4, 8, 16, 32 (stride 4 * 2**level)")

    def resolve_architecture(self) -> arch_lib.Architecture:
        if self.architecture is None:
            return arch_lib.published(self.filter_multiplier or DEMO_FILTER_MULTIPLIER,
                                      name=DEMO_NAME if not self.filter_multiplier else "published")
        return arch_lib.resolve(self.architecture, self.filter_multiplier)

    def structure(self, arch: arch_lib.Architecture | None = None) -> dict[str, Any]:
        """The head options that change the variables (recorded in checkpoint metadata), with the
        path-derived defaults resolved for `arch` (default: this config's architecture)."""
        options = self.model_options(1).for_architecture(arch or self.resolve_architecture())
        return {"atrous_rates": list(options.atrous_rates), "output_stride": options.output_stride,
                "decoder_output_stride": options.decoder_output_stride,
                "aspp_with_separable_conv": self.aspp_with_separable_conv,
                "decoder_use_separable_conv": self.decoder_use_separable_conv}

    def model_options(self, num_classes: int, **training_options):
        """deeplab.ModelOptions for this config; `training_options` (weight_decay, drop_path_keep_prob,
        total_training_steps, sync_batch_norm, fine_tune_batch_norm, ...) are passed where the
        network's ModelOptions has such a field."""
        from nas_deeplab.model.deeplab import ModelOptions
        fields = {f.name for f in dataclasses.fields(ModelOptions)}
        kw = dict(num_classes=int(num_classes), atrous_rates=self.atrous_rates,
                  output_stride=self.output_stride, decoder_output_stride=self.decoder_output_stride,
                  aspp_with_separable_conv=self.aspp_with_separable_conv,
                  decoder_use_separable_conv=self.decoder_use_separable_conv)
        kw.update({k: v for k, v in training_options.items() if v is not None})
        unknown = sorted(set(kw) - fields)
        if unknown:
            # Structural options the network does not know are an error; training-only ones are not.
            structural = [k for k in unknown if k not in training_options]
            if structural:
                raise ValueError(f"the network's ModelOptions has no {structural}")
            for k in unknown:
                kw.pop(k)
        return ModelOptions(**kw)

    def build(self, num_classes: int, *, step_variable=None, input_shape=(None, None, 3),
              **training_options):
        """(keras.Model, Architecture) for this config."""
        from nas_deeplab.model.deeplab import build_deeplab
        arch = self.resolve_architecture()
        options = self.model_options(num_classes, **training_options)
        return build_deeplab(arch, options, step_variable=step_variable, input_shape=input_shape), arch
