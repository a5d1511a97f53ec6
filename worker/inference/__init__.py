"""The inference server: OpenAI-compatible generation on base models and LoRA adapters."""
