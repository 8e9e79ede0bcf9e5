"""Decoder exporters and runtimes, one module per runtime named in target files (the encoders' are in backends/)."""
