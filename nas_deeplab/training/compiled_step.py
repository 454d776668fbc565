"""A traced tf.function step cut down to the runtime function it compiled to, so its Python graphs can go.

Why: tracing the search's two steps builds about 80k graph ops. Those graphs live on the C++ side of
the Python graph objects, and at crop 321 (bfloat16) they were 0.5 GiB resident for the whole
search, an eighth of its peak. The runtime never reads them: it runs the FunctionDefs that tracing
registered in the eager context. What keeps the graphs alive is
* the tf.function and its concrete functions (the step's graph and, through the node functions of
  the supernet, every nested graph), and
* the gradient functions `tf.custom_gradient` registers in graph mode, one per call, in TF's global
  gradient registry, never removed. Each closes over its forward tensors, hence their graph. Every
  `tf.recompute_grad` and our depthwise, max-pool, dilated-conv and tile gradients are such custom
  gradients (1,579 of them at crop 321).

`CompiledStep` keeps the runtime function by name, the functions it calls, and the captured inputs
(the variables' handles). Calling it runs the same runtime function that calling the tf.function runs
(`ConcreteFunction._call_flat` does the same when no tape is watching), so the results are the same.
`custom_gradients_registered` / `forget_custom_gradients` drop the registry entries of the traced
graphs afterwards.

What it gives up: it cannot retrace. An input of another shape or dtype is refused, with a message
naming the step (a tf.function would retrace silently). Under a gradient tape it records nothing:
it is for steps that compute their own gradients.

It uses TF internals: AtomicFunction, ConcreteFunction._inference_function and the gradient registry.
tests/training/test_compiled_step.py pins each of them on the installed TF, and fails if one moves.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf
from tensorflow.python.eager import context
from tensorflow.python.eager.polymorphic_function import atomic_function
from tensorflow.python.framework import ops

# Names tf.custom_gradient registers its graph-mode gradients under (ops.uid() after the dash).
CUSTOM_GRADIENT_PREFIX = "CustomGradient-"


class CompiledStep:
    """`function` (a tf.function) traced for `args` (tensors or specs), called without its graphs."""

    def __init__(self, function, *args, name: str = "step"):
        self.name = name
        concrete = function.get_concrete_function(*args)
        inference = concrete._inference_function  # noqa: SLF001 - the runtime function behind the call
        ctx = context.context()
        # New handles on the runtime functions keep them registered in the eager context after the
        # tf.function's own handles go; the step's callees (nested node functions, cond branches,
        # gradients) too, as AtomicFunction's `children` do for a live function.
        callees, seen, todo = [], set(), list(inference.children)
        while todo:
            child = todo.pop()
            if child.name in seen:
                continue
            seen.add(child.name)
            callees.append(atomic_function.AtomicFunction(
                child.name, ctx, child.function_type, call_options=_without_graph(child.call_options)))
            todo.extend(child.children)
        self._function = atomic_function.AtomicFunction(
            inference.name, ctx, inference.function_type, children=callees,
            call_options=_without_graph(inference.call_options))
        self._type = concrete.function_type
        # Variable handles, and callables that give a value per call (the collective instance keys
        # of a multi-replica step): evaluated at every call, as ConcreteFunction.captured_inputs does.
        self._captures = list(concrete._captured_inputs)  # noqa: SLF001
        graph = concrete.graph
        num_captured = len(graph.internal_captures) + len(graph.deferred_internal_captures)
        graph_inputs = concrete.inputs[:len(concrete.inputs) - num_captured]
        self._specs = [tf.TensorSpec(t.shape, t.dtype) for t in graph_inputs]   # for the error message
        self._tracing_count = function.experimental_get_tracing_count()
        self.num_callees = len(callees)

    def __call__(self, *args):
        try:   # the traced function type casts the arguments, refusing other shapes and dtypes
            flat = self._type.unpack_inputs(self._type.bind(*args))
        except (TypeError, ValueError):
            got = [f"{t.dtype.name}{list(t.shape)}" for t in tf.nest.flatten(args, expand_composites=True)
                   if hasattr(t, "dtype")]
            want = [f"{s.dtype.name}{list(s.shape)}" for s in self._specs]
            raise ValueError(f"{self.name} was compiled for inputs {want}, got {got}: a compiled step "
                             "does not retrace") from None
        captured = tf.nest.flatten([c() if callable(c) else c for c in self._captures],
                                   expand_composites=True)
        return self._function.call_preflattened(flat + captured)

    def experimental_get_tracing_count(self) -> int:
        """How often the tf.function was traced before it was compiled (as tf.function reports it)."""
        return self._tracing_count


def _without_graph(options: atomic_function.CallOptions) -> atomic_function.CallOptions:
    """The call options of an eager call: control captures are graph ops (refused: they would keep a
    graph alive and order nothing in eager mode)."""
    if options.control_captures:
        raise NotImplementedError("a function with control captures cannot be held without its graph")
    return atomic_function.CallOptions(collective_manager_ids_used=list(options.collective_manager_ids_used),
                                       is_stateful=options.is_stateful)


@contextlib.contextmanager
def custom_gradients_registered():
    """Yields a set that holds, on exit, the names of the custom gradients registered inside."""
    registry = ops._gradient_registry._registry  # noqa: SLF001 - see the module docstring
    before = set(registry)
    names: set = set()
    try:
        yield names
    finally:
        names.update(n for n in set(registry) - before if n.startswith(CUSTOM_GRADIENT_PREFIX))


def forget_custom_gradients(names) -> int:
    """Unregister these custom gradients (of graphs that will not be differentiated again): their
    closures hold the forward graphs. Returns how many were registered."""
    registry = ops._gradient_registry._registry  # noqa: SLF001
    return sum(registry.pop(n, None) is not None for n in names if n.startswith(CUSTOM_GRADIENT_PREFIX))
