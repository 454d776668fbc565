"""compiled_step: a step called through its runtime function computes exactly what the tf.function
computes, and once the tf.function and its custom gradients are let go, its graphs are freed."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import context

from nas_deeplab.training import compiled_step, guarded_update
from nas_deeplab.training.distribute import make_strategy


@tf.custom_gradient
def _scaled_relu(x):
    """relu with a hand-written gradient (x0.5): a graph-mode custom gradient, as the supernet's."""
    def grad(g):
        return 0.5 * g * tf.cast(x > 0, g.dtype)
    return tf.nn.relu(x), grad


def _make(strategy, seed=0):
    """A small step with a nested non-inlined function, a custom gradient and a guarded SGD update,
    built like the searcher's steps."""
    rng = np.random.default_rng(seed)
    with strategy.scope():
        kernel = tf.Variable(rng.normal(size=(3, 3, 3, 4)).astype(np.float32))
        dense = tf.Variable(rng.normal(size=(4, 2)).astype(np.float32))
        opt = keras.optimizers.SGD(0.1, momentum=0.9)
        opt.build([kernel, dense])
    variables = [kernel, dense]

    @tf.function(autograph=False, experimental_attributes={"_noinline": True})
    def body(x, k):
        return _scaled_relu(tf.nn.conv2d(x, k, 1, "SAME"))

    def replica(batch):
        with tf.GradientTape() as tape:
            h = body(batch["image"], kernel)
            logits = tf.reduce_mean(h, axis=[1, 2]) @ dense
            loss = tf.reduce_mean(tf.square(logits - batch["target"]))
        grads = tape.gradient(loss, variables)
        bad = guarded_update.nonfinite_flags([loss] + grads)
        guarded_update.apply_if(tf.equal(tf.reduce_sum(bad), 0.0), grads, variables, opt)
        return loss

    @tf.function
    def step(dist_batch):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica, args=(dist_batch,)),
                               axis=None)

    return step, body, variables


def _batches(strategy, n):
    rng = np.random.default_rng(7)
    data = {"image": rng.normal(size=(2 * n, 9, 9, 3)).astype(np.float32),
            "target": rng.normal(size=(2 * n, 2)).astype(np.float32)}
    ds = tf.data.Dataset.from_tensor_slices(data).batch(2)
    return strategy.experimental_distribute_dataset(ds)


@pytest.mark.parametrize("strategy_name", ["one_device", "mirrored"])
def test_a_compiled_step_computes_bit_exactly_what_the_tf_function_does(strategy_name):
    strategy = make_strategy(strategy_name)   # mirrored: the 2 logical CPUs of conftest
    plain, _, plain_vars = _make(strategy)
    compiled_fn, _, compiled_vars = _make(strategy)
    batches = list(_batches(strategy, 3))
    compiled = compiled_step.CompiledStep(compiled_fn, batches[0], name="the test step")
    del compiled_fn
    init = [v.numpy().copy() for v in compiled_vars]
    for batch in batches:
        assert float(compiled(batch)) == float(plain(batch))
    for a, b, v0 in zip(plain_vars, compiled_vars, init):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert np.abs(b.numpy() - v0).max() > 1e-3    # the steps did update the variables
    assert compiled.experimental_get_tracing_count() == 1
    assert compiled.num_callees >= 1   # the nested body (and the cond branches) kept registered


def _graphs_after_release(forget):
    strategy = make_strategy("one_device")
    step, body, variables = _make(strategy)
    batch = next(iter(_batches(strategy, 1)))
    with compiled_step.custom_gradients_registered() as gradients:
        compiled = compiled_step.CompiledStep(step, batch, name="the test step")
    outer = weakref.ref(step.get_concrete_function(batch).graph)
    nested = weakref.ref(body.get_concrete_function(tf.TensorSpec([2, 9, 9, 3]), variables[0]).graph)
    assert step.experimental_get_tracing_count() == body.experimental_get_tracing_count() == 1
    del variables
    name = compiled._function.name
    released = compiled_step.forget_custom_gradients(gradients) if forget else 0
    del step, body
    gc.collect()
    loss = float(compiled(batch))
    return compiled, name, outer() is None, nested() is None, len(gradients), released, loss


def test_letting_go_of_the_function_and_its_custom_gradients_frees_every_graph():
    compiled, name, outer_freed, nested_freed, registered, released, loss = _graphs_after_release(True)
    assert registered >= 1 and released == registered      # _scaled_relu's graph-mode gradient
    assert outer_freed and nested_freed
    assert np.isfinite(loss)
    # The runtime functions stay registered while the compiled step lives, and go with it.
    assert context.context().has_function(name)
    del compiled
    gc.collect()
    assert not context.context().has_function(name)


def test_the_custom_gradient_registry_alone_keeps_the_nested_graph_alive():
    """Why forget_custom_gradients exists: without it the graph the custom gradient was traced in
    outlives everything else, and with it the step's graph (a nested graph refers to its outer one)."""
    _, _, outer_freed, nested_freed, registered, released, _ = _graphs_after_release(False)
    assert registered >= 1 and released == 0
    assert not nested_freed and not outer_freed


def test_inputs_it_was_not_compiled_for_are_refused_by_name():
    strategy = make_strategy("one_device")
    step, _, _ = _make(strategy)
    batch = next(iter(_batches(strategy, 1)))
    compiled = compiled_step.CompiledStep(step, batch, name="the test step")
    wide = {"image": tf.zeros([2, 11, 9, 3]), "target": tf.zeros([2, 2])}
    with pytest.raises(ValueError, match=r"the test step was compiled for inputs .*float32\[2, 9, 9, 3\].*"
                                         r"got .*float32\[2, 11, 9, 3\].*does not retrace"):
        compiled(wide)
    with pytest.raises(ValueError, match="the test step was compiled"):
        compiled({"image": tf.zeros([2, 9, 9, 3], tf.float64), "target": tf.zeros([2, 2])})
