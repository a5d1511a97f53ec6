"""The QLoRA training engine: pure functions over a TrainingConfig; no Celery, no database.

Entry points: `run_training` (train, checkpoint, resume, save the adapter) and
`export_merged` (fold an adapter into a 16-bit base). Import them from their modules
(worker.training.engine, worker.training.export): importing this package stays cheap.
"""

from worker.training.quiet import quiet_bitsandbytes

# Before any module of the engine imports bitsandbytes (directly or through peft).
quiet_bitsandbytes()
