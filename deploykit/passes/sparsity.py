"""Magnitude sparsity for the prune pass: unstructured (a share of each kernel) or N:M (2:4).

Zeros only pay where the runtime has sparse kernels or sparse storage (2:4 on
NVIDIA Ampere+ tensor cores through TensorRT; measured here, LiteRT's sparse
encoding of a 75%-sparse dynamic-int8 MiniLM is 10% smaller but can no longer be
delegated to XNNPACK and runs far slower), so targets list what they exploit under
`sparsity` and their recipes only use what they list.

Unstructured sparsity follows the polynomial schedule of Zhu & Gupta (2017): from 0
to the final share over the first 75% of the fine-tune, masks recomputed every
`interval` steps and re-applied after every step so the optimizer cannot revive a
pruned weight. 2:4 keeps the 2 largest of every 4 consecutive weights along each
kernel's input axis from the first step.
"""

from __future__ import annotations

import numpy as np

def encoder_kernels(backbone) -> list:
    """The kernels of every transformer layer's projections (attention and FFN), as Keras variables."""
    kernels = []
    for block in backbone.transformer_layers:
        attention = block._self_attention_layer
        layers = [attention._query_dense, attention._key_dense, attention._value_dense, attention._output_dense,
                  block._feedforward_intermediate_dense, block._feedforward_output_dense]
        for layer in layers:
            kernels += [part.kernel for part in (layer.left, layer.right)] if hasattr(layer, "left") else [layer.kernel]
    return kernels


def magnitude_mask(kernel: np.ndarray, share: float, pattern: str, inputs: int) -> np.ndarray:
    """Keep-mask: the largest-magnitude weights (`share` of them zeroed), or 2 of every 4 along the inputs.

    `inputs` is the size of the kernel's leading input axes taken together (EinsumDense
    output projections read [heads, head_size])."""
    magnitude = np.abs(kernel).reshape(inputs, -1)
    if pattern == "2:4":
        rows = inputs - inputs % 4  # a trailing group shorter than 4 stays dense
        groups = magnitude[:rows].reshape(rows // 4, 4, -1)
        order = np.argsort(groups, axis=1, kind="stable")
        keep = np.ones_like(groups, dtype=bool)
        np.put_along_axis(keep, order[:, :2], False, axis=1)
        mask = np.ones_like(magnitude, dtype=bool)
        mask[:rows] = keep.reshape(rows, -1)
        return mask.reshape(kernel.shape)
    count = int(round(share * magnitude.size))
    if count == 0:
        return np.ones(kernel.shape, dtype=bool)
    threshold = np.partition(magnitude.ravel(), count - 1)[count - 1]
    return (np.abs(kernel) > threshold).reshape(kernel.shape)


def input_size(kernel) -> int:
    """Leading input axes of a kernel: one for Dense and Q/K/V, two for attention-output EinsumDense."""
    shape = tuple(kernel.shape)
    return int(np.prod(shape[:2])) if len(shape) == 3 and kernel.path.endswith("attention_output/kernel") else shape[0]


def scheduled_share(final: float, step: int, steps: int) -> float:
    """Zhu & Gupta's cubic ramp: 0 at the start, `final` from 75% of the steps on."""
    ramp = max(1, int(0.75 * steps))
    return final * (1 - (1 - min(step, ramp) / ramp) ** 3)


def sparsity_callback(kernels: list, final: float, pattern: str, steps: int, interval: int):
    """A Keras callback that prunes `kernels` to `final` (or 2:4) over `steps` training steps."""
    import keras

    class MagnitudePruning(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.masks = [None] * len(kernels)

        def on_train_batch_end(self, batch, logs=None):
            if batch % interval == 0 or self.masks[0] is None:
                share = final if pattern == "2:4" else scheduled_share(final, batch + 1, steps)
                self.masks = [magnitude_mask(k.numpy(), share, pattern, input_size(k)) for k in kernels]
            for kernel, mask in zip(kernels, self.masks):
                kernel.assign(kernel.numpy() * mask)

    return MagnitudePruning()


def prune_now(kernels: list, final: float, pattern: str) -> None:
    """One-shot magnitude pruning (no fine-tune, or after it to land exactly on the final share)."""
    for kernel in kernels:
        kernel.assign(kernel.numpy() * magnitude_mask(kernel.numpy(), final, pattern, input_size(kernel)))


def measured_sparsity(kernels: list) -> float:
    zeros = sum(int((k.numpy() == 0).sum()) for k in kernels)
    return zeros / sum(int(np.prod(k.shape)) for k in kernels)
