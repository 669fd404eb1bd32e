"""The hybrid engine: attention and dense layers on an accelerator, routed experts on the CPU."""
