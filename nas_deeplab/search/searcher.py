"""The first-order bi-level search loop (paper Sec. 4.2) under tf.distribute.

Each step: a weight step on a trainA batch (gradients for the network weights only), then, from
`arch_start_epoch` on, an architecture step on a trainB batch (gradients for alpha/beta only).

Optimisers (paper Sec. 5.1; conventions stated because the paper does not give them):
* weights: SGD momentum 0.9, cosine LR 0.025 -> 0.001 over the whole search (Keras CosineDecay,
  alpha = 0.001 / 0.025 = 0.04), weight decay 3e-4 as COUPLED L2 (g += wd * w before the momentum,
  DARTS / PyTorch style; Keras' `weight_decay=` would be decoupled). Keras SGD folds the LR into the
  velocity (v = m v - lr g), which differs from PyTorch only while the LR changes.
* alpha/beta: Adam lr 3e-3, betas (0.5, 0.999) (the DARTS `architect.py` convention), weight decay 1e-3
  coupled (g += wd * a).
Loss: softmax cross-entropy averaged over the valid pixels of the global batch.

Input (paper Sec. 5.1: "321x321 random crops from half-resolution (512x1024) images"): the records are
used at their stored resolution (build half-resolution Cityscapes with `build_cityscapes_data.py
--resize_factor=0.5`), then DeepLab's training preprocessing: random scale, pad, random crop, flip.
The paper states no random scaling for the search, so the default is none (min = max scale 1.0): a scale
s would show the search 0.5*s-resolution images instead of the stated half resolution. DeepLab's
train.py range (0.5 to 2.0, step 0.25, the retraining protocol) is one flag away; the left-right flip
is always on (DeepLab's pipeline; the paper does not say). The per-epoch val crops never scale.

Resume: checkpoints hold the weights, alpha, beta, both optimisers and the global step. The data order
and augmentation of every epoch are a pure function of (seed, epoch) (a fresh pipeline per epoch,
`skip` to the step within the epoch), and the trainA/trainB halves depend on `split_seed` only, so a
resumed `--deterministic` run ends with the same alpha/beta as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import os
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from nas_deeplab import architecture, io_utils
from nas_deeplab.search import decidedness, decode, supernet, visualize
from nas_deeplab.training import (compiled_step, distribute, guarded_update, loss_scale, losses, memory,
                                  precision, progress)


class SearchError(RuntimeError):
    """The search cannot go on (non-finite values, inconsistent resume, ...); the message says why."""


@dataclasses.dataclass
class SearchConfig:
    output_dir: str
    dataset: str = "synthetic"
    dataset_dir: Optional[str] = None
    epochs: int = 40
    steps_per_epoch: int = 0          # 0: one pass over trainA; else a cap
    arch_start_epoch: int = 20
    crop_size: int = 321
    batch_size: int = 2               # global batch
    filter_multiplier: int = 8
    num_layers: int = 12
    num_blocks: int = 5
    num_levels: int = 4               # strides 4 .. 4 * 2**(num_levels - 1) (4: up to 32, the paper)
    seed: int = 0
    split_seed: int = 0               # trainA/trainB halves (fixed for the whole search)
    deterministic: bool = False
    strategy: str = "mirrored"
    num_cpu_replicas: int = 0
    weight_lr: float = 0.025
    weight_lr_min: float = 0.001
    weight_momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 3e-3
    arch_beta_1: float = 0.5
    arch_beta_2: float = 0.999
    arch_weight_decay: float = 1e-3
    # Random scale of the trainA/trainB crops (DeepLab's get_random_scale; see the module docstring
    # for why none by default).
    min_scale_factor: float = 1.0
    max_scale_factor: float = 1.0
    scale_factor_step_size: float = 0.25  # 0: uniform in [min, max]
    val_steps: int = 4                # batches of fixed val crops for the per-epoch val mIoU (0: off)
    recompute: bool = False           # recompute nodes in the backward pass (less memory, more time)
    recompute_levels: tuple = ()      # ... or only the nodes of these levels (0: stride 4, the largest)
    supernet: str = "fused"           # or "reference": search/reference.py, edge by edge (slow)
    mixed_precision: str = "none"     # mixed_bfloat16 / mixed_float16: the supernet computes in 16 bits
    recompute_cheap_ops: str = "auto"  # on / off / auto (on for 16-bit): see SupernetConfig
    log_every: int = 10
    checkpoint_every: int = 0         # steps; 0: at the end of every epoch only
    stop_after_step: Optional[int] = None  # stop (checkpointed) after this global step: simulates an interruption

    def validate(self):
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)
        need(self.output_dir, "--output_dir must not be empty")
        need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0, got {self.steps_per_epoch}")
        need(0 <= self.arch_start_epoch, f"--arch_start_epoch must be >= 0, got {self.arch_start_epoch}")
        need(self.crop_size >= 33, f"--crop_size must be >= 33 (stride 32 plus one), got {self.crop_size}")
        need(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")
        need(self.filter_multiplier >= 1, f"--filter_multiplier must be >= 1, got {self.filter_multiplier}")
        need(self.num_layers >= 1, f"--num_layers must be >= 1, got {self.num_layers}")
        need(self.num_blocks >= 1, f"--num_blocks must be >= 1, got {self.num_blocks}")
        need(1 <= self.num_levels <= 4, f"--num_levels must be 1..4 (strides 4..32), got {self.num_levels}")
        bad = [v for v in self.recompute_levels if not 0 <= int(v) < self.num_levels]
        need(not bad, f"--recompute_levels: {bad} not in 0..{self.num_levels - 1} (the trellis levels)")
        need(self.supernet in ("fused", "reference"),
             f"--supernet={self.supernet!r}: choose one of ['fused', 'reference']")
        need(self.supernet == "fused" or not (self.recompute or self.recompute_levels),
             "--recompute and --recompute_levels apply to --supernet=fused only")
        need(self.weight_lr > 0 and self.arch_lr > 0, "learning rates must be positive")
        need(0 <= self.weight_lr_min <= self.weight_lr,
             f"--weight_lr_min must be in [0, --weight_lr], got {self.weight_lr_min}")
        need(self.min_scale_factor > 0, f"--min_scale_factor must be > 0, got {self.min_scale_factor}")
        need(self.max_scale_factor >= self.min_scale_factor,
             f"--max_scale_factor={self.max_scale_factor} must be >= "
             f"--min_scale_factor={self.min_scale_factor}")
        need(self.scale_factor_step_size >= 0,
             f"--scale_factor_step_size must be >= 0 (0: uniform), got {self.scale_factor_step_size}")
        need(self.recompute_cheap_ops in RECOMPUTE_CHEAP_OPS,
             f"--recompute_cheap_ops={self.recompute_cheap_ops!r}: choose one of {list(RECOMPUTE_CHEAP_OPS)}")
        need(self.recompute_cheap_ops != "on" or self.supernet == "fused",
             "--recompute_cheap_ops=on applies to --supernet=fused only (the reference supernet keeps "
             "every tensor)")
        need(self.mixed_precision in MIXED_PRECISION,
             f"--mixed_precision={self.mixed_precision!r}: choose one of {list(MIXED_PRECISION)}")
        need(self.mixed_precision == "none" or self.supernet == "fused",
             "--mixed_precision applies to --supernet=fused only (the reference supernet is float32)")
        need(self.strategy in distribute.STRATEGIES,
             f"--strategy={self.strategy!r}: choose one of {list(distribute.STRATEGIES)}")
        if (self.crop_size - 1) % 32:
            print(f"note: --crop_size={self.crop_size} is not 32k+1; inter-level resizes will not be exact "
                  "2x (DeepLab uses 32k+1 crops such as 65, 129, 321)", flush=True)


# --recompute_cheap_ops -> SupernetConfig.recompute_cheap_ops (None: on for 16-bit compute).
RECOMPUTE_CHEAP_OPS = {"auto": None, "on": True, "off": False}
# --mixed_precision -> the supernet's compute dtype. Everything else stays float32: the master weights,
# alpha/beta and their softmaxes, the logits and the loss, the BN statistics and both optimizers; so a
# checkpoint is the same in every precision and a search may resume in another one.
MIXED_PRECISION = precision.COMPUTE_DTYPE
# A float16 search skips overflowing steps (dynamic loss scaling); this many in a row stop it.
MAX_CONSECUTIVE_OVERFLOWS = 50

# Below these a search returns (close to) its prior: warned about at the start (issue: "say how decided").
MIN_STEPS_PER_EPOCH = 5
MIN_ARCH_STEPS = 100

# The steps as the log names them.
_STEP_NAMES = {"weight": "weight", "arch": "architecture", "eval": "validation"}

# Settings that must not change when a search resumes (not the precision, see MIXED_PRECISION, nor
# --recompute_cheap_ops: neither changes what is computed, only how).
_RESUME_KEYS = ("epochs", "steps_per_epoch", "crop_size", "batch_size", "filter_multiplier", "num_layers",
                "num_blocks", "num_levels", "seed", "split_seed", "dataset", "arch_start_epoch",
                "min_scale_factor", "max_scale_factor", "scale_factor_step_size", "supernet")


@dataclasses.dataclass
class SearchResult:
    architecture: architecture.Architecture
    architecture_path: str
    output_dir: str
    step: int
    finished: bool
    timings: dict
    summary: Optional[dict] = None     # decidedness.summarize: how decided the result is


def _npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a))
    return buf.getvalue()


def _miou(conf):
    conf = np.asarray(conf, np.float64)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    valid = union > 0
    return float((inter[valid] / union[valid]).mean()) if valid.any() else float("nan")


class Searcher:
    def __init__(self, config: SearchConfig, strategy=None, log=print):
        config.validate()
        self.cfg = cfg = config
        self.log = log
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        # The strategy first: multi-worker collectives must be configured before the runtime starts.
        self.strategy = strategy or distribute.make_strategy(cfg.strategy, cfg.num_cpu_replicas)
        precision.check_trainable_here(cfg.mixed_precision)
        from nas_deeplab.data import pipeline, synthetic
        self._pipeline = pipeline
        self.desc, self.dataset_dir = synthetic.resolve_dataset(cfg.dataset, cfg.dataset_dir)
        self.num_replicas = self.strategy.num_replicas_in_sync
        if cfg.batch_size % self.num_replicas:
            raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of the number of replicas "
                             f"({self.num_replicas})")
        train_split = self.desc.default_train_split
        n_train = int(self.desc.splits_to_sizes.get(train_split, 0))
        full = max(1, (n_train // 2) // cfg.batch_size)
        self.steps_per_epoch = min(full, cfg.steps_per_epoch) if cfg.steps_per_epoch else full
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.chief = distribute.is_chief(self.strategy)
        io_utils.check_writable_dir(cfg.output_dir, "--output_dir")  # creates it, or names why not
        self.timings = {}
        self._last_path, self._path_changes = None, 0   # the decoded path in TensorBoard (this process)

        t0 = time.monotonic()
        with self.strategy.scope():
            net_config = supernet.SupernetConfig(
                num_classes=self.desc.num_classes, num_layers=cfg.num_layers, num_blocks=cfg.num_blocks,
                filter_multiplier=cfg.filter_multiplier, num_levels=cfg.num_levels,
                recompute=cfg.recompute, recompute_levels=tuple(cfg.recompute_levels),
                compute_dtype=MIXED_PRECISION[cfg.mixed_precision],
                recompute_cheap_ops=RECOMPUTE_CHEAP_OPS[cfg.recompute_cheap_ops])
            if cfg.supernet == "reference":  # the same function edge by edge (search/reference.py)
                from nas_deeplab.search import reference
                self.net = reference.ReferenceSupernet(net_config, seed=cfg.seed)
            else:
                self.net = supernet.Supernet(net_config, seed=cfg.seed)
            import keras
            schedule = keras.optimizers.schedules.CosineDecay(
                cfg.weight_lr, decay_steps=max(1, self.total_steps), alpha=cfg.weight_lr_min / cfg.weight_lr)
            self.schedule = schedule
            self.weight_opt = keras.optimizers.SGD(schedule, momentum=cfg.weight_momentum)
            self.arch_opt = keras.optimizers.Adam(cfg.arch_lr, beta_1=cfg.arch_beta_1, beta_2=cfg.arch_beta_2)
            # Build the slots inside the scope before the first traced step (MirroredStrategy).
            self.weight_opt.build(self.net.weight_variables)
            self.arch_opt.build(self.net.arch_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.loss_scales = None
            if cfg.mixed_precision == "mixed_float16":  # one per step: weights and alpha/beta differ
                self.loss_scales = {"weights": loss_scale.DynamicLossScale(name="weight_loss_scale"),
                                    "alpha/beta": loss_scale.DynamicLossScale(name="arch_loss_scale")}
        self._overflows = 0
        self.timings["build_s"] = time.monotonic() - t0
        self.ckpt = tf.train.Checkpoint(supernet=self.net, weight_optimizer=self.weight_opt,
                                        arch_optimizer=self.arch_opt, step=self.step)
        ckpt_dir = os.path.join(cfg.output_dir, "checkpoints")
        self.restore_dir = ckpt_dir
        if not self.chief:  # other workers save to a private folder (multi-worker convention)
            task = getattr(getattr(self.strategy, "cluster_resolver", None), "task_id", 0)
            ckpt_dir = os.path.join(cfg.output_dir, ".workers", f"worker_{task}", "checkpoints")
        self.manager = tf.train.CheckpointManager(self.ckpt, ckpt_dir, max_to_keep=2)
        self._make_steps()

    # -- data ----------------------------------------------------------------------------------
    def _dataset(self, subset, epoch, skip=0, split=None, seed_offset=0):
        cfg = self.cfg
        kw = dict(min_scale_factor=cfg.min_scale_factor, max_scale_factor=cfg.max_scale_factor,
                  scale_factor_step_size=cfg.scale_factor_step_size)
        if subset is None:  # fixed val crops: no scale augmentation, same crops every epoch
            kw = dict(min_scale_factor=1.0, max_scale_factor=1.0)
        def build(batch_size, num_shards, shard_index):
            ds = self._pipeline.make_dataset(
                self.dataset_dir, split or self.desc.default_train_split, self.desc,
                batch_size=batch_size, is_training=True, crop_size=(cfg.crop_size, cfg.crop_size),
                subset=subset, split_seed=cfg.split_seed,
                seed=(cfg.seed * 1000003 + epoch * 7919 + seed_offset) % (2 ** 31),
                deterministic=cfg.deterministic, repeat=True, num_shards=num_shards,
                shard_index=shard_index, **kw)
            ds = ds.map(lambda b: {"image": b["image"], "label": b["label"]})
            return ds.skip(skip) if skip else ds

        return iter(distribute.distribute_per_worker(self.strategy, build, cfg.batch_size))

    # -- compiled steps ------------------------------------------------------------------------
    def _make_steps(self):
        net, cfg, strategy = self.net, self.cfg, self.strategy
        ignore = self.desc.ignore_label
        ncls = self.desc.num_classes
        nrep = float(self.num_replicas)

        def confusion(logits, labels):
            labels = tf.reshape(labels, [-1])
            pred = tf.reshape(tf.argmax(logits, -1, output_type=tf.int32), [-1])
            valid = tf.not_equal(labels, ignore)
            return tf.math.confusion_matrix(tf.boolean_mask(labels, valid), tf.boolean_mask(pred, valid),
                                            num_classes=ncls, dtype=tf.float32)

        def make(variables, opt, wd, grads_name):
            scaler = self.loss_scales[grads_name] if self.loss_scales else None

            def replica(batch):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(variables)
                    logits = net(batch["image"])
                    loss = losses.valid_pixel_mean_loss(logits, batch["label"], ignore)
                    scaled = scaler.scale_loss(loss) if scaler else loss
                grads = tape.gradient(scaled, variables)
                if scaler:
                    grads = scaler.unscale(grads)
                # Coupled L2; divided by the replica count because the optimiser SUMs replica grads.
                grads = [g + (wd / nrep) * v for g, v in zip(grads, variables)]
                # A non-finite loss or gradient on any replica refuses the step on all of them:
                # nothing applied, optimizer slots and iterations untouched (as in the trainer).
                bad = guarded_update.nonfinite_flags([loss] + grads)
                guarded_update.apply_if(tf.equal(tf.reduce_sum(bad), 0.0), grads, variables, opt)
                return loss, bad, confusion(logits, batch["label"])

            @tf.function
            def step(dist_batch):
                loss, bad, conf = strategy.run(replica, args=(dist_batch,))
                if scaler:
                    scaler.update(tf.equal(tf.reduce_sum(strategy.experimental_local_results(bad)[0]), 0.0))
                r = strategy.reduce
                S = tf.distribute.ReduceOp.SUM
                # bad: per tensor (loss, then each gradient), how many replicas saw a non-finite
                # value; all-reduced, so every replica holds the same vector.
                return {"loss": r(S, loss, axis=None), "bad": strategy.experimental_local_results(bad)[0],
                        "confusion": r(S, conf, axis=None)}
            step.grads_name = grads_name
            step.variable_names = [v.name.split(":")[0] for v in variables]
            return step

        self.weight_step = make(net.weight_variables, self.weight_opt, cfg.weight_decay, "weights")
        self.arch_step = make(net.arch_variables, self.arch_opt, cfg.arch_weight_decay, "alpha/beta")

        def eval_replica(batch):
            return confusion(net(batch["image"]), batch["label"])

        @tf.function
        def eval_step(dist_batch):
            return strategy.reduce(tf.distribute.ReduceOp.SUM,
                                   strategy.run(eval_replica, args=(dist_batch,)), axis=None)
        self.eval_step = eval_step

    def compile_steps(self, example_batch=None):
        """Trace the steps this search will run, keep only their runtime functions and let go of the
        Python graphs tracing left behind (training/compiled_step.py: 0.5 GiB at crop 321),
        before the first step instantiates its graph. `run` calls it; until then the steps are plain
        tf.functions that tests and benchmarks may call directly. example_batch: a distributed trainA
        batch, or its spec where that has static shapes (default: the first batch of a fresh trainA
        pipeline; a multi-worker pipeline's spec leaves the batch size open). The trainB and val
        batches are alike."""
        if isinstance(self.weight_step, compiled_step.CompiledStep):
            return
        t0 = time.monotonic()
        if example_batch is None:
            example_batch = next(self._dataset("trainA", 0))
        steps = [("weight", "weight_step")]
        if self.total_steps > self.arch_start_step:
            steps.append(("arch", "arch_step"))
        if self.cfg.val_steps:
            steps.append(("eval", "eval_step"))
        with compiled_step.custom_gradients_registered() as gradients:
            for key, attr in steps:
                t = time.monotonic()
                fn = getattr(self, attr)
                step = compiled_step.CompiledStep(fn, example_batch, name=f"the {_STEP_NAMES[key]} step")
                for name in ("grads_name", "variable_names"):
                    if hasattr(fn, name):
                        setattr(step, name, getattr(fn, name))
                setattr(self, attr, step)
                self.timings[f"{key}_trace_s"] = time.monotonic() - t
        del fn, example_batch
        traced = memory.resident_mib()
        self.net.forget_node_functions()
        compiled_step.forget_custom_gradients(gradients)
        gc.collect()   # the graphs are in reference cycles
        memory.release_free_heap()
        self.timings["compile_s"] = time.monotonic() - t0
        names = [_STEP_NAMES[k] for k, _ in steps]
        names = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        self.log(f"traced the {names} step{'s' if len(steps) > 1 else ''} in "
                 f"{self.timings['compile_s']:.1f} s ("
                 + ", ".join(f"{_STEP_NAMES[k]} {self.timings[f'{k}_trace_s']:.1f} s" for k, _ in steps)
                 + f"); releasing their Python graphs freed {traced - memory.resident_mib():.0f} MiB")

    def _run_step(self, which, batches, step, timed):
        """The next batch through the weight or architecture step -> (outputs, loss). The first call
        of each (TF instantiates and optimises the graph) is timed and logged: start-up is what users
        wait on; after it the freed heap goes back to the system."""
        fn, key = (self.weight_step, "weight") if which == "weight" else (self.arch_step, "arch")
        first = key not in timed
        batch = next(batches)
        t = time.monotonic()
        out = fn(batch)
        self._check(out, step, which)
        loss = float(out["loss"])
        if first:
            timed.add(key)
            self.timings[f"{key}_first_step_s"] = time.monotonic() - t
            self.log(f"{which} step: first step {self.timings[f'{key}_first_step_s']:.1f} s, "
                     f"peak RSS {memory.peak_rss_mib():.0f} MiB")
            # The step's instantiation (Grappler, executors) left freed heap behind: hand it back
            # before the next step's activations pile on top of it (training/memory.py).
            memory.release_free_heap()
        return out, loss

    def _check(self, out, step, which):
        """Raise SearchError if the step was refused (see `guarded_update`): the search stops at
        the first refused step, like the trainer, naming the step and where it went non-finite."""
        bad = np.asarray(out["bad"])
        if not bad.any():
            self._overflows = 0
            return
        fn = self.weight_step if which == "weight" else self.arch_step
        if self.loss_scales and not bad[0] and self._overflows < MAX_CONSECUTIVE_OVERFLOWS:
            # float16: a finite loss with overflowing scaled gradients is what loss scaling expects
            # now and then; the step was skipped on every replica and the scale halved.
            self._overflows += 1
            scale = float(self.loss_scales[fn.grads_name].scale.numpy())
            self.log(f"step {step}: {which} step skipped (float16 gradient overflow); loss scale now {scale:g}")
            return
        first = int(np.flatnonzero(bad)[0])
        where = (f"non-finite loss at step {step} in the {which} step ({float(out['loss'])})" if first == 0
                 else f"non-finite gradients of the {fn.grads_name} at step {step} ({which} step; first "
                      f"{fn.variable_names[first - 1]})")
        raise SearchError(f"{where}, on {int(bad[first])} of {self.num_replicas} replica(s); 1 step refused "
                          f"(nothing applied on any replica: variables and optimizer state unchanged) and "
                          f"the search stopped; the last good checkpoint is kept in {self.manager.directory}")

    # -- outputs -------------------------------------------------------------------------------
    def current_architecture(self) -> architecture.Architecture:
        return decode.decode(self.net.alpha.numpy(), self.net.beta.numpy(), self.cfg.filter_multiplier,
                             name="searched")

    @property
    def arch_start_step(self) -> int:
        return self.cfg.arch_start_epoch * self.steps_per_epoch

    def search_summary(self, alpha, beta) -> dict:
        """How decided alpha/beta are (search/decidedness.py), against their values at the start of
        the architecture steps (alpha_start.npy / beta_start.npy)."""
        d = self.cfg.output_dir
        starts = [os.path.join(d, f) for f in ("alpha_start.npy", "beta_start.npy")]
        a0, b0 = (np.load(p) for p in starts) if all(map(os.path.exists, starts)) else (None, None)
        arch_steps = max(0, int(self.step.numpy()) - self.arch_start_step)
        return decidedness.summarize(alpha, beta, a0, b0, arch_steps=arch_steps)

    def _record_arch_start(self, step: int):
        """alpha/beta only change in architecture steps, so before the first one their current values
        are the start values the final summary measures movement from (kept across resumes)."""
        d = self.cfg.output_dir
        if not self.chief or step > self.arch_start_step or os.path.exists(os.path.join(d, "beta_start.npy")):
            return
        io_utils.atomic_write_bytes(os.path.join(d, "alpha_start.npy"), _npy_bytes(self.net.alpha.numpy()))
        io_utils.atomic_write_bytes(os.path.join(d, "beta_start.npy"), _npy_bytes(self.net.beta.numpy()))

    def _warn_if_too_short(self):
        """A search that cannot move alpha/beta far returns its prior: say so before it runs."""
        cfg, spe = self.cfg, self.steps_per_epoch
        arch_steps = max(0, self.total_steps - self.arch_start_step)
        if spe < MIN_STEPS_PER_EPOCH:
            self.log(f"warning: an epoch is only {spe} step(s) (trainA of the {self.desc.name} train split "
                     f"at --batch_size={cfg.batch_size}{', capped by --steps_per_epoch' if cfg.steps_per_epoch else ''}"
                     f"): use a larger data set or a smaller batch")
        if arch_steps < MIN_ARCH_STEPS:
            self.log(f"warning: only {arch_steps} architecture steps (--epochs={cfg.epochs}, "
                     f"--arch_start_epoch={cfg.arch_start_epoch}, {spe} steps per epoch); fewer than "
                     f"{MIN_ARCH_STEPS} barely move alpha/beta from their initialisation, so the result "
                     "will be close to the prior (more --epochs, or an earlier --arch_start_epoch)")

    def _arch_scalars(self, writer, step):
        """TensorBoard: alpha/beta entropy and the decoded path over time (a text entry when it changes)."""
        alpha, beta = self.net.alpha.numpy(), self.net.beta.numpy()
        ent_a, ent_b = decidedness.entropies(alpha, beta)
        path = decode.decode_network(beta)
        if path != self._last_path:
            self._path_changes += self._last_path is not None
            self._last_path = path
            with writer.as_default():
                tf.summary.text("arch/path", f"step {step}: {path}", step=step)
        with writer.as_default():
            tf.summary.scalar("arch/alpha_entropy", ent_a, step=step)
            tf.summary.scalar("arch/beta_entropy", ent_b, step=step)
            tf.summary.scalar("arch/path_changes", self._path_changes, step=step)

    def write_outputs(self, writer=None, epoch=None):
        """architecture.json, alpha.npy, beta.npy and the PNGs (all atomic); TensorBoard images."""
        if not self.chief:
            return None
        d = self.cfg.output_dir
        alpha, beta = self.net.alpha.numpy(), self.net.beta.numpy()
        arch = self.current_architecture()
        self.summary = self.search_summary(alpha, beta)
        record = dict(arch.to_dict(), search_summary=self.summary)   # read back by Architecture.load
        io_utils.atomic_write_text(os.path.join(d, "architecture.json"), json.dumps(record, indent=2) + "\n")
        io_utils.atomic_write_bytes(os.path.join(d, "alpha.npy"), _npy_bytes(alpha))
        io_utils.atomic_write_bytes(os.path.join(d, "beta.npy"), _npy_bytes(beta))
        cell = visualize.cell_png(arch)
        path = visualize.network_png(arch.backbone)
        io_utils.atomic_write_bytes(os.path.join(d, "cell.png"), cell)
        io_utils.atomic_write_bytes(os.path.join(d, "network.png"), path)
        if writer is not None:
            step = int(self.step.numpy())
            with writer.as_default():
                for name, png in (("alpha", visualize.alpha_png(alpha)),
                                  ("beta_trellis", visualize.network_png(arch.backbone, beta)),
                                  ("cell", cell)):
                    tf.summary.image(name, tf.image.decode_png(png, channels=4)[None], step=step)
        return arch

    def _save_config(self):
        path = os.path.join(self.cfg.output_dir, "search_config.json")
        cur = dataclasses.asdict(self.cfg)
        cur["steps_per_epoch_effective"] = self.steps_per_epoch
        if os.path.exists(path) and tf.train.latest_checkpoint(self.restore_dir):
            with open(path) as f:
                old = json.load(f)
            diff = [k for k in _RESUME_KEYS if k in old and old[k] != cur[k]]
            if diff:
                raise SearchError(
                    f"{self.cfg.output_dir} holds a search with different settings "
                    + ", ".join(f"--{k}={old[k]} (now {cur[k]})" for k in diff)
                    + "; use another --output_dir or the same settings to resume")
        if self.chief:
            io_utils.atomic_write_text(path, json.dumps(cur, indent=2) + "\n")

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        cfg, log = self.cfg, self.log
        import tensorboard  # noqa: F401  (tf.summary needs it installed)
        self._save_config()
        latest = tf.train.latest_checkpoint(self.restore_dir)
        if latest:
            self.ckpt.restore(latest).assert_existing_objects_matched()
            log(f"resumed from {latest} at step {int(self.step.numpy())}")
        writer = tf.summary.create_file_writer(os.path.join(cfg.output_dir, "tensorboard")) if self.chief \
            else tf.summary.create_noop_writer()
        start = int(self.step.numpy())
        spe = self.steps_per_epoch
        cheap = cfg.supernet == "fused" and self.net.config.recomputes_cheap_ops
        log(f"search: {self.total_steps} steps ({cfg.epochs} epochs x {spe}), alpha/beta from epoch "
            f"{cfg.arch_start_epoch}, crop {cfg.crop_size}, global batch {cfg.batch_size} on "
            f"{self.num_replicas} replica(s), L={cfg.num_layers} B={cfg.num_blocks} F={cfg.filter_multiplier}, "
            f"{self.net.parameter_count():,} supernet weights, computing in "
            f"{MIXED_PRECISION[cfg.mixed_precision]}"
            f"{', cheap ops recomputed' if cheap else ''}; "
            f"build {self.timings['build_s']:.1f} s")
        self._warn_if_too_short()
        self._record_arch_start(start)
        if start < self.total_steps:
            self.compile_steps()
        bar = progress.ProgressLine(self.total_steps, start, every=cfg.log_every)
        timed = set()  # steps whose first run (TF's instantiation of it) has been timed and logged
        step = start
        finished = step >= self.total_steps
        epoch = step // spe
        saved_step = start  # the restored checkpoint (or none at step 0) already holds this step
        while step < self.total_steps:
            epoch = step // spe
            in_epoch = step % spe
            it_a = self._dataset("trainA", epoch, skip=in_epoch)
            do_arch = epoch >= cfg.arch_start_epoch
            it_b = self._dataset("trainB", epoch, skip=in_epoch, seed_offset=1) if do_arch else None
            conf_b = 0.0
            for _ in range(in_epoch, spe):
                _, w_loss = self._run_step("weight", it_a, step + 1, timed)
                scalars = {"loss_w": w_loss}
                if do_arch:
                    out_b, scalars["loss_a"] = self._run_step("architecture", it_b, step + 1, timed)
                    conf_b = conf_b + out_b["confusion"].numpy()
                step += 1
                self.step.assign(step)
                lr = float(self.schedule(self.weight_opt.iterations - 1))
                with writer.as_default():
                    if step % cfg.log_every == 0 or step == self.total_steps:
                        for k, v in scalars.items():
                            tf.summary.scalar(f"loss/{k[5:] if k.startswith('loss_') else k}", v, step=step)
                        tf.summary.scalar("lr/weights", lr, step=step)
                        tf.summary.scalar("lr/arch", cfg.arch_lr, step=step)
                    if self.chief and (step % cfg.log_every == 0 or step == self.total_steps):
                        self._arch_scalars(writer, step)
                bar.update(step, epoch=epoch + 1, lr=lr, **scalars)
                stop_now = cfg.stop_after_step is not None and step >= cfg.stop_after_step
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stop_now:
                    self.manager.save(checkpoint_number=step)
                    saved_step = step
                if stop_now:
                    break
            if cfg.stop_after_step is not None and step >= cfg.stop_after_step and step % spe:
                log(f"stopped after step {step} as asked (checkpoint saved); run again to resume")
                break
            # end of epoch (unless --checkpoint_every just saved this very step)
            if saved_step != step:
                self.manager.save(checkpoint_number=step)
                saved_step = step
            with writer.as_default():
                if do_arch:
                    tf.summary.scalar("miou/trainB", _miou(conf_b), step=step)
                if cfg.val_steps:
                    miou = self.validate()
                    tf.summary.scalar("miou/val", miou, step=step)
                    log(f"epoch {epoch + 1}: val mIoU (fixed crops) {miou:.4f}")
            arch = self.write_outputs(writer, epoch)
            if arch is not None:
                log(f"epoch {epoch + 1}/{cfg.epochs}: backbone {list(arch.backbone)}")
            writer.flush()
            if cfg.stop_after_step is not None and step >= cfg.stop_after_step:
                break
        finished = step >= self.total_steps
        arch = self.write_outputs(writer) if self.chief else self.current_architecture()
        writer.flush()
        self.timings["peak_rss_mib"] = memory.peak_rss_mib()
        self.timings["traces"] = {"weight": self.weight_step.experimental_get_tracing_count(),
                                  "arch": self.arch_step.experimental_get_tracing_count(),
                                  "eval": self.eval_step.experimental_get_tracing_count()}
        log(f"peak resident memory {self.timings['peak_rss_mib']:.0f} MiB")
        summary = getattr(self, "summary", None) or self.search_summary(self.net.alpha.numpy(),
                                                                         self.net.beta.numpy())
        return SearchResult(arch, os.path.join(cfg.output_dir, "architecture.json"), cfg.output_dir, step,
                            finished, dict(self.timings), summary)

    def validate(self) -> float:
        it = self._dataset(None, 0, split=self.desc.default_eval_split, seed_offset=12345)
        conf = 0.0
        for _ in range(self.cfg.val_steps):
            conf = conf + self.eval_step(next(it)).numpy()
        memory.release_free_heap()   # the eval step's instantiation, as after the first training steps
        return _miou(conf)


def run_search(config: SearchConfig, strategy=None, log=print) -> SearchResult:
    return Searcher(config, strategy=strategy, log=log).run()
