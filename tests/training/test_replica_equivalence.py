"""One replica and two replicas (MirroredStrategy over the two logical CPUs, sync BN) train the same
network from the same global batches: after a few steps the weights, BN statistics and momentum
slots agree to float32 rounding.

Exact in theory: with two replicas the trainer turns sync BN on, so BN normalises with the moments
of the global batch, as the single replica does; the loss is the mean over the valid pixels of the
global batch (replica counts all-reduced); the L2 term is scaled by 1 / replicas and the gradients
summed. A large weight decay (1e-2) makes an L2 term counted twice, or halved, show.

One thing is not the same by design, and is handled here: the ASPP's dropout (keep 0.9) draws its
masks per replica (seeded by step, layer and replica id, so replicas drop independently); it is made
the identity for this comparison. The moving variances are compared as tightly as the weights: the
single replica's fused kernel and the synchronised path both update them with the Bessel-corrected
batch variance n/(n-1) * var (with the biased one, n = 100 values per channel at the smallest map
here, they would differ by 1% per update).
"""

import numpy as np
import tensorflow as tf

from training_fixtures import tiny_train_config
from nas_deeplab.model import heads
from nas_deeplab.training.distribute import make_strategy
from nas_deeplab.training.trainer import train

STEPS = 3


def _distinct_batches(batch_size, seed, num_shards, shard_index):
    """Four different images and labels per step (a different set each step)."""
    assert batch_size == 4 and num_shards == 1

    def make(i):
        g = tf.random.stateless_uniform([4, 33, 33, 3], seed=tf.stack([i, 1]), maxval=255.0)
        labels = tf.random.stateless_uniform([4, 33, 33, 1], seed=tf.stack([i, 2]), maxval=3,
                                             dtype=tf.int32)
        labels = tf.where(tf.range(33)[None, :, None, None] < 4, 255, labels)  # ignored rows
        return {"image": g, "label": labels}
    return tf.data.Dataset.range(1 << 30).map(make)


def _tensors(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def test_one_and_two_replicas_train_to_the_same_weights(tmp_path, tiny_model_config, monkeypatch):
    tolerance = 2e-4
    assert make_strategy("mirrored").num_replicas_in_sync == 2
    monkeypatch.setattr(heads.Dropout, "call", lambda self, x, training=None: x)
    results = {}
    for name in ("one_device", "mirrored"):
        cfg = tiny_train_config(tmp_path / name, tiny_model_config, None, strategy=name,
                                training_number_of_steps=STEPS, save_interval_steps=STEPS,
                                weight_decay=1e-2, base_learning_rate=0.05)
        result = train(cfg, dataset_fn=_distinct_batches)
        assert result.step == STEPS
        results[name] = (_tensors(result.checkpoint), [loss for _, loss in result.losses])
    (one, loss_one), (two, loss_two) = results["one_device"], results["mirrored"]
    np.testing.assert_allclose(loss_one, loss_two, rtol=1e-5)
    assert one.keys() == two.keys()
    moved = 0
    for key in sorted(one):
        a, b = one[key], two[key]
        if not (isinstance(a, np.ndarray) and a.dtype.kind == "f"):
            np.testing.assert_array_equal(a, b, err_msg=key)  # step counters
            continue
        # Per tensor, relative to its largest entry (momentum slots hold values ~1e-5).
        np.testing.assert_allclose(a, b, rtol=0, atol=tolerance * np.abs(a).max() + 1e-9, err_msg=key)
        moved += "optimizer" in key and np.abs(a).max() > 0
    assert moved > 20  # the momentum slots are compared too, and are non-zero


def test_bfloat16_training_on_two_replicas_follows_float32(tmp_path, tiny_model_config, monkeypatch):
    """mixed_bfloat16 under MirroredStrategy (sync BN in float32 on 16-bit activations): float32
    variables in the checkpoint, the same losses as a float32 run to bfloat16 rounding, and the same
    weight updates in direction."""
    monkeypatch.setattr(heads.Dropout, "call", lambda self, x, training=None: x)
    runs = {}
    for mp in ("none", "mixed_bfloat16"):
        cfg = tiny_train_config(tmp_path / mp, tiny_model_config, None, strategy="mirrored",
                                training_number_of_steps=STEPS, save_interval_steps=STEPS,
                                base_learning_rate=0.05, mixed_precision=mp)
        result = train(cfg, dataset_fn=_distinct_batches)
        runs[mp] = (_tensors(result.checkpoint), [loss for _, loss in result.losses])
    (f32, loss32), (b16, loss16) = runs["none"], runs["mixed_bfloat16"]
    assert {v.dtype for v in b16.values() if v.dtype.kind == "f"} == {np.dtype(np.float32)}
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
    # The momentum slots hold the accumulated gradients: the same directions to bfloat16 rounding.
    cosines = []
    for key in sorted(f32):
        a, b = f32[key].ravel().astype(np.float64), b16[key].ravel().astype(np.float64)
        if "optimizer" in key and f32[key].dtype.kind == "f" and np.linalg.norm(a) > 0:
            cosines.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert len(cosines) > 20 and np.median(cosines) > 0.95, sorted(cosines)[:5]
    assert min(cosines) < 1.0 - 1e-9   # bfloat16 really computed something else than float32
