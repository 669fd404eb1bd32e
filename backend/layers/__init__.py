"""Building blocks shared by the model files: norms, rope, attention, linear layers, MoE."""
