"""absl flags shared by train.py, eval.py and export.py (model, architecture, data set), and their
parsing into config objects. Each CLI calls the define_* functions it needs once at import.

Names and forms follow official DeepLab (`--atrous_rates=12 --atrous_rates=24 ...`,
`--train_crop_size=513,513`); comma lists are accepted for the repeated flags too.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from nas_deeplab.training.model_config import ModelConfig


class FlagError(ValueError):
    """A flag value that cannot be used; the message names the flag."""


def _once(marker):
    """Make a define_* function idempotent per FlagValues (skipped when `marker` is defined), so
    train.py and eval.py, which share these definitions, can live in one process (e.g. tests)."""
    def decorate(define):
        def wrapper(flag_values=flags.FLAGS):
            if marker in flag_values:
                return
            define(flag_values)
        wrapper.__doc__, wrapper.__name__ = define.__doc__, define.__name__
        return wrapper
    return decorate


@_once("nas_stem_output_num_conv_filters")
def define_model_flags(flag_values=flags.FLAGS) -> None:
    """--architecture, --nas_stem_output_num_conv_filters, --atrous_rates, --output_stride,
    --decoder_output_stride, --aspp_with_separable_conv, --decoder_use_separable_conv."""
    f = flag_values
    flags.DEFINE_string("architecture", None,
                        "Preset (auto_deeplab_s|auto_deeplab_m|auto_deeplab_l) or an architecture.json "
                        "written by search.py. Default: the published architecture at F=8 (a quick model "
                        "for CPUs); use auto_deeplab_s for the paper's S.", flag_values=f)
    flags.DEFINE_integer("nas_stem_output_num_conv_filters", None,
                         "Filter multiplier F; overrides the architecture's F when given (official flag).",
                         flag_values=f)
    flags.DEFINE_multi_string("atrous_rates", None,
                              "ASPP atrous rates (repeat the flag or give a comma list; 'none': no "
                              "atrous branches). Default: DeepLab's convention for the output stride "
                              "(12,24,36 at 8, 6,12,18 at 16, 24,48,72 at 4, 3,6,9 at 32).", flag_values=f)
    flags.DEFINE_integer("output_stride", None,
                         "Output stride of the backbone: it is fixed by the architecture's path, "
                         "4 * 2**backbone[-1] (8 for the published one); a different value is refused.",
                         flag_values=f)
    flags.DEFINE_string("decoder_output_stride", "auto",
                        "Decoder low-level feature stride (4, 8, 16), 'none' (no decoder) or 'auto' "
                        "(4 unless the path ends at stride 4). The end point is the last cell at that "
                        "stride before the path first reaches its deepest level (Stem if none): "
                        "Cell_2 / Cell_5 / Cell_7 for the published path.", flag_values=f)
    flags.DEFINE_boolean("aspp_with_separable_conv", True, "Separable 3x3 atrous convs in ASPP "
                         "(official default; the paper's parameter counts use regular ones: false).",
                         flag_values=f)
    flags.DEFINE_boolean("decoder_use_separable_conv", True, "Separable 3x3 convs in the decoder.",
                         flag_values=f)


@_once("dataset_dir")
def define_dataset_flags(flag_values=flags.FLAGS) -> None:
    """--dataset, --dataset_dir, --min_resize_value, --max_resize_value, --resize_factor."""
    f = flag_values
    flags.DEFINE_string("dataset", "synthetic", "Data set: synthetic or synthetic_context (built in), cityscapes, "
                        "pascal_voc_seg, ade20k, or a JSON descriptor path.", flag_values=f)
    flags.DEFINE_string("dataset_dir", None, "Folder of <split>-*.tfrecord shards (official format); "
                        "not needed for the built-in synthetic set.", flag_values=f)
    flags.DEFINE_integer("min_resize_value", None, "Desired size of the smaller image side.", flag_values=f)
    flags.DEFINE_integer("max_resize_value", None, "Maximum allowed size of the larger image side.",
                         flag_values=f)
    flags.DEFINE_integer("resize_factor", None, "Resized dimensions are multiple of factor plus one.",
                         flag_values=f)


@_once("precise_bn_batch_size")
def define_precise_bn_batch_size_flag(flag_values=flags.FLAGS) -> None:
    """--precise_bn_batch_size (train.py, eval.py, export.py; each its own --precise_bn_batches)."""
    flags.DEFINE_integer("precise_bn_batch_size", None, "Images per precise-BN batch (>= 2; default: "
                         "the run's training batch size: every BN normalises with its batch's statistics "
                         "during the pass, the image-pooling BN over the batch's images).",
                         flag_values=flag_values)


@_once("mixed_precision")
def define_precision_flag(flag_values=flags.FLAGS) -> None:
    """--mixed_precision (train.py, eval.py; search.py has its own help)."""
    flags.DEFINE_enum("mixed_precision", "none", ["none", "mixed_float16", "mixed_bfloat16"],
                      "Keras mixed precision policy: float32 variables, 16-bit compute (bfloat16: CPUs with "
                      "AMX-BF16/AVX512-BF16, A100/H100, TPUs; float16: GPUs, dynamic loss scaling when "
                      "training).", flag_values=flag_values)


@_once("strategy")
def define_runtime_flags(flag_values=flags.FLAGS) -> None:
    """--strategy, --deterministic, --seed, --mixed_precision (train.py)."""
    f = flag_values
    define_precision_flag(f)
    flags.DEFINE_enum("strategy", "mirrored", ["mirrored", "one_device", "multi_worker"],
                      "tf.distribute strategy; multi_worker reads TF_CONFIG.", flag_values=f)
    flags.DEFINE_boolean("deterministic", False, "Op determinism + fixed seeds: repeated runs (and resumed "
                         "runs) give bit-identical results.", flag_values=f)
    flags.DEFINE_integer("seed", None, "Seed for data order, augmentation, initialisation and drop path "
                         "(default: 0 with --deterministic, else random).", flag_values=f)


@_once("cpu_threads")
def define_thread_flags(flag_values=flags.FLAGS) -> None:
    """--cpu_threads, --inter_op_threads, --intra_op_threads (nas_deeplab.training.threads)."""
    f = flag_values
    flags.DEFINE_enum("cpu_threads", "auto", ["auto", "op_parallel", "default"],
                      "CPU thread pools: op_parallel = one thread per op, as many ops at once as cores "
                      "(fast for the search and for training on CPU); default = TF's choice; auto = this "
                      "program's preference on a machine without GPU, else default.", flag_values=f)
    flags.DEFINE_integer("inter_op_threads", 0, "Ops run at once (0: from --cpu_threads).", lower_bound=0,
                         flag_values=f)
    flags.DEFINE_integer("intra_op_threads", 0, "Threads per op (0: from --cpu_threads).", lower_bound=0,
                         flag_values=f)


def apply_thread_flags(flag_values, prefer: str, stream=None) -> None:
    """Set the thread pools from the flags (before TF starts) and log the choice."""
    from nas_deeplab.training import threads  # noqa: PLC0415
    f = flag_values
    line = threads.configure(f.cpu_threads, f.inter_op_threads, f.intra_op_threads, prefer=prefer)
    print(line, file=stream, flush=True)


# -- parsing -------------------------------------------------------------------------------------

def parse_int_list(values, flag: str) -> tuple[int, ...]:
    """['12', '24,36'] -> (12, 24, 36)."""
    out = []
    for v in ([values] if isinstance(values, (str, int)) else (values or [])):
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise FlagError(f"--{flag}: {part!r} is not an integer") from None
    return tuple(out)


def parse_float_list(values, flag: str) -> tuple[float, ...]:
    out = []
    for v in ([values] if isinstance(values, (str, float, int)) else (values or [])):
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(float(part))
            except ValueError:
                raise FlagError(f"--{flag}: {part!r} is not a number") from None
    return tuple(out)


def parse_size(values, flag: str, allow_none: bool = False) -> tuple[int, int] | None:
    """'769,769' or ['769', '769'] -> (769, 769); one value means a square."""
    if values is None or values == [] or values == "":
        if allow_none:
            return None
        raise FlagError(f"--{flag} is required (h,w)")
    sizes = parse_int_list(values, flag)
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise FlagError(f"--{flag}: expected 'height,width' positive integers, got {values!r}")
    return sizes


def parse_atrous_rates(values, flag: str = "atrous_rates") -> tuple[int, ...] | None:
    """None (unset: the output stride's convention), () for 'none', else the rates."""
    if values is None:
        return None
    if [str(v).strip().lower() for v in ([values] if isinstance(values, str) else values)] == ["none"]:
        return ()
    return parse_int_list(values, flag)


def parse_decoder_output_stride(value, flag: str = "decoder_output_stride") -> int | str | None:
    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    if str(value).strip().lower() == "auto":
        return "auto"
    vals = parse_int_list(value, flag)
    if len(vals) != 1:
        raise FlagError(f"--{flag}: one value expected (4, 8 or none), got {value!r}")
    return vals[0]


def model_config_from_flags(flag_values=flags.FLAGS) -> ModelConfig:
    """ModelConfig from the flags of define_model_flags (errors name the flag)."""
    f = flag_values
    try:
        return ModelConfig(
            architecture=f.architecture,
            filter_multiplier=f.nas_stem_output_num_conv_filters,
            atrous_rates=parse_atrous_rates(f.atrous_rates),
            output_stride=f.output_stride,
            decoder_output_stride=parse_decoder_output_stride(f.decoder_output_stride),
            aspp_with_separable_conv=f.aspp_with_separable_conv,
            decoder_use_separable_conv=f.decoder_use_separable_conv)
    except FlagError:
        raise
    except ValueError as e:
        raise FlagError(str(e)) from None


def resize_options_from_flags(flag_values=flags.FLAGS) -> dict:
    f = flag_values
    return {"min_resize_value": f.min_resize_value, "max_resize_value": f.max_resize_value,
            "resize_factor": f.resize_factor}


def user_error_message(exc: Exception) -> str | None:
    """The one-line message a CLI prints (exit status 2) for an error the user can fix (bad flag,
    data, checkpoint or output folder), or None for anything else (a bug: let the traceback show).
    A DataError raised inside tf.data reaches Python wrapped in a TF error; its line is picked out."""
    text = str(exc)
    # ValueError: FlagError, DataError, CheckpointError, ExportError, ArchitectureError; OSError:
    # OutputError, FileNotFoundError. CheckpointMismatchError (a RuntimeError) is matched by name so
    # this flag module does not import the checkpointing one.
    if not (isinstance(exc, (ValueError, OSError)) or "DataError:" in text
            or "CheckpointMismatchError" in {cls.__name__ for cls in type(exc).__mro__}):
        return None
    msg = (getattr(exc, "message", None) or text).strip()
    if "DataError:" in msg:
        msg = msg[msg.index("DataError:"):].splitlines()[0]
    return msg


def report_user_error(exc: Exception, program: str) -> int:
    """For a CLI's `except Exception`: print "<program>: error: <message>" to stderr and return exit
    status 2 for a user error (`user_error_message`); re-raise anything else with its traceback."""
    msg = user_error_message(exc)
    if msg is None:
        raise exc
    print(f"{program}: error: {msg}", file=sys.stderr)
    return 2


def parse_flags_or_exit(argv):
    """`app.run(main, flags_parser=parse_flags_or_exit)`: absl's flag parsing, but a bad flag value
    ends like every other user error of the CLIs, in one "<program>: error: <message>" line naming
    the flag and exit status 2 (absl prints "FATAL Flags parsing error" and exits 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"{os.path.basename(argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)
