"""The inference server: OpenAI-compatible generation on base models and LoRA adapters."""

from worker.training.quiet import quiet_bitsandbytes

# Before engine.py imports peft, which imports bitsandbytes (its harmless kernels warning).
quiet_bitsandbytes()
