"""The engine: the worker thread, loaded models, scheduling, sequences, sampling and the KV cache."""
