"""Int4-aware fine-tuning (`int4-qat`): train the weights on the very 4-bit grid the int4-weights export
will put them on, so that rounding to it costs little.

The export (OpenVINO's `nncf.compress_weights` INT4_ASYM, rounded to nearest) splits each
weight row into groups of input channels; a group's levels span [min(w, 0), max(w, 0)] in 15
steps with an integer zero point. The fine-tune simulates exactly that rounding on every
Dense/EinsumDense kernel, with a straight-through gradient, and, when the export stores the
vocabulary table at int4 too (--int4-embeddings), rounds it once to the same grid and keeps
it fixed (the rows of tokens the texts never use must not drift). The group size is the
export's (--int4-group-size), and the export then rounds to nearest, as trained. The student
matches the original model's outputs, so no labels are needed; a float copy of the original
labels token-noise perturbed copies of the texts on the fly (on MiniLM, 1500 steps: held-out
cosine 0.9907 against 0.9899 without: the texts alone are memorised long before the grid is
learned).

Each group's range is learned too (OmniQuant's learnable weight clipping): the low and high
bound each keep a trained fraction of the group's min and max, and the kernels are clipped to
those ranges before the export, whose min/max then finds exactly the trained grid. Clipping
trades a larger error on a group's few extreme weights for finer steps on all the others
(MiniLM, 1500 steps: 0.9915 against 0.9907; after 600 steps 0.9897 against 0.9875).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import numpy as np

from deploykit.backends.base import ExportOptions
from deploykit.passes.base import Pass, PassContext, PassResult
from deploykit.passes.parameters import AugmentationParameters, TeacherLossParameters, parameter
from deploykit.passes.qat import distillation_loss, einsum_input_axes, loss_summary, run_training_steps
from deploykit.passes.training import token_noise

INT4_LEVELS = 15  # unsigned 4-bit: levels 0..15


class Int4QatParameters(TeacherLossParameters, AugmentationParameters):
    # MiniLM (1,300 texts, int4 table): held-out cosine 0.984 after 100 steps, 0.988 after 600, 0.990 after 1500
    # and still 0.990 after 3000, while the training loss kept falling (the texts were being memorised).
    steps: int = parameter(1500, "Optimizer steps (MiniLM at 48 tokens, batch 16: about 9 minutes on 2 cores).",
                           gt=0, search=(500, 3000))
    batch_size: int = parameter(16, "Texts per step.", gt=0)
    # The grid moves a weight by up to half a step (about 1/30 of its group's range), so a BERT fine-tuning rate
    # suffices.
    learning_rate: float = parameter(3e-5, "Initial learning rate of the weights (cosine decay to zero).", gt=0)
    learn_clipping: bool = parameter(True, "Also learn how far to shrink each group's range (OmniQuant's learnable "
                                     "weight clipping); the weights are clipped to it before export, so the "
                                     "export's rounding to nearest finds the same grid.")
    # OmniQuant's initialisation: sigmoid(4) keeps 98% of each bound, with gradient enough to move either way.
    clipping_logit: float = parameter(4.0, "Initial logit of the kept fraction of each bound.")
    clipping_learning_rate: float = parameter(5e-3, "Learning rate of the clipping logits (cosine decay).", gt=0)


def group_width(width: int, group_size: int) -> int:
    """The group the export uses for rows of `width` input channels: the requested size when it divides the
    width, else the largest power of two (at least 32) that does, else the whole row (NNCF's ADJUST fallback,
    which keeps such a layer at int8; a whole-row group is then the closer simulation)."""
    if group_size == -1 or width % group_size == 0:
        return width if group_size == -1 else group_size
    size = 2 ** int(math.log2(min(group_size, width)))
    while size >= 32:
        if width % size == 0:
            return size
        size //= 2
    return width


def _groups(weights, reduced_axes: tuple[int, ...], group_size: int):
    """`weights` as (groups, group, output channels) rows, and the function that puts such rows back."""
    from keras import ops

    shape = tuple(weights.shape)
    kept = tuple(axis for axis in range(len(shape)) if axis not in reduced_axes)
    width = math.prod(shape[axis] for axis in reduced_axes)
    group = group_width(width, group_size)
    order = reduced_axes + kept
    rows = ops.reshape(ops.transpose(weights, order), (width // group, group, -1))

    def restore(grouped):
        restored = ops.reshape(grouped, tuple(shape[axis] for axis in order))
        return ops.transpose(restored, tuple(int(i) for i in np.argsort(order)))

    return rows, restore


def _bounds(rows, clipping=None):
    """Each group's [low, high] (including zero, as NNCF's asymmetric grid does), shrunk by `clipping`
    (sigmoid logits of the kept fraction of each bound) when given."""
    from keras import ops

    low = ops.minimum(ops.min(rows, axis=1, keepdims=True), 0.0)
    high = ops.maximum(ops.max(rows, axis=1, keepdims=True), 0.0)
    if clipping is not None:
        low, high = low * ops.sigmoid(clipping[0]), high * ops.sigmoid(clipping[1])
    return low, high


def int4_rounded(weights, reduced_axes: tuple[int, ...], group_size: int, clipping=None,
                 straight_through: bool = False):
    """`weights` rounded to the asymmetric int4 grid of groups of `group_size` input channels (along
    `reduced_axes`), dequantized: what NNCF's rounding to nearest gives, with its float16 scales. With
    `clipping`, each group's range is first shrunk as learned (see `clipped`); `straight_through` rounds
    with an identity gradient, so the weights and the clipping both learn through the grid."""
    from keras import ops

    def rounded(values):
        return values + ops.stop_gradient(ops.round(values) - values) if straight_through else ops.round(values)

    rows, restore = _groups(weights, reduced_axes, group_size)
    low, high = _bounds(rows, clipping)
    rows = ops.clip(rows, low, high) if clipping is not None else rows
    scale = (high - low) / INT4_LEVELS
    scale = ops.where(scale < 1e-9, ops.ones_like(scale), scale)  # an all-zero group stays zero
    zero_point = ops.clip(rounded(-low / scale), 0, INT4_LEVELS)
    levels = ops.clip(rounded(rows / scale) + zero_point, 0, INT4_LEVELS)
    stored_scale = scale + ops.stop_gradient(ops.cast(ops.cast(scale, "float16"), "float32") - scale)
    return restore((levels - zero_point) * stored_scale)


def clipped(weights, reduced_axes: tuple[int, ...], group_size: int, clipping):
    """`weights` with every group clipped to its learned range: the export's own min/max then find exactly
    that range (its extremes sit on the bounds), so learned clipping needs nothing from the exporter."""
    from keras import ops

    rows, restore = _groups(weights, reduced_axes, group_size)
    low, high = _bounds(rows, clipping)
    return restore(ops.clip(rows, low, high))


def _trained_rounding(kernel, reduced_axes: tuple[int, ...], group_size: int, clipping=None):
    """The kernel as the export will round it, for training: without clipping, the gradient passes as if
    unrounded; with it, through the grid (its scale and bounds), so the clipping learns too."""
    from keras import ops

    if clipping is None:
        return kernel + ops.stop_gradient(int4_rounded(kernel, reduced_axes, group_size) - kernel)
    return int4_rounded(kernel, reduced_axes, group_size, clipping, straight_through=True)


def kernel_input_axes(layer) -> tuple[int, ...] | None:
    """The axes a Dense/EinsumDense kernel sums over (None for other layers)."""
    from keras import layers

    if isinstance(layer, layers.EinsumDense):
        return einsum_input_axes(layer.equation)
    return (0,) if isinstance(layer, layers.Dense) else None


def clipping_variables(model, group_size: int, initial_logit: float) -> dict[int, tuple]:
    """For every Dense/EinsumDense of `model`, by layer id: (layer, (low, high)) logits of the kept fraction of
    each group's low and high bound, per output channel."""
    import keras

    found = {}
    for layer in model._flatten_layers():
        axes = kernel_input_axes(layer)
        if axes is not None:
            rows, _ = _groups(layer.kernel, axes, group_size)
            shape = (rows.shape[0], 1, rows.shape[2])
            found[id(layer)] = (layer, tuple(keras.Variable(np.full(shape, initial_logit, "float32"), name=name)
                                             for name in ("int4_clip_low", "int4_clip_high")))
    return found


@contextmanager
def int4_rounding(group_size: int, model=None, clipping: dict[int, tuple] | None = None) -> Iterator[None]:
    """Models called inside round every Dense/EinsumDense kernel (of `model` only, when given: a teacher beside
    it stays float) to the int4 grid, with a straight-through gradient; `clipping` (from `clipping_variables`)
    shrinks the groups' ranges as learned."""
    from keras import layers, ops

    rounded = None if model is None else {id(layer) for layer in model._flatten_layers()}

    def kernel_of(layer):
        learned = clipping.get(id(layer)) if clipping else None
        return _trained_rounding(layer.kernel, kernel_input_axes(layer), group_size, learned and learned[1])

    def dense_call(self, inputs, training=None):
        if rounded is not None and id(self) not in rounded:
            return originals[(layers.Dense, "call")](self, inputs, training)
        return _dense_output(self, ops.matmul(inputs, kernel_of(self)))

    def einsum_dense_call(self, inputs, training=None):
        if rounded is not None and id(self) not in rounded:
            return originals[(layers.EinsumDense, "call")](self, inputs, training)
        return _dense_output(self, ops.einsum(self.equation, inputs, kernel_of(self)))

    replaced = {(layers.Dense, "call"): dense_call, (layers.EinsumDense, "call"): einsum_dense_call}
    originals = {key: getattr(*key) for key in replaced}
    for (cls, name), method in replaced.items():
        setattr(cls, name, method)
    try:
        yield
    finally:
        for (cls, name), method in originals.items():
            setattr(cls, name, method)


class Int4WeightTraining(Pass):
    name = "int4-qat"
    description = ("fine-tune with the int4-weights rounding simulated (groups of input channels, asymmetric, "
                   "each group's range clipped as learned), for an int4-weights export rounded to nearest")
    Parameters = Int4QatParameters
    must_be_last = True
    simulates = ("int4-weights",)
    for_backends = ("openvino",)  # ai-edge-quantizer's int4 (LiteRT) rounds otherwise

    def apply(self, context: PassContext) -> PassResult:
        """Train the bundle's weights in place; `result.effect` says how far the rounded outputs moved back."""
        import keras
        import tensorflow as tf

        p = self.parameters
        started = time.perf_counter()
        model = context.bundle.deployment_model(context.sequence_length)
        teacher = _live_teacher(context) if p.augment > 0 else None
        grid = context.int4
        # The vocabulary table, the one the runtime gathers from (segment and position tables fold into constants).
        table = context.bundle.backbone.token_embedding.embeddings
        if grid.embeddings:  # exported at int4 too: rounded once, so the layers learn to live with it
            table.assign(int4_rounded(table, (1,), grid.table_group_size))
        clipping = clipping_variables(model, grid.group_size, p.clipping_logit) if p.learn_clipping else {}
        with int4_rounding(grid.group_size, model, clipping):
            weights = [v for v in model.trainable_variables if v is not table]
            logits = [v for _, pair in clipping.values() for v in pair]
            variables = weights + logits
            # Decayed to zero: the last steps settle the weights between grid points rather than hop across them.
            optimizers = [keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(rate, p.steps))
                          for rate in (p.learning_rate, p.clipping_learning_rate)]
            loss_of = distillation_loss(context.bundle.task, p, context.label_ids is not None)

            perturb = token_noise(context, p) if teacher is not None else None

            @tf.function(reduce_retracing=True)
            def train_step(inputs, outputs, labels):
                if perturb is not None:  # the original labels the perturbed copies
                    inputs, _ = perturb(inputs, labels)
                    outputs = tf.stop_gradient(teacher(inputs, training=False))
                with tf.GradientTape() as tape:
                    loss = loss_of(model(inputs, training=False), outputs, labels)
                gradients = tape.gradient(loss, variables)
                for optimizer, part, group in ((optimizers[0], gradients[:len(weights)], weights),
                                               (optimizers[1], gradients[len(weights):], logits)):
                    if group:
                        optimizer.apply_gradients([(g, v) for g, v in zip(part, group) if g is not None])
                return loss

            losses = run_training_steps(context, train_step, p.steps, p.batch_size, "int4_qat_train", "int4 QAT")
        kept = _apply_clipping(clipping, grid.group_size)
        return PassResult(self.name, self.describe(), {
            "group_size": grid.group_size, **kept,
            "embeddings_rounded": grid.embeddings, "augmented": teacher is not None, **loss_summary(losses),
            "seconds": round(time.perf_counter() - started, 1),
        })

    def export_options(self, options: ExportOptions) -> ExportOptions:
        """Rounded to nearest, the grid the weights were trained on (GPTQ or AWQ would move them off it: on MiniLM
        GPTQ after this fine-tune gave cosine 0.967 against 0.984 rounded to nearest)."""
        return replace(options, int4=replace(options.int4, algorithm="rtn"))


def _apply_clipping(clipping: dict[int, tuple], group_size: int) -> dict:
    """Clip every kernel to its learned ranges (what the export's min/max will then find); the mean kept
    fraction of the bounds, for the report."""
    from keras import ops

    if not clipping:
        return {}
    fractions = []
    for layer, (low, high) in clipping.values():
        layer.kernel.assign(clipped(layer.kernel, kernel_input_axes(layer), group_size, (low, high)))
        fractions += [float(ops.mean(ops.sigmoid(low))), float(ops.mean(ops.sigmoid(high)))]
    return {"clipping_kept": round(float(np.mean(fractions)), 4)}


def _live_teacher(context: PassContext):
    """A float copy of the original model, to label perturbed texts while the model itself is being rounded and
    trained. After a trimmed tokenizer it reads the student's token ids through a map to its own ids of the same
    tokens (None where a student token is not in the original's vocabulary)."""
    import keras
    import tensorflow as tf

    original = context.teacher.deployment_model(context.sequence_length)
    copy = keras.models.clone_model(original)
    copy.set_weights(original.get_weights())
    vocabulary = context.bundle.tokenizer.get_vocabulary()
    own = {token: i for i, token in enumerate(context.teacher.tokenizer.get_vocabulary())}
    if vocabulary == list(own):
        return copy
    if any(token not in own for token in vocabulary):
        return None
    ids = tf.constant([own[token] for token in vocabulary], tf.int32)
    return lambda inputs, training=False: copy({**inputs, "token_ids": tf.gather(ids, inputs["token_ids"])},
                                               training=training)


def _dense_output(layer, outputs):
    from keras import ops

    if layer.bias is not None:
        outputs = ops.add(outputs, layer.bias)
    return layer.activation(outputs) if layer.activation is not None else outputs
