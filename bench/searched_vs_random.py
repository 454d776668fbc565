"""Searched vs published vs random architectures, trained and evaluated alike.

    python bench/searched_vs_random.py --output_dir=/tmp/svr                      # defaults (long)
    python bench/searched_vs_random.py --search_epochs=2 --train_steps=10 --num_random=2 \
        --filter_multiplier=2 --crop_size=65 --search_crop_size=33 --output_dir=/tmp/svr_smoke          # smoke run

Why: a searched architecture means something only against random ones from the same space (Li &
Talwalkar 2019). This runs the search (`searcher.run_search`), draws --num_random architectures
uniformly from the decodable space (`search.random_search.random_architecture`, seeds 0..K-1), then
trains the searched, the published and the random ones with the SAME filter multiplier, steps, seeds,
crop and data (the trainer's defaults otherwise, no random scaling), replaces each run's BN statistics
by precise ones (`precise_bn.store_precise_checkpoint`) and evaluates it (`evaluator.evaluate`).

Writes to --output_dir: search/ (the search run), architectures/<name>.json, runs/<name>_seed<s>/
(train + eval), and results.json, results.md (a table: each run's mIoU, parameters, train time; the
random group's mean +- std; the search's decidedness verdict) and results.png. Rerun the same
command after an interruption to continue: the search resumes from its checkpoints and a run whose
record.json exists is not redone (a record with other settings is an error, not silently reused).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags, defined when run as a script (importing the module for its functions defines none)."""
    flags.DEFINE_string("output_dir", "searched_vs_random", "Folder for the search, the runs and the results.")
    flags.DEFINE_string("dataset", "synthetic_context", "Data set name or JSON descriptor (as train.py).")
    flags.DEFINE_string("dataset_dir", None, "Its TFRecord folder (not needed for the built-in sets).")
    flags.DEFINE_integer("search_epochs", 10, "Search epochs; alpha/beta are updated in the second half.")
    flags.DEFINE_integer("search_steps_per_epoch", 0, "Cap on search steps per epoch (0: a pass over trainA).")
    flags.DEFINE_integer("search_batch_size", 2, "Global batch of the search (the paper's 2).")
    flags.DEFINE_integer("search_crop_size", 65, "Square crop of the search (32k+1).")
    flags.DEFINE_integer("num_layers", 12, "L of the search and of the random architectures.")
    flags.DEFINE_integer("train_steps", 1200, "Training steps of every architecture.")
    flags.DEFINE_float("base_learning_rate", 0.08, "Base LR of every training run's poly schedule (train.py's "
                       "default; 0.2 did not learn this set at F=8, 0.08 did).")
    flags.DEFINE_integer("train_batch_size", 8, "Global training batch of every architecture.")
    flags.DEFINE_integer("filter_multiplier", 8, "F of the search and of every trained architecture.")
    flags.DEFINE_integer("crop_size", 129, "Square training crop (32k+1; the set's images are 129x129).")
    flags.DEFINE_integer("num_random", 5, "K: random architectures (random_architecture seeds 0..K-1).")
    flags.DEFINE_list("seeds", ["0"], "Training seeds; every architecture is trained once per seed.")
    flags.DEFINE_integer("precise_bn_batches", 12, "Batches (of --train_batch_size images, as training "
                         "normalised them) for precise BN after training: 12 x 8 = the 96 training images.")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    output_dir: str
    dataset: str = "synthetic_context"
    dataset_dir: str | None = None
    search_epochs: int = 10
    search_steps_per_epoch: int = 0
    search_batch_size: int = 2
    search_crop_size: int = 65
    num_layers: int = 12
    train_steps: int = 1200
    base_learning_rate: float = 0.08
    train_batch_size: int = 8
    filter_multiplier: int = 8
    crop_size: int = 129
    num_random: int = 5
    seeds: tuple[int, ...] = (0,)
    precise_bn_batches: int = 12

    def validate(self) -> None:
        def need(cond, flag, msg):
            if not cond:
                raise ValueError(f"--{flag}: {msg}")
        need(self.output_dir, "output_dir", "must not be empty")
        need(self.search_epochs >= 1, "search_epochs", f"must be >= 1, got {self.search_epochs}")
        need(self.search_steps_per_epoch >= 0, "search_steps_per_epoch", "must be >= 0")
        need(self.search_batch_size >= 1, "search_batch_size", "must be >= 1")
        need(self.num_layers >= 1, "num_layers", f"must be >= 1, got {self.num_layers}")
        need(self.train_steps >= 1, "train_steps", f"must be >= 1, got {self.train_steps}")
        need(self.base_learning_rate > 0, "base_learning_rate", f"must be > 0, got {self.base_learning_rate}")
        need(self.train_batch_size >= 1, "train_batch_size", "must be >= 1")
        need(self.filter_multiplier >= 1, "filter_multiplier", f"must be >= 1, got {self.filter_multiplier}")
        for flag in ("crop_size", "search_crop_size"):
            crop = getattr(self, flag)
            need(crop >= 33 and (crop - 1) % 32 == 0, flag, f"must be 32k+1 and >= 33 (33, 65, 129, ...), got {crop}")
        need(self.num_random >= 0, "num_random", f"must be >= 0, got {self.num_random}")
        need(len(self.seeds) >= 1 and all(s >= 0 for s in self.seeds), "seeds",
             f"needs one or more non-negative integers, got {list(self.seeds)}")
        need(len(set(self.seeds)) == len(self.seeds), "seeds", f"repeats a seed: {list(self.seeds)}")
        need(self.precise_bn_batches >= 1, "precise_bn_batches", "must be >= 1")


def config_from_flags() -> BenchConfig:
    try:
        seeds = tuple(int(s) for s in FLAGS.seeds)
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {','.join(FLAGS.seeds)!r}") from None
    cfg = BenchConfig(output_dir=FLAGS.output_dir, dataset=FLAGS.dataset, dataset_dir=FLAGS.dataset_dir,
                      search_epochs=FLAGS.search_epochs, search_steps_per_epoch=FLAGS.search_steps_per_epoch,
                      search_batch_size=FLAGS.search_batch_size,
                      search_crop_size=FLAGS.search_crop_size, num_layers=FLAGS.num_layers,
                      train_steps=FLAGS.train_steps, base_learning_rate=FLAGS.base_learning_rate, train_batch_size=FLAGS.train_batch_size,
                      filter_multiplier=FLAGS.filter_multiplier, crop_size=FLAGS.crop_size,
                      num_random=FLAGS.num_random, seeds=seeds, precise_bn_batches=FLAGS.precise_bn_batches)
    cfg.validate()
    return cfg


# -- the steps ---------------------------------------------------------------------------------------
class _Quiet(io.StringIO):
    """Collects the library's per-step chatter (written to log.txt of each run, warnings included);
    the script prints one progress line per stage."""


def run_search(cfg: BenchConfig, dataset_dir: str, stream):
    from nas_deeplab.search.searcher import SearchConfig, run_search as search
    search_cfg = SearchConfig(output_dir=os.path.join(cfg.output_dir, "search"), dataset=cfg.dataset,
                              dataset_dir=dataset_dir, epochs=cfg.search_epochs,
                              steps_per_epoch=cfg.search_steps_per_epoch,
                              arch_start_epoch=cfg.search_epochs // 2, crop_size=cfg.search_crop_size,
                              batch_size=cfg.search_batch_size, filter_multiplier=cfg.filter_multiplier,
                              num_layers=cfg.num_layers, seed=cfg.seeds[0])
    t0 = time.monotonic()
    quiet = _Quiet()
    result = search(search_cfg, log=lambda *a, **k: print(*a, file=quiet))
    seconds = time.monotonic() - t0
    from nas_deeplab.io_utils import atomic_write_text
    atomic_write_text(os.path.join(search_cfg.output_dir, "log.txt"), quiet.getvalue())
    summary = result.summary or {}
    print(f"[search] {'finished' if result.finished else 'stopped'} at step {result.step} in {seconds:.0f} s; "
          f"backbone {list(result.architecture.backbone)}; verdict {summary.get('verdict', '?')}",
          file=stream, flush=True)
    return result, seconds


def train_and_evaluate(cfg: BenchConfig, arch_path: str, name: str, seed: int, dataset_dir: str, stream) -> dict:
    """One run: train, precise BN, evaluate. Returns its record (also written as record.json)."""
    from nas_deeplab.data import descriptors
    from nas_deeplab.io_utils import atomic_write_text
    from nas_deeplab.model.summary import count_trainable_params
    from nas_deeplab.training import evaluator, precise_bn, trainer
    from nas_deeplab.training.model_config import ModelConfig

    run_dir = os.path.join(cfg.output_dir, "runs", f"{name}_seed{seed}")
    record_path = os.path.join(run_dir, "record.json")
    with open(arch_path, encoding="utf-8") as f:
        arch_dict = json.load(f)
    settings = {"architecture": arch_dict, "seed": seed,
                "train_steps": cfg.train_steps, "base_learning_rate": cfg.base_learning_rate,
                "train_batch_size": cfg.train_batch_size,
                "crop_size": cfg.crop_size, "dataset": cfg.dataset, "precise_bn_batches": cfg.precise_bn_batches,
                "precise_bn_batch_size": cfg.train_batch_size}
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("settings") != settings:
            raise ValueError(f"--output_dir: {run_dir} holds a finished run with other settings; use a new "
                             "--output_dir (or remove that folder)")
        print(f"[train] {name} seed {seed}: done before, miou {old['miou']:.4f}", file=stream, flush=True)
        return old
    model_cfg = ModelConfig(architecture=arch_path, filter_multiplier=cfg.filter_multiplier)
    train_cfg = trainer.TrainConfig(model=model_cfg, train_logdir=run_dir, dataset=cfg.dataset,
                                    dataset_dir=dataset_dir, train_batch_size=cfg.train_batch_size,
                                    train_crop_size=(cfg.crop_size, cfg.crop_size), min_scale_factor=1.0,
                                    max_scale_factor=1.0, training_number_of_steps=cfg.train_steps,
                                    base_learning_rate=cfg.base_learning_rate, seed=seed)
    quiet = _Quiet()
    t0 = time.monotonic()
    result = trainer.train(train_cfg, stream=quiet)
    # Training time over every call (an interrupted run resumed from its checkpoint adds up).
    spent_path = os.path.join(run_dir, "train_seconds.json")
    spent = json.load(open(spent_path, encoding="utf-8")) if os.path.isfile(spent_path) else []
    spent.append(round(time.monotonic() - t0, 1))
    atomic_write_text(spent_path, json.dumps(spent) + "\n")
    train_seconds = sum(spent)
    # Precise BN at the training batch: the image-pooling BN normalises over the batch, so smaller
    # batches change what every later layer sees (batch 2 cost the published model 0.15 mIoU here).
    prefix = precise_bn.store_precise_checkpoint(result.checkpoint, cfg.precise_bn_batches, cfg.train_batch_size,
                                                 model_cfg,
                                                 stream=quiet)
    t0 = time.monotonic()
    results = evaluator.evaluate(evaluator.EvalConfig(checkpoint_path=prefix, model=model_cfg,
                                                      output_dir=os.path.join(run_dir, "eval")), stream=quiet)
    eval_seconds = time.monotonic() - t0
    model, _ = model_cfg.build(descriptors.get_descriptor(cfg.dataset).num_classes)
    record = {"name": name, "seed": seed, "miou": float(results["miou"]),
              "per_class_iou": results["per_class_iou"], "params": count_trainable_params(model),
              "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
              "final_loss": result.losses[-1][1] if result.losses else None, "checkpoint": prefix,
              "settings": settings}
    atomic_write_text(os.path.join(run_dir, "log.txt"), quiet.getvalue())
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    print(f"[train] {name} seed {seed}: miou {record['miou']:.4f}, {record['params']:,} params, "
          f"train {train_seconds:.0f} s", file=stream, flush=True)
    return record


# -- the report --------------------------------------------------------------------------------------
def group_stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None, "n": len(values)}


def summarize(cfg: BenchConfig, records: list[dict], kinds: dict[str, str], search_info: dict) -> dict:
    per_arch = {}
    for r in records:
        a = per_arch.setdefault(r["name"], {"name": r["name"], "kind": kinds[r["name"]], "mious": [],
                                            "params": r["params"], "train_seconds": []})
        a["mious"].append(r["miou"])
        a["train_seconds"].append(r["train_seconds"])
        for cls, iou in r["per_class_iou"].items():
            a.setdefault("per_class", {}).setdefault(cls, []).append(iou)
    for a in per_arch.values():
        a["miou"] = statistics.fmean(a["mious"])
        a["per_class_iou"] = {cls: statistics.fmean(v) for cls, v in a.pop("per_class", {}).items()}
    random_mious = [a["miou"] for a in per_arch.values() if a["kind"] == "random"]
    return {"settings": dataclasses.asdict(cfg), "search": search_info, "architectures": list(per_arch.values()),
            "random_group": group_stats(random_mious), "runs": records}


def results_markdown(summary: dict) -> str:
    s, search = summary["settings"], summary["search"]
    lines = [f"# Searched vs published vs random ({s['dataset']})", "",
             f"F={s['filter_multiplier']}, crop {s['crop_size']}, {s['train_steps']} training steps (batch "
             f"{s['train_batch_size']}, poly LR {s['base_learning_rate']}, no random scaling), seeds {list(s['seeds'])}, precise BN on {s['precise_bn_batches']} "
             f"batches of {s['train_batch_size']}; search: {s['search_epochs']} epochs (L={s['num_layers']}, crop {s['search_crop_size']}, batch "
             f"{s['search_batch_size']}), {search['steps']} steps, "
             f"{search['seconds']:.0f} s, verdict **{search['verdict']}**.", "",
             "| architecture | kind | mIoU (mean over seeds) | per seed | parameters | train time (s) |",
             "|---|---|---|---|---|---|"]
    for a in summary["architectures"]:
        lines.append(f"| {a['name']} | {a['kind']} | {a['miou']:.4f} | "
                     f"{', '.join(f'{m:.4f}' for m in a['mious'])} | {a['params']:,} | "
                     f"{', '.join(f'{t:.0f}' for t in a['train_seconds'])} |")
    classes = list(summary["architectures"][0]["per_class_iou"]) if summary["architectures"] else []
    if classes:
        lines += ["", "Per-class IoU (mean over seeds):", "",
                  "| architecture | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        lines += [f"| {a['name']} | " + " | ".join(f"{a['per_class_iou'][c]:.3f}" for c in classes) + " |"
                  for a in summary["architectures"]]
    g = summary["random_group"]
    if g["n"]:
        lines += ["", f"Random group ({g['n']} architectures): mIoU {g['mean']:.4f} +- {g['std']:.4f} (std)."]
    lines += ["", f"Search verdict `{search['verdict']}` (search_summary in search/architecture.json): "
              "'prior' means the searched architecture is the initialisation, not a search result.", ""]
    return "\n".join(lines)


def results_png(summary: dict) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    archs = summary["architectures"]
    fixed = [a for a in archs if a["kind"] != "random"]
    randoms = [a for a in archs if a["kind"] == "random"]
    colors = {"searched": "tab:red", "published": "tab:blue"}
    for x, a in enumerate(fixed):
        ax.scatter([x] * len(a["mious"]), a["mious"], color=colors.get(a["kind"], "k"), s=20, alpha=0.5)
        ax.scatter([x], [a["miou"]], color=colors.get(a["kind"], "k"), marker="D", s=50, zorder=3)
    labels = [a["name"] for a in fixed]
    if randoms:
        x = len(fixed)
        n = len(randoms)
        xs = [x - 0.15 + 0.3 * i / (n - 1) for i in range(n)] if n > 1 else [x]
        ax.scatter(xs, [a["miou"] for a in randoms], color="tab:gray", s=25, label="random (each)")
        g = summary["random_group"]
        ax.errorbar([x + 0.3], [g["mean"]], yerr=[g["std"]], fmt="o", color="k", capsize=5,
                    label=f"random mean +- std (n={g['n']})")
        labels.append("random")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylabel("val mIoU (precise BN)")
    s = summary["settings"]
    ax.set_title(f"{s['dataset']}: F={s['filter_multiplier']}, crop {s['crop_size']}, {s['train_steps']} steps, "
                 f"search {summary['search']['verdict']}", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def run_benchmark(cfg: BenchConfig, stream=None) -> dict:
    """The whole comparison; returns the summary written to results.json."""
    from nas_deeplab import architecture as arch_lib
    from nas_deeplab.data.synthetic import resolve_dataset
    from nas_deeplab.io_utils import atomic_write_bytes, atomic_write_text, check_writable_dir
    from nas_deeplab.search.random_search import random_architecture

    stream = stream or sys.stdout
    cfg.validate()
    check_writable_dir(cfg.output_dir, "--output_dir")
    _, dataset_dir = resolve_dataset(cfg.dataset, cfg.dataset_dir)
    t_start = time.monotonic()
    result, search_seconds = run_search(cfg, dataset_dir, stream)
    f = cfg.filter_multiplier
    archs = [(dataclasses.replace(result.architecture.with_filter_multiplier(f), name="searched"), "searched"),
             (arch_lib.published(f, name="published"), "published")]
    archs += [(random_architecture(k, num_layers=cfg.num_layers, filter_multiplier=f), "random")
              for k in range(cfg.num_random)]
    arch_dir = os.path.join(cfg.output_dir, "architectures")
    os.makedirs(arch_dir, exist_ok=True)
    records, kinds = [], {}
    total = len(archs) * len(cfg.seeds)
    for arch, kind in archs:
        path = os.path.join(arch_dir, f"{arch.name}.json")
        arch.save(path)
        kinds[arch.name] = kind
        for seed in cfg.seeds:
            print(f"[{len(records) + 1}/{total}] {arch.name} ({kind}) seed {seed}: backbone "
                  f"{list(arch.backbone)}", file=stream, flush=True)
            records.append(train_and_evaluate(cfg, path, arch.name, seed, dataset_dir, stream))
    search_info = {"seconds": round(search_seconds, 1), "steps": result.step, "finished": result.finished,
                   "verdict": (result.summary or {}).get("verdict"),
                   "architecture": os.path.abspath(result.architecture_path)}
    summary = summarize(cfg, records, kinds, search_info)
    summary["total_seconds"] = round(time.monotonic() - t_start, 1)
    atomic_write_text(os.path.join(cfg.output_dir, "results.json"), json.dumps(summary, indent=2) + "\n")
    text = results_markdown(summary)
    atomic_write_text(os.path.join(cfg.output_dir, "results.md"), text)
    atomic_write_bytes(os.path.join(cfg.output_dir, "results.png"), results_png(summary))
    print(f"\n{text}\nwritten: {os.path.join(cfg.output_dir, 'results.md')} (+ results.json, results.png); "
          f"{summary['total_seconds']:.0f} s in all", file=stream, flush=True)
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from nas_deeplab.training import flags_common
    try:
        cfg = config_from_flags()
    except ValueError as e:
        return flags_common.report_user_error(e, "searched_vs_random.py")
    from nas_deeplab.cli_startup import import_tensorflow
    import_tensorflow()
    from nas_deeplab.training import threads
    print(threads.configure("auto", prefer="op_parallel"), file=sys.stdout, flush=True)
    try:
        run_benchmark(cfg)
    except Exception as e:  # noqa: BLE001  data, output folder, a stopped search: one clear line
        return flags_common.report_user_error(e, "searched_vs_random.py")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
