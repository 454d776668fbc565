"""A/B of search-step variants inside one process, their steps alternating.

    python bench/ab_search.py --crop=321 --step=weight --rounds=8 \
        --variant=now --variant="concat_bn:search.supernet.PER_OUTPUT_BN_MIN_SIZE=1000000"

Why: on a shared CPU machine the speed of separate runs drifts by 10-20% within a day, more than the
5-10% a change to the supernet typically gains. Here every variant is built and traced in the same
process and their steps run in turn (A, B, B, A, A, B, ...), so drift hits all of them alike.

A variant is `NAME` (the code as it is) or `NAME:MODULE.ATTR=VALUE[;MODULE.ATTR=VALUE...]`, with MODULE
relative to `nas_deeplab` and VALUE a Python literal. The assignments are in force while that
variant's steps are traced (the supernet's map-size thresholds are read at trace time), then undone.
`config.FIELD=VALUE` sets a SearchConfig field of that variant instead, e.g.
`--mixed_precision=mixed_bfloat16 --variant=keep --variant="recompute:config.recompute_cheap_ops='on'"`.
Prints each variant's median step time, its ratio to the first variant's, and in how many rounds it
was faster than the first.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("crop", 321, "Search crop (32k+1).")
flags.DEFINE_enum("step", "weight", ["weight", "arch"], "Which step to time.")
flags.DEFINE_integer("rounds", 8, "Timed rounds (each runs every variant once), after one warm-up round.")
flags.DEFINE_multi_string("variant", ["now"], "NAME or NAME:MODULE.ATTR=VALUE[;...] (see module doc).")
flags.DEFINE_enum("mixed_precision", "none", ["none", "mixed_bfloat16", "mixed_float16"],
                  "The searches' --mixed_precision.")


def parse_variant(text: str) -> tuple[str, list[tuple[object, str, object]]]:
    """'name:search.supernet.X=3;...' -> (name, [(module, 'X', 3), ...])."""
    name, _, spec = text.partition(":")
    if not name:
        raise app.UsageError(f"--variant={text!r}: needs a name before ':'")
    patches = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        target, eq, value = item.partition("=")
        module_name, _, attr = target.strip().rpartition(".")
        if not eq or not module_name:
            raise app.UsageError(f"--variant={text!r}: '{item}' is not MODULE.ATTR=VALUE")
        if module_name == "config":
            try:
                patches.append(("config", attr, ast.literal_eval(value.strip())))
            except (ValueError, SyntaxError):
                raise app.UsageError(f"--variant={text!r}: {value.strip()!r} is not a Python literal") from None
            continue
        try:
            module = importlib.import_module(f"nas_deeplab.{module_name}")
        except ImportError as e:
            raise app.UsageError(f"--variant={text!r}: no module nas_deeplab.{module_name} ({e})") from None
        if not hasattr(module, attr):
            raise app.UsageError(f"--variant={text!r}: nas_deeplab.{module_name} has no {attr}")
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise app.UsageError(f"--variant={text!r}: {value.strip()!r} is not a Python literal") from None
        patches.append((module, attr, parsed))
    return name, patches


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    variants = [parse_variant(v) for v in FLAGS.variant]
    if len({name for name, _ in variants}) != len(variants):
        raise app.UsageError("--variant names must differ")
    import numpy as np  # noqa: PLC0415

    from nas_deeplab.search import searcher  # noqa: PLC0415
    from nas_deeplab.training import threads  # noqa: PLC0415
    print(threads.configure("auto", prefer="op_parallel"), flush=True)
    steps = {}
    for name, patches in variants:
        fields = {a: v for m, a, v in patches if m == "config"}
        patches = [p for p in patches if p[0] != "config"]
        try:
            cfg = searcher.SearchConfig(**{**dict(
                output_dir=tempfile.mkdtemp(prefix="ab_search_"), crop_size=FLAGS.crop, batch_size=2,
                num_layers=12, num_blocks=5, filter_multiplier=8, epochs=1, steps_per_epoch=1,
                arch_start_epoch=0, strategy="one_device", val_steps=0,
                mixed_precision=FLAGS.mixed_precision), **fields})
        except TypeError as e:
            raise app.UsageError(f"--variant={name}: {e}") from None
        try:
            s = searcher.Searcher(cfg, log=lambda *a, **k: None)
        except ValueError as e:  # the search's own checks (crop size ...), named for this tool's flags
            raise app.UsageError(f"--crop={FLAGS.crop}: {e}") from None
        batch = next(s._dataset("trainA" if FLAGS.step == "weight" else "trainB", 0))  # noqa: SLF001
        saved = [(m, a, getattr(m, a)) for m, a, _ in patches]
        try:
            for m, a, v in patches:
                setattr(m, a, v)
            t0 = time.monotonic()
            s.compile_steps()  # traces with the patches in force; the step runs as in a search
            step = s.weight_step if FLAGS.step == "weight" else s.arch_step
            step(batch)["loss"].numpy()
        finally:
            for m, a, v in saved:
                setattr(m, a, v)
        print(f"{name}: built and traced, first step {time.monotonic() - t0:.1f} s", flush=True)
        steps[name] = (step, batch)
    times = {name: [] for name in steps}
    for r in range(FLAGS.rounds + 1):
        order = list(steps.items())
        for name, (step, batch) in (order if r % 2 else order[::-1]):  # cancel order effects
            t0 = time.monotonic()
            step(batch)["loss"].numpy()
            if r:
                times[name].append(time.monotonic() - t0)
    first = variants[0][0]
    base = np.median(times[first])
    print(f"crop {FLAGS.crop}, {FLAGS.step} step, {FLAGS.rounds} rounds (median s, ratio to {first}, "
          f"rounds faster than {first}):")
    for name in steps:
        med = np.median(times[name])
        wins = sum(t < b for t, b in zip(times[name], times[first])) if name != first else "-"
        print(f"  {name:20s} {med:7.3f}  x{med / base:.3f}  {wins}  "
              f"{[round(t, 2) for t in times[name]]}", flush=True)


if __name__ == "__main__":
    app.run(main)
