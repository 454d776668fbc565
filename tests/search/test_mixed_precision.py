"""16-bit search: the supernet computes in bfloat16 (float16 on GPUs) with float32 master weights,
alpha/beta, logits, losses and optimizers; checkpoints are interchangeable between precisions."""

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from nas_deeplab.search import searcher, supernet, trellis
from nas_deeplab.training import loss_scale
from test_searcher import _config   # the tiny search of the loop tests


def _net(dtype, **kw):
    cfg = dict(num_classes=3, num_layers=3, num_blocks=2, filter_multiplier=2)
    cfg.update(kw)
    return supernet.Supernet(supernet.SupernetConfig(compute_dtype=dtype, **cfg), seed=0)


def _grads(net, images, labels):
    with tf.GradientTape() as tape:
        logits, states = net(images, return_states=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, [net.alpha, net.beta] + net.weight_variables)
    return loss, logits, states, grads


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("crop", [33, 129])   # 129: the large-map forms (33x33 >= LARGE_MAP_SIZE) at stride 4
def test_bfloat16_supernet_runs_in_bfloat16_and_its_gradients_follow_float32(crop):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (2, crop, crop, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 3, (2, crop, crop)).astype(np.int32))
    loss32, logits32, states32, g32 = _grads(_net("float32"), images, labels)
    loss16, logits16, states16, g16 = _grads(_net("bfloat16"), images, labels)
    # Every cell state is bfloat16 (the convs, BNs and mixes ran in 16 bits); logits are float32.
    assert {s.dtype for k, s in states16.items()} == {tf.bfloat16}
    assert {s.dtype for s in states32.values()} == {tf.float32}
    assert logits16.dtype == tf.float32
    # Gradients arrive in the float32 master variables' type and reach alpha and beta.
    assert all(g.dtype == tf.float32 for g in g16)
    alpha16, beta16 = g16[0].numpy(), g16[1].numpy()
    valid = trellis.valid_mask(*beta16.shape[:2])
    assert np.all(np.isfinite(alpha16)) and np.abs(alpha16).min() > 0
    assert np.abs(beta16[valid]).max() > 0
    # Same function up to bfloat16 rounding (8 mantissa bits: ~0.4% per op).
    assert abs(float(loss16) - float(loss32)) < 0.02 * float(loss32)
    assert _cosine(alpha16, g32[0]) > 0.95
    assert _cosine(beta16[valid], g32[1].numpy()[valid]) > 0.95
    assert np.mean([_cosine(a, b) for a, b in zip(g16[2:], g32[2:])]) > 0.9


def _quiet(*a, **k):
    pass


@pytest.mark.parametrize("first,second", [("none", "mixed_bfloat16"), ("mixed_bfloat16", "none")])
def test_a_search_resumes_in_the_other_precision(tmp_path, first, second):
    straight = searcher.Searcher(_config(tmp_path / "f32"), log=_quiet)
    alpha0 = straight.net.alpha.numpy().copy()
    straight.run()
    out = tmp_path / "mixed"
    r1 = searcher.Searcher(_config(out, mixed_precision=first, stop_after_step=2), log=_quiet).run()
    assert r1.step == 2 and not r1.finished
    # The checkpoint holds float32 variables only, whatever the precision that wrote it.
    ckpt = tf.train.latest_checkpoint(str(out / "checkpoints"))
    reader = tf.train.load_checkpoint(ckpt)
    dtypes = {d for k, d in reader.get_variable_to_dtype_map().items() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert dtypes == {tf.float32, tf.int64}, dtypes
    lines = []
    s2 = searcher.Searcher(_config(out, mixed_precision=second), log=lines.append)
    r2 = s2.run()
    assert r2.finished and r2.step == 4
    assert any("resumed from" in line for line in lines)
    assert any(f"computing in {searcher.MIXED_PRECISION[second]}" in line for line in lines)
    # The mixed run moved alpha as the float32 one did, up to bfloat16 rounding in 4 steps (cosine
    # 0.85-0.99 across machines; unrelated moves would be ~0).
    moved_mixed = s2.net.alpha.numpy() - alpha0
    moved_f32 = straight.net.alpha.numpy() - alpha0
    assert np.abs(moved_mixed).mean() > 1e-3
    assert _cosine(moved_mixed, moved_f32) > 0.7


def test_bfloat16_search_on_two_replicas(tmp_path):
    s = searcher.Searcher(_config(tmp_path / "two", strategy="mirrored", mixed_precision="mixed_bfloat16",
                                  epochs=1), log=_quiet)
    assert s.num_replicas == 2
    beta0 = s.net.beta.numpy().copy()
    res = s.run()
    assert res.finished
    valid = trellis.valid_mask(*beta0.shape[:2])
    assert np.all(s.net.beta.numpy()[valid] != beta0[valid])


def test_float16_loss_scaling_skips_overflows_and_applies_finite_steps(tmp_path):
    """The float16 mechanism, exercised on the CPU in bfloat16 (float16 backprop of dilated convs has
    no CPU kernel): a scale that overflows the scaled gradients skips the step on every replica and
    halves; a sane one applies the step."""
    s = searcher.Searcher(_config(tmp_path / "ls", strategy="mirrored", mixed_precision="mixed_bfloat16"),
                          log=_quiet)
    with s.strategy.scope():
        s.loss_scales = {"weights": loss_scale.DynamicLossScale(initial_scale=3e38, name="w"),
                         "alpha/beta": loss_scale.DynamicLossScale(initial_scale=1024.0, name="a")}
    s._make_steps()
    batch = next(s._dataset("trainA", 0))
    before = [v.numpy().copy() for v in s.net.weight_variables]
    iters = int(s.weight_opt.iterations.numpy())
    out = s.weight_step(batch)
    s._check(out, 1, "weight")   # an overflow is not an error under loss scaling
    assert np.asarray(out["bad"])[0] == 0 and np.asarray(out["bad"]).any()
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, s.net.weight_variables))
    assert int(s.weight_opt.iterations.numpy()) == iters
    assert float(s.loss_scales["weights"].scale.numpy()) == pytest.approx(1.5e38)
    s.loss_scales["weights"].scale.assign(1024.0)
    out = s.weight_step(batch)
    assert not np.asarray(out["bad"]).any()
    assert not any(np.array_equal(b, v.numpy()) for b, v in zip(before, s.net.weight_variables))
    assert int(s.loss_scales["weights"].good_steps.numpy()) == 1
    alpha0 = s.net.alpha.numpy().copy()
    out = s.arch_step(next(s._dataset("trainB", 0, seed_offset=1)))
    assert not np.asarray(out["bad"]).any() and np.all(s.net.alpha.numpy() != alpha0)


def test_refusals_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match=r"--mixed_precision=mixed_float16 needs a GPU"):
        searcher.Searcher(_config(tmp_path / "a", mixed_precision="mixed_float16"), log=_quiet)
    with pytest.raises(ValueError, match=r"--mixed_precision applies to --supernet=fused only"):
        _config(tmp_path / "b", mixed_precision="mixed_bfloat16", supernet="reference").validate()
    with pytest.raises(ValueError, match=r"--mixed_precision='bf16'"):
        _config(tmp_path / "c", mixed_precision="bf16").validate()
    with pytest.raises(ValueError, match="compute_dtype"):
        supernet.SupernetConfig(num_classes=2, compute_dtype="int8")


def test_search_cli_refuses_float16_on_cpu_in_one_line(tmp_path, capsys):
    import search
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["search.py", f"--output_dir={tmp_path / 's'}", "--mixed_precision=mixed_float16",
                     "--crop_size=33", "--filter_multiplier=2", "--num_layers=2"])
        rc = search.main(["search.py"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("search.py: error: --mixed_precision=mixed_float16 needs a GPU")

