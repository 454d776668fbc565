"""The bi-level loop: step separation, exact resume, refusal of non-finite steps."""

import os

import numpy as np
import pytest
import tensorflow as tf

from nas_deeplab.search import searcher, trellis
from nas_deeplab.training import compiled_step




def _config(out, **kw):
    cfg = dict(output_dir=str(out), epochs=2, steps_per_epoch=2, arch_start_epoch=0, crop_size=33,
               batch_size=2, filter_multiplier=2, num_layers=2, num_blocks=2, deterministic=True,
               strategy="one_device", val_steps=0, log_every=1)
    cfg.update(kw)
    return searcher.SearchConfig(**cfg)


def _snapshot(s):
    return ([v.numpy().copy() for v in s.net.weight_variables],
            [v.numpy().copy() for v in s.net.arch_variables])


def _changed(before, after):
    return [not np.array_equal(a, b) for a, b in zip(before, after)]


def test_resume_equals_uninterrupted_and_steps_touch_only_their_variables(tmp_path, monkeypatch):
    trims = []
    monkeypatch.setattr(searcher.memory, "release_free_heap", lambda: trims.append(1) or True)
    straight = searcher.Searcher(_config(tmp_path / "straight"), log=lambda *a: None)
    alpha0, beta0 = straight.net.alpha.numpy().copy(), straight.net.beta.numpy().copy()
    res = straight.run()
    assert res.finished and res.step == 4
    # The freed heap went back to the system once after the traced graphs were released
    # (training/compiled_step.py) and once after each step's first run (its instantiation's
    # garbage, training/memory.py), not after every one of the 4 weight and 4 arch steps.
    assert len(trims) == 3
    assert isinstance(straight.weight_step, compiled_step.CompiledStep)
    assert isinstance(straight.arch_step, compiled_step.CompiledStep)
    assert straight.net.forget_node_functions() == 0   # the traced node functions were let go
    alpha, beta = straight.net.alpha.numpy().copy(), straight.net.beta.numpy().copy()
    # alpha/beta were trained: 4 Adam steps (lr 3e-3) moved every alpha and every beta logit of a
    # transition that exists, by more than their initial scale (N(0, 1) * 1e-3).
    valid = trellis.valid_mask(*beta.shape[:2])
    assert np.all(alpha != alpha0) and np.all(beta[valid] != beta0[valid])
    assert np.abs(alpha - alpha0).mean() > 1e-3 and np.abs(beta - beta0)[valid].mean() > 1e-3

    # Interrupted after step 3 (mid-epoch 2), then a fresh process-like Searcher resumes from disk.
    first = searcher.Searcher(_config(tmp_path / "resumed", stop_after_step=3), log=lambda *a: None)
    r1 = first.run()
    assert not r1.finished and r1.step == 3
    second = searcher.Searcher(_config(tmp_path / "resumed"), log=lambda *a: None)
    r2 = second.run()
    assert r2.finished and r2.step == 4
    np.testing.assert_array_equal(second.net.alpha.numpy(), alpha)
    np.testing.assert_array_equal(second.net.beta.numpy(), beta)
    assert r2.architecture == res.architecture
    for v_a, v_b in zip(second.net.weight_variables, straight.net.weight_variables):
        np.testing.assert_array_equal(v_a.numpy(), v_b.numpy())
    assert int(second.arch_opt.iterations.numpy()) == int(straight.arch_opt.iterations.numpy()) == 4

    # A weight step changes every weight and no alpha/beta; an arch step the reverse.
    batch_a = next(straight._dataset("trainA", 5))
    batch_b = next(straight._dataset("trainB", 5, seed_offset=1))
    w0, a0 = _snapshot(straight)
    straight.weight_step(batch_a)
    w1, a1 = _snapshot(straight)
    assert all(_changed(w0, w1)) and not any(_changed(a0, a1))
    straight.arch_step(batch_b)
    w2, a2 = _snapshot(straight)
    assert not any(_changed(w1, w2)) and all(_changed(a1, a2))
    assert straight.weight_step.experimental_get_tracing_count() == 1
    assert straight.arch_step.experimental_get_tracing_count() == 1

    # Non-finite values: the step is refused with an error naming the step and where.
    ckpts = sorted(os.listdir(tmp_path / "straight" / "checkpoints"))
    straight.net.vars["stem/conv0"].assign(tf.fill(straight.net.vars["stem/conv0"].shape, np.nan))
    with pytest.raises(searcher.SearchError,
                       match=r"non-finite (loss|gradients of the weights) at step 7 .*weight step"):
        straight._check(straight.weight_step(batch_a), 7, "weight")
    straight.net.alpha.assign(tf.fill(straight.net.alpha.shape, np.inf))
    with pytest.raises(searcher.SearchError, match=r"non-finite .*step 8.*architecture step"):
        straight._check(straight.arch_step(batch_b), 8, "architecture")
    assert sorted(os.listdir(tmp_path / "straight" / "checkpoints")) == ckpts


def test_resume_refuses_other_settings(tmp_path):
    first = searcher.Searcher(_config(tmp_path, epochs=1), log=lambda *a: None)
    first._save_config()
    first.manager.save()  # a checkpoint of this search exists (no step needed)
    with pytest.raises(searcher.SearchError, match="different settings.*--crop_size=33"):
        searcher.Searcher(_config(tmp_path, crop_size=65, epochs=1), log=lambda *a: None).run()


def test_bad_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="--crop_size"):
        _config(tmp_path, crop_size=8).validate()
    with pytest.raises(ValueError, match="--epochs"):
        _config(tmp_path, epochs=0).validate()
    with pytest.raises(ValueError, match="--strategy"):
        _config(tmp_path, strategy="tpu").validate()
    with pytest.raises(ValueError, match="--recompute_cheap_ops='maybe'"):
        _config(tmp_path, recompute_cheap_ops="maybe").validate()
    with pytest.raises(ValueError, match="--recompute_cheap_ops=on applies to --supernet=fused"):
        _config(tmp_path, recompute_cheap_ops="on", supernet="reference").validate()


def test_compiled_steps_keep_no_traced_graph_alive(tmp_path):
    """compile_steps lets go of every graph tracing built (training/compiled_step.py), the node
    functions' and their custom gradients' included, and the compiled steps still run."""
    import gc

    from tensorflow.python.framework import func_graph

    def live_graphs():
        gc.collect()
        return sum(isinstance(o, func_graph.FuncGraph) for o in gc.get_objects())

    logs = []
    s = searcher.Searcher(_config(tmp_path, val_steps=1), log=logs.append)
    batches = s._dataset("trainA", 0)
    baseline = live_graphs()   # the input pipeline's own function graphs
    s.compile_steps(batches.element_spec)
    # Tracing built dozens of graphs (3 steps, their conds, the node functions and their gradients);
    # none is left, also not through the custom gradients' global registry (without forgetting
    # those, 32 stay alive here).
    assert live_graphs() <= baseline
    assert any(line.startswith("traced the weight, architecture and validation steps") for line in logs)
    out = s.weight_step(next(batches))
    assert np.isfinite(float(out["loss"])) and not np.asarray(out["bad"]).any()
    assert s.eval_step(next(batches)).shape == (s.desc.num_classes, s.desc.num_classes)
