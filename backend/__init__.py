"""Hybrid MoE inference engine: GGUF models, CPU kernels, scheduler."""
