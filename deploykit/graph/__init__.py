"""Graph surgery: what deploykit changes or reads inside a model's graph.

Smaller BERTs cut out of bigger ones (`bert_surgery`), integer-only tracing (`integer_graph`,
`residual_scaling`), mixed precision (`mixed_precision`), ONNX input and canonical form
(`onnx_model`, `onnx_canonical`), LiteRT embedding lookups (`tflite_lookup`), and an exported
graph's ops checked against a target (`graph_ops`, `compatibility`).
"""
