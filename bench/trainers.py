"""One training run in a process of its own, so its peak RSS is its own: loraforge's engine
(run_training) or a plain TRL SFTTrainer + peft + bitsandbytes script.

    python bench/trainers.py RUN.json

RUN.json (written by bench/trainer_vs_trl.py) names the trainer, packing, the model, the
data, the shared hyperparameters and where to write the result. Both trainers are measured
the same way:
- a forward pre-hook on the base model counts the token positions it computes, the non-pad
  tokens among them and (when the trainer passes labels) the labelled ones;
- the loop time runs from the first step's start (engine: the first should_stop call; TRL:
  on_train_begin) to the last step's end (engine: the last on_metrics; TRL: on_step_end), so
  tokenization, model load and the final save are outside it for both;
- the final loss is the mean cross-entropy per assistant token on the same held-out file,
  computed by one function here on the saved adapter reloaded onto the NF4 base.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import peak_rss_bytes

IGNORE_INDEX = -100


class TokenCounter:
    """Counts what the base model's forward sees while training (not during evaluation)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.positions = 0
        self.tokens = 0
        self.labels = 0
        self.active = True

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.active:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.positions += input_ids.numel()
        self.tokens += int((input_ids != self.pad_id).sum())
        labels = kwargs.get("labels")
        if labels is not None:
            self.labels += int((labels[..., 1:] != IGNORE_INDEX).sum())

    def attach(self, model: Any) -> None:
        model.register_forward_pre_hook(self, with_kwargs=True)


def bnb_config() -> Any:
    """NF4 + double quantization, fp32 compute (the CPU engine's default compute dtype)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )


def run_engine(run: dict[str, Any]) -> dict[str, Any]:
    """loraforge's run_training on the spec a user would POST with these hyperparameters."""
    import worker.training.engine as engine
    from app.catalog import CatalogEntry
    from app.schemas.spec import (
        Hyperparameters,
        LoraSpec,
        QuantizationSpec,
        TrainingSpec,
        resolve_spec,
    )
    from worker.training.config import TrainingConfig, TrainingPaths
    from worker.training.metrics import TrainingHooks

    hp = run["hyperparameters"]
    spec = resolve_spec(
        model="bench/random-llama",
        seed=run["seed"],
        n_train_examples=run["n_train"],
        hyperparameters=Hyperparameters(n_epochs=hp["epochs"], batch_size=hp["batch_size"]),
        lora=LoraSpec(r=hp["r"], alpha=hp["alpha"], dropout=hp["dropout"]),
        quantization=QuantizationSpec(
            bits=4, quant_type="nf4", double_quant=True, compute_dtype="float32"
        ),
        training=TrainingSpec(
            optimizer=hp["optimizer"],
            learning_rate=hp["learning_rate"],
            lr_scheduler=hp["lr_scheduler"],
            warmup_ratio=hp["warmup_ratio"],
            max_grad_norm=hp["max_grad_norm"],
            weight_decay=hp["weight_decay"],
            max_seq_length=hp["max_seq_length"],
            gradient_checkpointing=hp["gradient_checkpointing"],
            packing=run["packing"],
        ),
    )
    entry = CatalogEntry(id="bench/random-llama", path=run["model_dir"])
    config = TrainingConfig.from_spec(spec, entry, device="cpu")
    out = Path(run["out_dir"])
    paths = TrainingPaths(
        train_file=Path(run["train_file"]), output_dir=out, models_dir=out / "models"
    )
    counter = TokenCounter(pad_id=-1)  # set from the tokenizer once the model is loaded
    load_model = engine.load_model

    def load_and_count(*args: Any, **kwargs: Any) -> Any:
        loaded = load_model(*args, **kwargs)
        counter.pad_id = loaded.tokenizer.pad_token_id
        # The engine runs the decoder and computes the head with its loss (chunked).
        counter.attach(loaded.model.get_base_model().get_decoder())
        return loaded

    marks: dict[str, Any] = {"start": None, "ends": [], "losses": [], "optimizer_s": 0.0}
    build_optimizer = engine.build_optimizer

    def build_and_time(*args: Any, **kwargs: Any) -> Any:
        optimizer = build_optimizer(*args, **kwargs)
        step = optimizer.step

        def timed_step(self: Any, *step_args: Any, **step_kwargs: Any) -> Any:
            began = time.perf_counter()
            result = step(*step_args, **step_kwargs)
            marks["optimizer_s"] += time.perf_counter() - began
            return result

        # A bound method, as torch's LR scheduler expects to wrap it in turn.
        optimizer.step = types.MethodType(timed_step, optimizer)
        return optimizer

    # Instrumentation only: the engine's own loader and optimizer, plus a hook and a timer.
    engine.load_model = load_and_count
    engine.build_optimizer = build_and_time

    def should_stop() -> None:
        if marks["start"] is None:
            marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()

    def on_metrics(metrics: Any) -> None:
        marks["ends"].append(time.perf_counter())
        marks["cpu_end"] = time.process_time()
        marks["losses"].append([metrics.step, metrics.train_loss])

    result = engine.run_training(
        config,
        paths,
        TrainingHooks(on_metrics=on_metrics, should_stop=should_stop),
        resume=False,
    )
    peak = peak_rss_bytes()
    counter.labels = result.trained_tokens  # the engine computes its loss outside forward()
    figures = measured(run, counter, marks, peak, result.adapter_dir, result.global_step)
    figures["compute_path"] = result.compute_path
    return figures


def run_trl(run: dict[str, Any]) -> dict[str, Any]:
    """TRL's SFTTrainer as its docs show it for QLoRA, with the shared hyperparameters."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    hp = run["hyperparameters"]
    tokenizer = AutoTokenizer.from_pretrained(run["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        run["model_dir"],
        quantization_config=bnb_config(),
        dtype=torch.float32,
        device_map={"": "cpu"},
        attn_implementation="sdpa",
    )
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=hp["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    counter = TokenCounter(tokenizer.pad_token_id)
    counter.attach(model)
    rows = [json.loads(line) for line in Path(run["train_file"]).read_text().splitlines()]
    marks: dict[str, Any] = {"start": None, "ends": [], "losses": [], "optimizer_s": 0.0}

    class Marks(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks["ends"].append(time.perf_counter())
            marks["cpu_end"] = time.process_time()

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks["optimizer_began"] = time.perf_counter()

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks["optimizer_s"] += time.perf_counter() - marks["optimizer_began"]

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                marks["losses"].append([state.global_step, float(logs["loss"])])

    args = SFTConfig(
        output_dir=str(Path(run["out_dir"]) / "trl"),
        per_device_train_batch_size=hp["batch_size"],
        num_train_epochs=hp["epochs"],
        learning_rate=hp["learning_rate"],
        lr_scheduler_type=hp["lr_scheduler"],
        warmup_steps=hp["warmup_ratio"],  # below 1: a ratio of the steps, as the engine's
        max_grad_norm=hp["max_grad_norm"],
        weight_decay=hp["weight_decay"],
        optim=hp["optimizer"],
        gradient_checkpointing=hp["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=False,
        fp16=False,
        use_cpu=True,
        max_length=hp["max_seq_length"],
        packing=run["packing"],
        assistant_only_loss=True,  # the engine's objective: loss on assistant turns only
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=run["seed"],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        r=hp["r"],
        lora_alpha=hp["alpha"],
        lora_dropout=hp["dropout"],
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Marks()],
    )
    # TRL 1.x casts a quantized model's LoRA weights to bf16; the engine keeps them in fp32
    # and computes in fp32 on the CPU. Same precision for both: back to fp32.
    for parameter in trainer.model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    trainer.train()
    peak = peak_rss_bytes()
    adapter_dir = Path(run["out_dir"]) / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    return measured(run, counter, marks, peak, adapter_dir, trainer.state.global_step)


def measured(
    run: dict[str, Any],
    counter: TokenCounter,
    marks: dict[str, Any],
    peak: int,
    adapter_dir: Path | None,
    steps: int,
) -> dict[str, Any]:
    """The run's figures, with the held-out loss of its saved adapter."""
    counter.active = False
    ends = marks["ends"]
    loop_s = ends[-1] - marks["start"]
    step_times = [b - a for a, b in zip([marks["start"], *ends[:-1]], ends, strict=True)]
    return {
        "trainer": run["trainer"],
        "packing": run["packing"],
        "profile": run["profile"],
        "repeat": run["repeat"],
        "steps": steps,
        "loop_s": loop_s,
        # CPU seconds of all the process's threads over the same span: less sensitive than
        # wall time to other work on the machine (OpenMP spin-waits still count).
        "loop_cpu_s": marks["cpu_end"] - marks["cpu_start"],
        "tokens_per_cpu_s": counter.tokens / (marks["cpu_end"] - marks["cpu_start"]),
        "step_s_median": sorted(step_times)[len(step_times) // 2],
        "optimizer_s": marks["optimizer_s"],
        "optimizer_share": marks["optimizer_s"] / loop_s,
        "positions": counter.positions,
        "tokens": counter.tokens,
        "label_tokens": counter.labels,
        "tokens_per_s": counter.tokens / loop_s,
        "label_tokens_per_s": counter.labels / loop_s,
        "tokens_per_step": counter.tokens / max(1, steps),
        "padding_share": 1 - counter.tokens / counter.positions if counter.positions else 0.0,
        "peak_rss_bytes": peak,
        "train_loss_curve": marks["losses"],
        "final_train_loss": marks["losses"][-1][1] if marks["losses"] else None,
        "eval_loss": held_out_loss(run, adapter_dir) if adapter_dir else None,
    }


def held_out_loss(run: dict[str, Any], adapter_dir: Path) -> float:
    """Mean cross-entropy per assistant token of the held-out file, adapter on the NF4 base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.training.data import load_dataset
    from worker.training.models import inference_mode

    tokenizer = AutoTokenizer.from_pretrained(run["model_dir"])
    base = AutoModelForCausalLM.from_pretrained(
        run["model_dir"],
        quantization_config=bnb_config(),
        dtype=torch.float32,
        device_map={"": "cpu"},
        attn_implementation="sdpa",
    )
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    inference_mode(model)
    data = load_dataset(
        Path(run["eval_file"]),
        tokenizer,
        max_seq_length=run["hyperparameters"]["max_seq_length"],
        train_on="assistant",
    )
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for example in data.examples:
            ids = torch.tensor([example.input_ids])
            labels = torch.tensor(example.labels[1:])
            logits = model(input_ids=ids).logits[0, :-1].float()
            loss_sum += float(
                torch.nn.functional.cross_entropy(
                    logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"
                )
            )
            count += int((labels != IGNORE_INDEX).sum())
    return loss_sum / max(1, count)


def main() -> None:
    run = json.loads(Path(sys.argv[1]).read_text())
    import torch

    torch.set_num_threads(run["threads"])
    assert os.environ.get("OMP_NUM_THREADS") == str(run["threads"]), "set by the parent"
    result = run_engine(run) if run["trainer"] == "loraforge" else run_trl(run)
    result["threads"] = torch.get_num_threads()
    Path(run["result_file"]).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "train_loss_curve"}))


if __name__ == "__main__":
    main()
