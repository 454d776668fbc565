"""The fused supernet computes the paper's equations: it equals the edge-by-edge reference
(`search/reference.py`, built from the final network's op layers) on every node, on the logits and in
the gradients, on the small-map and the large-map code paths."""

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

import search
from nas_deeplab import architecture
from nas_deeplab.search import reference, supernet, trellis

# Map-size thresholds of the fused supernet's forms: at crop 33 the levels are 9, 5, 3 and 2 pixels
# a side, so 10**6 takes the small-map forms everywhere, 1 the large-map ones, 5 both in one network.
FORMS = {"small": 10 ** 6, "large": 1, "mixed": 5}


@pytest.mark.parametrize("form,layers,blocks,filters,levels", [
    ("small", 4, 2, 2, 4),
    ("large", 3, 2, 4, 4),   # F=4: level 3 has C=32, the other branch of the pool weighting
    ("mixed", 3, 3, 2, 3),
])
def test_fused_supernet_equals_edge_by_edge_reference(form, layers, blocks, filters, levels,
                                                      monkeypatch):
    for name in ("LARGE_MAP_SIZE", "PER_OUTPUT_BN_MIN_SIZE", "SPLIT_SEPARABLE_MIN_SIZE"):
        monkeypatch.setattr(supernet, name, FORMS[form])
    cfg = supernet.SupernetConfig(num_classes=3, num_layers=layers, num_blocks=blocks,
                                  filter_multiplier=filters, num_levels=levels)
    net = supernet.Supernet(cfg, seed=layers)
    rng = np.random.default_rng(blocks)
    net.alpha.assign(rng.standard_normal(net.alpha.shape).astype(np.float32))  # far from uniform
    net.beta.assign(rng.standard_normal(net.beta.shape).astype(np.float32))
    ref = reference.from_supernet(net)
    # every fused weight element has exactly one per-edge counterpart (and nothing else is a weight)
    assert ref.parameter_count() == net.parameter_count()
    layout = reference.fused_layout(ref, blocks)
    assert len(layout) == len(ref.weight_variables)

    x = tf.constant(rng.uniform(0, 255, (2, 33, 33, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 3, (2, 33, 33)).astype(np.int32))

    def run(model, variables):
        with tf.GradientTape() as tape:
            logits, states = model(x, return_states=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return logits, states, tape.gradient(loss, variables)

    fused_vars = [net.alpha, net.beta] + list(net.vars.values())
    logits_f, states_f, grads_f = run(net, fused_vars)
    logits_r, states_r, grads_r = run(ref, [ref.alpha, ref.beta] + [w for w, _, _ in layout])

    nodes = trellis.all_nodes(layers, levels)
    assert set(states_r) == set(states_f) == set(nodes) | {(-2, 0), (-1, 0)}
    for node in nodes:
        np.testing.assert_allclose(states_f[node].numpy(), states_r[node].numpy(), rtol=1e-4,
                                   atol=2e-5, err_msg=f"node {node}")
    np.testing.assert_allclose(logits_f.numpy(), logits_r.numpy(), rtol=1e-4, atol=2e-5)

    def close(g_fused, g_ref, what):
        scale = max(float(np.abs(g_ref).max()), 1e-12)
        np.testing.assert_allclose(g_fused, g_ref, rtol=2e-3, atol=1e-4 * scale, err_msg=what)

    ga, gb = grads_f[0].numpy(), grads_f[1].numpy()
    assert np.abs(ga).max() > 1e-4 and np.abs(gb).max() > 1e-4
    close(ga, grads_r[0].numpy(), "d loss / d alpha")
    close(gb, grads_r[1].numpy(), "d loss / d beta")
    by_key = dict(zip(net.vars, grads_f[2:]))
    for (weight, key, take), g_ref in zip(layout, grads_r[2:]):
        close(take(by_key[key]).numpy(), g_ref.numpy(), f"d loss / d {weight.path} ({key})")


def test_reference_matches_the_fused_initial_alpha_beta_and_is_seeded():
    """Same seed -> the fused supernet's alpha/beta, and the same weights twice."""
    cfg = supernet.SupernetConfig(num_classes=2, num_layers=1, num_blocks=1, filter_multiplier=1,
                                  num_levels=2)
    net = supernet.Supernet(cfg, seed=3)
    a, b = reference.ReferenceSupernet(cfg, seed=3), reference.ReferenceSupernet(cfg, seed=3)
    np.testing.assert_array_equal(a.alpha.numpy(), net.alpha.numpy())
    np.testing.assert_array_equal(a.beta.numpy(), net.beta.numpy())
    for p in a.vars:
        np.testing.assert_array_equal(a.vars[p].numpy(), b.vars[p].numpy())
    assert any(np.any(v.numpy() != 0) for v in a.weight_variables)


def _search(argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["search.py"] + argv)
    return search.main(["search.py"])


def test_search_cli_runs_the_reference_supernet(tmp_path, capsys):
    """`--supernet=reference`: a weight and an architecture step on two replicas, architecture.json."""
    out = tmp_path / "s"
    with flagsaver.flagsaver():
        assert _search([f"--output_dir={out}", "--supernet=reference", "--epochs=1", "--steps_per_epoch=1",
                        "--arch_start_epoch=0", "--crop_size=33", "--batch_size=2", "--filter_multiplier=1",
                        "--num_layers=1", "--num_blocks=1", "--num_levels=2", "--val_steps=0",
                        "--seed=5"]) == 0
    text = capsys.readouterr().out
    assert "on 2 replica(s)" in text and "architecture step: first step" in text
    assert "traced the weight and architecture steps in" in text
    arch = architecture.Architecture.load(str(out / "architecture.json"))
    assert arch.num_layers == 1 and arch.num_blocks == 1 and arch.filter_multiplier == 1
    init = supernet.Supernet(supernet.SupernetConfig(num_classes=2, num_layers=1, num_blocks=1,
                                                     filter_multiplier=1, num_levels=2), seed=5)
    # the arch step moved every alpha and beta entry (Adam's first step: about lr = 3e-3 each)
    assert np.abs(np.load(out / "alpha.npy") - init.alpha.numpy()).min() > 1e-3
    moved = np.abs(np.load(out / "beta.npy") - init.beta.numpy()) > 1e-3
    assert np.array_equal(moved, trellis.valid_mask(1, 2))


def test_reference_checkpoint_round_trip(tmp_path):
    """What the searcher checkpoints (weights by path, alpha, beta) restores into a fresh reference."""
    cfg = supernet.SupernetConfig(num_classes=2, num_layers=2, num_blocks=1, filter_multiplier=1,
                                  num_levels=2)
    a, b = reference.ReferenceSupernet(cfg, seed=1), reference.ReferenceSupernet(cfg, seed=2)
    path = tf.train.Checkpoint(supernet=a).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(supernet=b).restore(path).assert_existing_objects_matched()
    for va, vb in zip(a.weight_variables + a.arch_variables, b.weight_variables + b.arch_variables):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())


def test_search_cli_refuses_recompute_with_the_reference(tmp_path, capsys):
    with flagsaver.flagsaver():
        assert _search([f"--output_dir={tmp_path}", "--supernet=reference", "--recompute"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "search.py: error: --recompute and --recompute_levels apply to --supernet=fused only"
    assert not any(tmp_path.iterdir())
    with flagsaver.flagsaver():
        with pytest.raises(flags.IllegalFlagValueError, match="supernet"):
            flags.FLAGS(["search.py", "--supernet=fast"])
