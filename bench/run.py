"""Benchmarks: search steps, training step, exported inference, input pipeline, TFLite.

    python bench/run.py [--only=search,search_precision,train,inference,input,tflite] [--crops=65,129,321]
        [--precisions=none,mixed_bfloat16] [--json=PATH] [--merge] [--tflite_size=513]

Prints a table and writes JSON records ({"name", "crop" or "size", "median_s", "peak_rss_mib",
"gflops", "gflop_per_s", ...}) plus the machine (CPU model, cores, GPU, TF version).

FLOP convention (the same for every record): the TF profiler's float-op count of the traced forward
graph (2 FLOPs per multiply-add of every conv/matmul, plus elementwise ops it counts), times 3 for a
step that also back-propagates to the weights (backward ~ 2x forward) and times 2 for the
architecture step (backward to the activations and alpha/beta only). The supernet is counted on a
trace with its nodes inlined (the profiler does not look inside called functions). Peak RSS is the process
maximum so far, so each section runs in its own process (`--only` is re-invoked per section).

Precision: every record carries "precision" (the --mixed_precision / --precision it ran in). Speed-ups
of 16-bit compute are ratios measured inside one process with alternating rounds (search_precision,
train, inference); the search's peak memory per precision comes from its own process (search).
"""

from __future__ import annotations

import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("only", ["search", "search_precision", "train", "inference", "input", "tflite"],
                  "Sections to run.")
flags.DEFINE_list("precisions", ["none", "mixed_bfloat16"], "Mixed-precision policies of the search and "
                  "training sections (none = float32); the first is the baseline of the ratios.")
flags.DEFINE_list("precision_crops", ["321"], "Search crops of the one-process precision A/B "
                  "(search_precision).")
flags.DEFINE_list("crops", ["65", "129", "321"], "Search crops.")
flags.DEFINE_list("recompute_crops", ["321"], "Search crops measured again with --recompute_levels=0,1 "
                  "(the memory-bounded setting).")
flags.DEFINE_list("train_crops", ["321", "769"], "Training-step crops (Auto-DeepLab-S).")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported) after warm-up.")
flags.DEFINE_string("json", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json"),
                    "Where to write the records.")
flags.DEFINE_boolean("merge", False, "Keep the records of the sections not run from the existing --json "
                     "file (each record carries its section and date), instead of writing only this run's.")
flags.DEFINE_boolean("child", False, "Internal: run one section in this process and print JSON.")
flags.DEFINE_string("child_crop", "", "Internal: the crop/size of a child run.")
flags.DEFINE_enum("search_cheap_ops", "auto", ["auto", "on", "off"],
                  "search: search.py's --recompute_cheap_ops (auto: on for 16-bit).")
flags.DEFINE_list("serving_precisions", ["float32", "bfloat16"], "export.py --precision values of the "
                  "inference section's SavedModels (16-bit ones with BN folded, export.py's default), timed "
                  "in the same rounds as the float32 one and the TF1 graph.")
flags.DEFINE_integer("tflite_size", 513, "Square input size of the TFLite section (Auto-DeepLab-S, "
                     "float32 / float16 / int8).")
flags.DEFINE_integer("tflite_representative", 8, "Calibration images of the int8 TFLite model.")
flags.DEFINE_enum("threads", "auto", ["auto", "op_parallel", "default"],
                  "CPU thread policy (nas_deeplab.training.threads); auto: what each program uses.")
SECTIONS = ("search", "search_precision", "train", "inference", "input", "tflite")
_SECTION_OF_NAME = {"search_startup": "search", "search_weight_step": "search", "search_arch_step": "search",
                    "train_step": "train", "inference": "inference", "inference_tf1_graph": "inference",
                    "conv_peak": "inference", "input_pipeline": "input", "tflite": "tflite",
                    "tflite_tf_graph": "tflite", "search_weight_step_precision": "search_precision",
                    "search_arch_step_precision": "search_precision"}


def section_of(record: dict) -> str:
    """The section a record belongs to (older files carry no "section" key: known by its name)."""
    return record.get("section") or _SECTION_OF_NAME.get(record.get("name"), record.get("name"))


def merged_records(old: list[dict], new: list[dict], sections_run) -> list[dict]:
    """`new` plus the records of `old` from sections not run now, in SECTIONS order."""
    run_now = set(sections_run)
    kept = [r for r in old if section_of(r) not in run_now]
    order = {name: i for i, name in enumerate(SECTIONS)}
    return sorted(kept + new, key=lambda r: order.get(section_of(r), len(order)))  # stable


def _forward_flops(fn, spec):
    import tensorflow as tf  # noqa: PLC0415

    from bench import common  # noqa: PLC0415
    return common.graph_flops(tf.function(fn).get_concrete_function(spec))


def _searcher(out: str, crop: int, recompute_levels=(), mixed_precision: str = "none",
              recompute_cheap_ops: str = "auto"):
    """The paper-size supernet (L=12, B=5, F=8, batch 2) on one device, as the benchmarks drive it."""
    from nas_deeplab.search import searcher  # noqa: PLC0415
    cfg = searcher.SearchConfig(output_dir=out, crop_size=crop, batch_size=2, num_layers=12,
                                num_blocks=5, filter_multiplier=8, epochs=1, steps_per_epoch=1,
                                arch_start_epoch=0, strategy="one_device", val_steps=0,
                                recompute_levels=tuple(recompute_levels), mixed_precision=mixed_precision,
                                recompute_cheap_ops=recompute_cheap_ops)
    return searcher.Searcher(cfg, log=lambda *a, **k: None)


def bench_search(crop: int, repeats: int, recompute_levels=(), mixed_precision: str = "none",
                 recompute_cheap_ops: str = "auto") -> list[dict]:
    """Start-up, weight and arch step of one search in this process (its peak RSS is this precision's)."""
    import tensorflow as tf  # noqa: PLC0415

    from bench import common  # noqa: PLC0415
    from nas_deeplab.training import memory  # noqa: PLC0415
    with tempfile.TemporaryDirectory() as out:
        t0 = time.monotonic()
        s = _searcher(out, crop, recompute_levels, mixed_precision, recompute_cheap_ops)
        cheap = s.net.config.recomputes_cheap_ops
        build_s = time.monotonic() - t0
        it_a = s._dataset("trainA", 0)  # noqa: SLF001 - the benchmark drives the compiled steps directly
        it_b = s._dataset("trainB", 0)  # noqa: SLF001
        t0 = time.monotonic()
        s.compile_steps(it_a.element_spec)   # trace both steps, release their Python graphs (as run() does)
        compile_s = time.monotonic() - t0
        t0 = time.monotonic()
        s.weight_step(next(it_a))["loss"].numpy()
        first_w = time.monotonic() - t0
        memory.release_free_heap()   # as Searcher._run_step does after each step's first run
        t0 = time.monotonic()
        s.arch_step(next(it_b))["loss"].numpy()
        first_a = time.monotonic() - t0
        memory.release_free_heap()
        startup_rss = common.peak_rss_mib()
        w_times = common.time_calls(lambda: s.weight_step(next(it_a))["loss"].numpy(), 0, repeats)
        a_times = common.time_calls(lambda: s.arch_step(next(it_b))["loss"].numpy(), 0, repeats)
        step_rss = common.peak_rss_mib()
        # The profiler cannot see inside the non-inlined node functions: count on an inlined trace
        # (after the timings, so its memory is not in their peak RSS).
        fwd = _forward_flops(lambda x: s.net(x, inline_nodes=True),
                             tf.TensorSpec([2, crop, crop, 3], tf.float32))
        params = int(s.net.parameter_count("weights"))
    base = {"crop": crop, "batch": 2, "L": 12, "B": 5, "F": 8, "supernet_weights": params,
            "recompute_levels": list(recompute_levels), "precision": _precision_name(mixed_precision),
            "recompute_cheap_ops": cheap,
            # glibc malloc arena cap in force (0: glibc's default), and the heap trims after first runs
            "malloc_arenas": int(os.environ.get(memory.ARENAS_ENV) or 0), "heap_trimmed": True,
            # the steps run compiled, their Python graphs released (training/compiled_step.py)
            "graphs_released": True}
    notes = ([f"recompute levels {','.join(map(str, recompute_levels))}"] if recompute_levels else []) + \
        ([_precision_name(mixed_precision)] if mixed_precision != "none" else []) + \
        ([f"cheap ops {'recomputed' if cheap else 'kept'}"] if recompute_cheap_ops != "auto" or cheap else [])
    if notes:
        base["note"] = ", ".join(notes)
    return [
        common.record("search_startup", [build_s + compile_s + first_w], None, build_s=round(build_s, 2),
                      trace_both_steps_s=round(compile_s, 2), first_weight_step_s=round(first_w, 2),
                      first_arch_step_s=round(first_a, 2), rss=startup_rss,
                      **base),
        common.record("search_weight_step", w_times, fwd and 3 * fwd, rss=step_rss, **base),
        common.record("search_arch_step", a_times, fwd and 2 * fwd, rss=step_rss, **base),
    ]


def _precision_name(mixed_precision: str) -> str:
    from nas_deeplab.training import precision  # noqa: PLC0415
    return precision.COMPUTE_DTYPE[mixed_precision]


def bench_search_precision(crop: int, repeats: int, precisions) -> list[dict]:
    """The search's weight and arch steps in each precision, built in ONE process and timed in
    alternating rounds (the speed ratio; memory is the search section's, one process per precision)."""
    from bench import common  # noqa: PLC0415
    calls, outs = {}, []
    for mp in precisions:
        out = tempfile.mkdtemp(prefix="bench_search_precision_")
        outs.append(out)
        s = _searcher(out, crop, (), mp)
        it_a, it_b = s._dataset("trainA", 0), s._dataset("trainB", 0)  # noqa: SLF001
        s.compile_steps(it_a.element_spec)   # as a search runs them
        calls[f"{mp}/weight"] = (lambda s, it: lambda: s.weight_step(next(it))["loss"].numpy())(s, it_a)
        calls[f"{mp}/arch"] = (lambda s, it: lambda: s.arch_step(next(it))["loss"].numpy())(s, it_b)
    times = common.time_interleaved(calls, 1, repeats)
    records = []
    for kind in ("weight", "arch"):
        base = statistics.median(times[f"{precisions[0]}/{kind}"])
        for mp in precisions:
            t = times[f"{mp}/{kind}"]
            records.append(common.record(
                f"search_{kind}_step_precision", t, None, crop=crop, batch=2, L=12, B=5, F=8,
                precision=_precision_name(mp), speedup_vs_first=round(base / statistics.median(t), 3),
                note=f"{_precision_name(mp)}, one process, alternating rounds; x{base / statistics.median(t):.2f} "
                     f"vs {_precision_name(precisions[0])}"))
    return records


def bench_train(crop: int, repeats: int, precisions=("none",)) -> list[dict]:
    """Auto-DeepLab-S training step (SGD, regular heads) in each precision, built in one process and
    timed in alternating rounds."""
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from bench import common  # noqa: PLC0415
    from nas_deeplab import architecture  # noqa: PLC0415
    from nas_deeplab.model import deeplab  # noqa: PLC0415
    from nas_deeplab.training import losses, precision  # noqa: PLC0415
    opts = deeplab.ModelOptions(num_classes=19, aspp_with_separable_conv=False,
                                decoder_use_separable_conv=False)
    images = tf.random.uniform([2, crop, crop, 3], 0, 255)
    labels = tf.random.uniform([2, crop, crop, 1], 0, 19, dtype=tf.int32)
    calls, fwd = {}, None

    def make_step(model, opt):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = losses.valid_pixel_mean_loss(logits, labels, 255) + tf.add_n(model.losses)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        return lambda: step().numpy()

    for mp in precisions:
        with precision.policy(mp):
            model = deeplab.build_deeplab(architecture.preset("auto_deeplab_s"), opts)
        opt = keras.optimizers.SGD(0.01, momentum=0.9)
        opt.build(model.trainable_variables)
        if fwd is None:
            fwd = _forward_flops(lambda x: model(x, training=False),
                                 tf.TensorSpec([2, crop, crop, 3], tf.float32))
        calls[mp] = make_step(model, opt)
    times = common.time_interleaved(calls, 1, repeats)
    base = statistics.median(times[precisions[0]])
    return [common.record("train_step", times[mp], fwd and 3 * fwd, crop=crop, batch=2,
                          model="auto_deeplab_s regular heads, 19 classes", precision=_precision_name(mp),
                          speedup_vs_first=round(base / statistics.median(times[mp]), 3),
                          note=f"{_precision_name(mp)}, x{base / statistics.median(times[mp]):.2f} vs "
                               f"{_precision_name(precisions[0])} (same rounds)")
            for mp in precisions]


def bench_inference(repeats: int) -> list[dict]:
    """The exported SavedModel (both signatures), the official-style TF1 graph of the same network and
    the conv-peak yardstick, timed in alternating rounds per image size: this machine's speed drifts
    within minutes, so the figures being compared share every round."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from bench import common  # noqa: PLC0415
    from nas_deeplab import architecture  # noqa: PLC0415
    from nas_deeplab.export import saved_model  # noqa: PLC0415
    from nas_deeplab.model import deeplab  # noqa: PLC0415
    from nas_deeplab.export import exporter  # noqa: PLC0415
    opts = deeplab.ModelOptions(num_classes=19, aspp_with_separable_conv=False,
                                decoder_use_separable_conv=False)
    arch = architecture.preset("auto_deeplab_s")
    model = deeplab.build_deeplab(arch, opts)
    _give_bn_statistics(model)
    saved = "auto_deeplab_s regular heads SavedModel"
    structure = {"aspp_with_separable_conv": False, "decoder_use_separable_conv": False}
    records = []
    with tempfile.TemporaryDirectory() as out:
        path = saved_model.export_saved_model(model, os.path.join(out, "m"), num_classes=19)
        signatures = tf.saved_model.load(path).signatures
        keys = (saved_model.LABELS_SIGNATURE_KEY, saved_model.SIGNATURE_KEY)
        sixteen = {}   # precision -> predict_labels of the 16-bit SavedModel (BN folded)
        for prec in FLAGS.serving_precisions:
            if prec == "float32":
                continue
            served, folded = exporter.serving_model(model, arch, 19, structure, prec, fold=True)
            p16 = saved_model.export_saved_model(served, os.path.join(out, prec), num_classes=19,
                                                 precision=prec, batch_norm_folded=folded)
            sixteen[prec] = tf.saved_model.load(p16).signatures[saved_model.LABELS_SIGNATURE_KEY]
        cases = []
        for (h, w), batch in (((1025, 2049), 1), ((513, 513), 1), ((513, 513), 4)):
            img = np.random.RandomState(0).randint(0, 256, (batch, h, w, 3)).astype(np.uint8)
            # Labels only (what the TF1 baseline fetches), then labels + probabilities (softmax over
            # every pixel and a float [N, H, W, 19] output on top).
            calls = {key: _signature_call(signatures[key], tf.constant(img)) for key in keys}
            for prec, sig in sixteen.items():
                calls[f"{prec}/{saved_model.LABELS_SIGNATURE_KEY}"] = _signature_call(sig, tf.constant(img))
            for call in calls.values():
                call()
            cases.append(((h, w), batch, img, calls))
        rss = common.peak_rss_mib()  # the SavedModel's own peak, before any TF1 graph exists here
        for (h, w), batch, img, calls in cases:
            fwd = _forward_flops(lambda x: model(x, training=False), tf.TensorSpec([batch, h, w, 3], tf.float32))
            size = f"{h}x{w}"
            if batch == 1:
                calls["tf1_graph"] = _tf1_graph_call(img)
            if size == "1025x2049":
                calls["conv_peak"] = _conv_peak_call()
            times = common.time_interleaved(calls, 1, repeats)
            for key in keys:
                note = "SemanticPredictions" + (" only" if key == saved_model.LABELS_SIGNATURE_KEY
                                                else " + SemanticProbabilities")
                rec = common.record("inference", times[key], fwd, rss=rss, size=size, batch=batch,
                                    model=saved, signature=key, note=note)
                rec["images_per_s"] = round(batch / rec["median_s"], 2)
                records.append(rec)
            base = statistics.median(times[saved_model.LABELS_SIGNATURE_KEY])
            tf1 = statistics.median(times["tf1_graph"]) if "tf1_graph" in times else None
            for prec in sixteen:
                t = times[f"{prec}/{saved_model.LABELS_SIGNATURE_KEY}"]
                med = statistics.median(t)
                rec = common.record("inference", t, fwd, size=size, batch=batch, model=saved + ", BN folded",
                                    signature=saved_model.LABELS_SIGNATURE_KEY, precision=prec,
                                    speedup_vs_float32=round(base / med, 3),
                                    speedup_vs_tf1_graph=round(tf1 / med, 3) if tf1 else None,
                                    note=f"{prec}, BN folded; x{base / med:.2f} vs float32"
                                         + (f", x{tf1 / med:.2f} vs TF1 graph" if tf1 else ""))
                rec["images_per_s"] = round(batch / med, 2)
                records.append(rec)
            if "tf1_graph" in times:
                records.append(common.record(
                    "inference_tf1_graph", times["tf1_graph"], None, size=size, batch=1,
                    model="auto_deeplab_s regular heads, official-style TF1 graph, argmax only"))
            if "conv_peak" in times:
                records.append(common.record("conv_peak", times["conv_peak"], _CONV_PEAK_FLOPS,
                                             size="257x513x256->256 3x3"))
    return records


def _give_bn_statistics(model):
    """Moving statistics as a trained model has them (mean ~N(0, 0.5), variance ~U(0.5, 2)): fresh ones
    (0 / 1) would make BN folding a no-op and the timings of untrained graphs."""
    import numpy as np  # noqa: PLC0415

    from nas_deeplab.training import precise_bn  # noqa: PLC0415
    rng = np.random.default_rng(0)
    for layer in precise_bn.batch_norm_layers(model):
        c = int(layer.moving_mean.shape[0])
        layer.moving_mean.assign(rng.normal(0, 0.5, c).astype(np.float32))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype(np.float32))


def _signature_call(signature, images):
    """A call of a loaded signature that returns once every output it declares is computed."""
    return lambda: [t.numpy() for t in signature(ImageTensor=images).values()]


# One large dense 3x3 convolution (the decoder's shape at 1025x2049): what this machine's conv kernels
# reach, the yardstick for the inference GFLOP/s.
_CONV_PEAK_FLOPS = 2.0 * 257 * 513 * 9 * 256 * 256


def _conv_peak_call():
    import tensorflow as tf  # noqa: PLC0415
    x = tf.random.normal([1, 257, 513, 256])
    k = tf.random.normal([3, 3, 256, 256])
    conv = tf.function(lambda t: tf.nn.conv2d(t, k, 1, "SAME"))
    return lambda: conv(x).numpy()


def _tf1_graph_call(image):
    """The same network as an official-style TF1 graph (tests/export/tf1_reference.py, written from
    the spec and checked against our model there), in its own session: the issue's "official graph"
    baseline on THIS machine. Fetches the argmax only; variables are zeros (speed does not depend on
    their values)."""
    import importlib.util  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from nas_deeplab import architecture  # noqa: PLC0415
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "export",
                        "tf1_reference.py")
    spec = importlib.util.spec_from_file_location("tf1_reference", path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    _, h, w, _ = image.shape
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [1, h, w, 3])
        pred = tf.argmax(ref.deeplab_logits(x, architecture.preset("auto_deeplab_s"), 19,
                                            separable_heads=False)["logits"], -1)
        init = tf.compat.v1.global_variables_initializer()
    sess = tf.compat.v1.Session(graph=graph)
    sess.run(init)
    feed = {x: image.astype(np.float32)}
    return lambda: sess.run(pred, feed)


def bench_input(repeats: int) -> list[dict]:
    from bench import common  # noqa: PLC0415
    from nas_deeplab.data import pipeline, synthetic  # noqa: PLC0415
    desc, ddir = synthetic.resolve_dataset("synthetic", None)
    ds = pipeline.make_dataset(ddir, desc.default_train_split, desc, batch_size=8, is_training=True,
                               crop_size=(129, 129), repeat=True)
    it = iter(ds)
    n_batches = 20

    def run():
        for _ in range(n_batches):
            next(it)["image"].numpy()

    times = common.time_calls(run, 1, repeats)
    rec = common.record("input_pipeline", times, None, crop=129, batch=8,
                        note="synthetic TFRecords, decode+scale+crop+flip")
    rec["examples_per_s"] = round(n_batches * 8 / rec["median_s"], 1)
    return [rec]


def bench_tflite(size: int, repeats: int, num_representative: int) -> list[dict]:
    """File size, conversion time and interpreter latency of the TFLite export of Auto-DeepLab-S
    (F=20, regular heads, 19 classes) at size x size, float32 / float16 / int8, and the same labels
    graph run by TensorFlow, all timed in alternating rounds. Weights are the fresh initialisation and
    the int8 calibration images uniform noise: latency does not depend on the values (accuracy is
    measured on a trained model, not here). The interpreter runs with one thread per core."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from bench import common  # noqa: PLC0415
    from nas_deeplab import architecture  # noqa: PLC0415
    from nas_deeplab.export import saved_model, tflite  # noqa: PLC0415
    from nas_deeplab.model import deeplab  # noqa: PLC0415
    opts = deeplab.ModelOptions(num_classes=19, aspp_with_separable_conv=False,
                                decoder_use_separable_conv=False)
    model = deeplab.build_deeplab(architecture.preset("auto_deeplab_s"), opts)
    crop = (size, size)
    rs = np.random.RandomState(0)
    representative = rs.randint(0, 256, (num_representative, size, size, 3)).astype(np.uint8)
    image = rs.randint(0, 256, (1, size, size, 3)).astype(np.uint8)
    calls, info = {}, {}
    with tempfile.TemporaryDirectory() as out:
        for quantization in tflite.QUANTIZATIONS:
            result = tflite.export_tflite(
                model, os.path.join(out, f"{quantization}.tflite"), crop, quantization,
                representative_images=representative if quantization == "int8" else None)
            segmenter = tflite.TFLiteSegmenter(result.path, num_threads=os.cpu_count())
            calls[quantization] = (lambda seg: lambda: seg(image))(segmenter)
            info[quantization] = result
        labels_fn, server = tflite.labels_function(model, crop)
        calls["tf_graph"] = lambda: labels_fn(tf.constant(image))[saved_model.PREDICTIONS].numpy()
        times = common.time_interleaved(calls, 1, repeats)
        del server
    cpu = common.machine()["cpu"]
    base = {"size": f"{size}x{size}", "batch": 1, "cpu": cpu, "threads_tflite": os.cpu_count(),
            "model": "auto_deeplab_s regular heads, 19 classes"}
    records = []
    for quantization, result in info.items():
        rec = common.record("tflite", times[quantization], None, quantization=quantization,
                            file_mib=round(result.size_bytes / 2 ** 20, 2), conversion_s=result.conversion_s,
                            note=f"{quantization} {result.size_bytes / 2 ** 20:.1f} MiB", **base)
        if quantization == "int8":
            rec["representative_images"] = num_representative
        records.append(rec)
    records.append(common.record("tflite_tf_graph", times["tf_graph"], None,
                                 note="same labels graph run by TensorFlow, same rounds", **base))
    return records


def _child(section: str, arg: str, repeats: int) -> list[dict]:
    if section == "search":
        arg, _, mp = arg.partition("#")        # "321", "321@0,1", "321#mixed_bfloat16"
        crop, _, levels = arg.partition("@")
        return bench_search(int(crop), repeats, [int(v) for v in levels.split(",") if v], mp or "none",
                            FLAGS.search_cheap_ops)
    if section == "search_precision":
        return bench_search_precision(int(arg), repeats, FLAGS.precisions)
    if section == "train":
        return bench_train(int(arg), repeats, FLAGS.precisions)
    if section == "inference":
        return bench_inference(repeats)
    if section == "tflite":
        return bench_tflite(int(arg), repeats, FLAGS.tflite_representative)
    return bench_input(repeats)


def main(argv):
    del argv
    import json  # noqa: PLC0415
    if FLAGS.child:
        # What the CLIs do: search.py prefers op-parallel pools on CPU, train/eval/export the defaults;
        # search.py also caps glibc's malloc arenas at the core count (applied when nas_deeplab loads).
        if FLAGS.only[0].startswith("search"):
            os.environ.setdefault("NAS_DEEPLAB_MALLOC_ARENAS", str(os.cpu_count() or 1))
        from nas_deeplab.training import threads  # noqa: PLC0415
        prefer = "op_parallel" if FLAGS.only[0].startswith("search") else "default"
        described = threads.configure(FLAGS.threads, prefer=prefer)
        records = _child(FLAGS.only[0], FLAGS.child_crop, FLAGS.repeats)
        for rec in records:
            rec["threads"] = described
        print("BENCH_JSON " + json.dumps(records), flush=True)
        return
    bad = [s for s in FLAGS.only if s not in SECTIONS]
    if bad:
        raise app.UsageError(f"--only: unknown sections {bad}; choose from {list(SECTIONS)}")
    from bench import common  # noqa: PLC0415
    previous = []  # read before any benchmark runs: a bad file stops us before the work, not after
    if FLAGS.merge and os.path.exists(FLAGS.json):
        try:
            with open(FLAGS.json, encoding="utf-8") as f:
                previous = list(json.load(f)["records"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise app.UsageError(f"--merge: cannot read the records of --json={FLAGS.json}: {e}") from None
    jobs = []
    for section in FLAGS.only:
        if section == "search":
            jobs += [(section, c) for c in FLAGS.crops]
            jobs += [(section, f"{c}@0,1") for c in FLAGS.recompute_crops]
            # 16-bit searches at the large crops, each in its own process (peak memory per precision).
            jobs += [(section, f"{c}{levels}#{mp}") for mp in FLAGS.precisions if mp != "none"
                     for c in FLAGS.precision_crops for levels in ("", "@0,1")]
        elif section == "search_precision":
            jobs += [(section, c) for c in FLAGS.precision_crops]
        elif section == "train":
            jobs += [(section, c) for c in FLAGS.train_crops]
        elif section == "tflite":
            jobs.append((section, str(FLAGS.tflite_size)))
        else:
            jobs.append((section, ""))
    records = []
    for section, arg in jobs:
        # One process per measurement: peak RSS is per process, and one size never warms another.
        cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--only={section}",
               f"--child_crop={arg}", f"--repeats={FLAGS.repeats}", f"--threads={FLAGS.threads}",
               f"--precisions={','.join(FLAGS.precisions)}",
               f"--serving_precisions={','.join(FLAGS.serving_precisions)}",
               f"--tflite_representative={FLAGS.tflite_representative}",
               f"--search_cheap_ops={FLAGS.search_cheap_ops}"]
        print(f"running {section} {arg}".rstrip(), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
        if proc.returncode or not lines:
            tail = (proc.stderr or proc.stdout)[-2000:]
            print(f"  {section} {arg} failed (exit {proc.returncode}):\n{tail}", flush=True)
            records.append({"name": section, "crop": arg, "error": tail[-300:]})
            continue
        records += [dict(r, section=section) for r in json.loads(lines[-1][len("BENCH_JSON "):])]
    meta = common.machine()
    described = f"{meta['cpu']}, {meta['cores']} cores, GPU: {meta['gpu']}, TF {meta['tf']}"
    today = datetime.date.today().isoformat()
    for rec in records:  # every figure names its machine, day and precision, also when copied elsewhere
        rec["machine"] = described
        rec["date"] = today
        rec.setdefault("precision", "float32")
    print(f"machine: {described}")
    common.print_table(records)
    if FLAGS.merge:
        records = merged_records(previous, records, FLAGS.only)
    common.write_json(FLAGS.json, records, meta)
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    app.run(main)
