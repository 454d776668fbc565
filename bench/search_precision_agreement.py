"""Does a 16-bit search find what the float32 one finds? The same search (seed, data, steps) in each
precision, then the decoded architectures side by side and the correlation of alpha and beta.

    python bench/search_precision_agreement.py --output_dir=/tmp/spa                       # defaults
    python bench/search_precision_agreement.py --epochs=2 --steps_per_epoch=2 --num_layers=2 \
        --filter_multiplier=2 --crop_size=33 --output_dir=/tmp/spa_smoke                     # smoke run

Why: bfloat16 keeps 8 mantissa bits; alpha/beta gradients are sums over the whole supernet, so a
precision that changed the decision would make a 16-bit search mean something else. Both runs use
`--deterministic`, so the only difference is the compute dtype. Correlations are Pearson's over the
alpha logits and over the beta logits of existing transitions, measured on how far each moved from
the (shared) initial values: a correlation of the raw values would be dominated by the initialisation.
Writes <output_dir>/<precision>/ (the search runs) and agreement.json.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags, defined when run as a script (importing the module for its functions defines none)."""
    flags.DEFINE_string("output_dir", "search_precision_agreement", "Folder for the runs and agreement.json.")
    flags.DEFINE_string("dataset", "synthetic_context", "Data set (as search.py).")
    flags.DEFINE_list("precisions", ["none", "mixed_bfloat16"], "The first is the reference.")
    flags.DEFINE_integer("epochs", 6, "Search epochs.")
    flags.DEFINE_integer("arch_start_epoch", 2, "First epoch with architecture steps.")
    flags.DEFINE_integer("steps_per_epoch", 0, "Cap on steps per epoch (0: a pass over trainA).")
    flags.DEFINE_integer("crop_size", 65, "Search crop (32k+1).")
    flags.DEFINE_integer("batch_size", 2, "Global batch.")
    flags.DEFINE_integer("num_layers", 12, "L.")
    flags.DEFINE_integer("filter_multiplier", 8, "F.")
    flags.DEFINE_integer("seed", 0, "Seed of both runs.")


def moved_correlation(a, a0, b, b0, mask=None) -> float:
    """Pearson correlation of (a - a0) and (b - b0), over `mask` when given."""
    import numpy as np  # noqa: PLC0415
    da, db = np.asarray(a, np.float64) - a0, np.asarray(b, np.float64) - b0
    if mask is not None:
        da, db = da[mask], db[mask]
    da, db = da.ravel() - da.mean(), db.ravel() - db.mean()
    denom = np.linalg.norm(da) * np.linalg.norm(db)
    return float(da @ db / denom) if denom > 0 else float("nan")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import numpy as np  # noqa: PLC0415

    from nas_deeplab.io_utils import atomic_write_text  # noqa: PLC0415
    from nas_deeplab.search import searcher, trellis  # noqa: PLC0415
    from nas_deeplab.training import threads  # noqa: PLC0415
    print(threads.configure("auto", prefer="op_parallel"), flush=True)
    runs = {}
    for mp in FLAGS.precisions:
        cfg = searcher.SearchConfig(
            output_dir=os.path.join(FLAGS.output_dir, mp), dataset=FLAGS.dataset, epochs=FLAGS.epochs,
            arch_start_epoch=FLAGS.arch_start_epoch, steps_per_epoch=FLAGS.steps_per_epoch,
            crop_size=FLAGS.crop_size, batch_size=FLAGS.batch_size, num_layers=FLAGS.num_layers,
            filter_multiplier=FLAGS.filter_multiplier, seed=FLAGS.seed, deterministic=True,
            strategy="one_device", mixed_precision=mp, val_steps=0)
        try:
            s = searcher.Searcher(cfg, log=lambda *a, **k: None)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        alpha0, beta0 = s.net.alpha.numpy().copy(), s.net.beta.numpy().copy()
        result = s.run()
        runs[mp] = {"alpha": s.net.alpha.numpy(), "beta": s.net.beta.numpy(), "alpha0": alpha0, "beta0": beta0,
                    "architecture": result.architecture, "summary": result.summary, "steps": result.step,
                    "timings": result.timings}
        print(f"{mp}: {result.step} steps, backbone {list(result.architecture.backbone)}, verdict "
              f"{(result.summary or {}).get('verdict')}", flush=True)
    ref_name = FLAGS.precisions[0]
    ref = runs[ref_name]
    valid = trellis.valid_mask(*ref["beta"].shape[:2])
    report = {"settings": {k: getattr(FLAGS, k) for k in ("dataset", "epochs", "arch_start_epoch",
                                                          "steps_per_epoch", "crop_size", "batch_size",
                                                          "num_layers", "filter_multiplier", "seed")},
              "reference": ref_name, "runs": {}}
    for mp, r in runs.items():
        a = r["architecture"]
        report["runs"][mp] = {
            "steps": r["steps"], "backbone": list(a.backbone), "operations": list(a.operations),
            "hiddenstate_indices": list(a.hiddenstate_indices), "verdict": (r["summary"] or {}).get("verdict"),
            "same_cell_as_reference": (a.operations, a.hiddenstate_indices) ==
                                      (ref["architecture"].operations, ref["architecture"].hiddenstate_indices),
            "same_path_as_reference": tuple(a.backbone) == tuple(ref["architecture"].backbone),
            "alpha_moved_correlation": moved_correlation(r["alpha"], r["alpha0"], ref["alpha"], ref["alpha0"]),
            "beta_moved_correlation": moved_correlation(r["beta"], r["beta0"], ref["beta"], ref["beta0"],
                                                        valid),
            "alpha_max_abs_difference": float(np.abs(r["alpha"] - ref["alpha"]).max()),
            "weight_step_first_s": r["timings"].get("weight_first_step_s")}
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    atomic_write_text(os.path.join(FLAGS.output_dir, "agreement.json"), json.dumps(report, indent=2) + "\n")
    for mp, r in report["runs"].items():
        print(f"{mp:16s} backbone {r['backbone']}  cell {'=' if r['same_cell_as_reference'] else '!='} "
              f"{ref_name}'s, path {'=' if r['same_path_as_reference'] else '!='}; alpha corr "
              f"{r['alpha_moved_correlation']:.4f}, beta corr {r['beta_moved_correlation']:.4f}")
    print(f"written: {os.path.join(FLAGS.output_dir, 'agreement.json')}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
