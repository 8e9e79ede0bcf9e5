"""Generative language models: loading causal LMs from formats keras-hub does not read itself."""
