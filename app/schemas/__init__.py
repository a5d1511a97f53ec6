"""Pydantic request/response models in the OpenAI shapes, and the job spec."""
