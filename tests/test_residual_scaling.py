"""Channel-scaled residual stream: same float outputs, weights restored, outlier channels found."""

import numpy as np

from deploykit.graph.integer_graph import integer_graph
from deploykit.models import load_model
from deploykit.graph.residual_scaling import find_scales, scaled_residual_stream, stream_layers

TEXTS = ["team goal win season", "bread soup garlic", "coach league player", "cheese recipe bake dinner"]


def _outputs(bundle, inputs, scales=None):
    with integer_graph(-30.0):
        if scales is None:
            return bundle.predict(inputs)
        query = stream_layers(bundle).readers[0].kernel
        original = query.numpy().copy()
        with scaled_residual_stream(bundle, scales):
            np.testing.assert_allclose(query.numpy(), original * scales[:, None, None])  # folded while active
            return bundle.predict(inputs)


def test_scaled_stream_keeps_float_outputs_and_restores_weights(tiny_classifier, tiny_backbone_file):
    for source in (tiny_classifier, tiny_backbone_file):
        bundle = load_model(source)
        assert stream_layers(bundle) is not None
        inputs = bundle.encode(TEXTS, 16)
        weights = [w.numpy().copy() for w in bundle.deployment_model(16).weights]
        scales = np.where(np.arange(32) % 5 == 0, 32.0, np.where(np.arange(32) % 7 == 0, 2.0, 1.0)).astype(np.float32)
        scaled = _outputs(bundle, inputs, scales)
        np.testing.assert_allclose(scaled, _outputs(bundle, inputs), rtol=1e-4, atol=1e-5)
        for before, after in zip(weights, bundle.deployment_model(16).weights):
            np.testing.assert_array_equal(before, after.numpy())


def test_outlier_channel_gets_a_power_of_two_scale(tiny_backbone_file):
    bundle = load_model(tiny_backbone_file)
    inputs = bundle.encode(TEXTS, 16)
    calibration = [{name: values[i:i + 1] for name, values in inputs.items()} for i in range(len(TEXTS))]
    # make channel 3 of the residual stream a 100x outlier, as BERT-family models have
    for encoder in bundle.backbone.transformer_layers:
        dense = encoder._feedforward_output_dense
        bias = dense.bias.numpy()
        bias[3] = 100.0
        dense.bias.assign(bias)
    scales = find_scales(bundle, 16, calibration, max_scale=8.0)
    assert scales is not None and scales[3] == 8.0
    assert set(np.unique(scales)) <= {1.0, 2.0, 4.0, 8.0}
    assert find_scales(bundle, 16, calibration, max_scale=1.0) is None
