"""Bytes of the quantized model, counted from the real bitsandbytes tensors.

- Bits per weight of each NF4 linear layer: packed 4-bit weights + its quantization state
  (absmax per block of 64; with double quantization the absmax is uint8 plus, per block of
  256 absmax, an fp32 scale, and a 256-entry code and an offset), against QLoRA's 4.127
  (with DQ) and 4.5 (without). Measured on the decoder layers of an 8B-shaped Llama (one
  layer: tensors of 4M to 59M weights) and of the ~26M-parameter benchmark model, both
  quantized through the engine's own loader path (transformers' BitsAndBytesConfig).
- The whole model's bytes (parameters, buffers and quantization state) against 16/32-bit.
- The 8-bit paged AdamW state after one step, from the optimizer's state tensors.
- The adapter file (adapter_model.safetensors) against the base model.

    python bench/quant_memory.py [--quick]

Prints JSON and writes bench/results/quant_memory.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.memory import BITS_4BIT, BITS_4BIT_DOUBLE_QUANT, ModelShape
from bench.common import (
    finish,
    header,
    library_versions,
    model_tensors,
    tensor_bytes,
    unique_bytes,
)
from bench.synthetic import BENCH_SHAPE, QUICK_SHAPE, build_model_dir, shape_dict

GOAL_BITS = 4.2
LARGE_TENSOR = 1_000_000
LLAMA_8B_LAYER = ModelShape(
    vocab_size=512,  # the layer's bits do not depend on the vocabulary; keeps the file small
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=1,
    num_attention_heads=32,
    num_key_value_heads=8,
)
QUICK_LARGE_LAYER = ModelShape(
    vocab_size=512,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=1,
    num_attention_heads=16,
    num_key_value_heads=8,
)


def quant_state_bytes(state: Any) -> dict[str, int]:
    """Bytes of a bitsandbytes QuantState: per-block scales and the per-tensor constants."""
    nested = state.state2
    return {
        "absmax": tensor_bytes(state.absmax),
        "nested_absmax": tensor_bytes(nested.absmax) if nested is not None else 0,
        "constants": tensor_bytes(state.code)
        + tensor_bytes(state.offset)
        + (tensor_bytes(nested.code) if nested is not None else 0),
    }


def linear_bits(model: Any) -> list[dict[str, Any]]:
    """Each Linear4bit layer's weights, bytes and bits per weight."""
    import bitsandbytes as bnb

    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight = module.weight
        weights = module.in_features * module.out_features
        state = quant_state_bytes(weight.quant_state)
        packed = tensor_bytes(weight.data)
        total = packed + sum(state.values())
        layers.append(
            {
                "name": name,
                "weights": weights,
                "packed_bytes": packed,
                **{f"{k}_bytes": v for k, v in state.items()},
                "bits_per_weight": 8 * total / weights,
                "bits_per_weight_blocks_only": 8 * (total - state["constants"]) / weights,
                "double_quant": weight.quant_state.nested,
                "blocksize": weight.quant_state.blocksize,
            }
        )
    return layers


def model_bytes(model: Any) -> int:
    """Parameters, buffers and 4-bit quantization state, each storage counted once."""
    return unique_bytes(model_tensors(model))


def load_quantized(model_dir: Path, double_quant: bool) -> Any:
    """The engine's loader with its BitsAndBytesConfig (NF4, fp32 compute on the CPU)."""
    import torch
    from transformers import BitsAndBytesConfig

    from app.catalog import CatalogEntry
    from worker.training.models import load_base_model

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.float32,
    )
    entry = CatalogEntry(id="bench", path=str(model_dir))
    model = load_base_model(
        model_dir, entry, dtype=torch.float32, device="cpu", quantization_config=config
    )
    model.train()  # eval mode on this CPU repacks 4-bit weights in place on the first forward
    return model


def summarise_layers(layers: list[dict[str, Any]]) -> dict[str, Any]:
    large = [layer for layer in layers if layer["weights"] >= LARGE_TENSOR]
    weights = sum(layer["weights"] for layer in layers)
    stored = sum(layer["bits_per_weight"] * layer["weights"] for layer in layers) / 8
    return {
        "layers": len(layers),
        "weights": weights,
        "bits_per_weight_all": 8 * stored / weights,
        "large_tensors": len(large),
        "max_bits_large_tensors": max((x["bits_per_weight"] for x in large), default=None),
        "min_bits_large_tensors": min((x["bits_per_weight"] for x in large), default=None),
        "by_shape": {
            f"{x['name'].rsplit('.', 1)[-1]} ({x['weights']:,} weights)": x["bits_per_weight"]
            for x in layers[:7]
        },
    }


def measure_layers(work: Path, shape: ModelShape, label: str) -> dict[str, Any]:
    model_dir = build_model_dir(work / label, shape)
    out: dict[str, Any] = {"shape": shape_dict(shape)}
    for double_quant in (True, False):
        model = load_quantized(model_dir, double_quant)
        layers = linear_bits(model)
        key = "double_quant" if double_quant else "no_double_quant"
        out[key] = summarise_layers(layers)
        out[key]["per_layer"] = layers
        del model
    return out


def optimizer_and_adapter(work: Path, shape: ModelShape) -> dict[str, Any]:
    """The paged 8-bit AdamW state after one step, and the adapter file vs the base."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model_dir = build_model_dir(work / "bench-model", shape)
    model = load_quantized(model_dir, True)
    quantized_bytes = model_bytes(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    )
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    lora_params = sum(p.numel() for p in parameters)
    optimizer = bnb.optim.PagedAdamW8bit(parameters, lr=2e-4, weight_decay=0.0)
    ids = torch.randint(3, shape.vocab_size, (2, 32))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    state_bytes = sum(
        tensor_bytes(v)
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )
    adapter_dir = work / "adapter"
    peft_model.save_pretrained(adapter_dir)
    adapter_file = (adapter_dir / "adapter_model.safetensors").stat().st_size
    base_file = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    parameters_total = sum(p.numel() for p in peft_model.get_base_model().parameters())
    return {
        "model": {
            "parameters": shape_dict(shape)["parameters"],
            "nf4_double_quant_bytes": quantized_bytes,
            "fp32_bytes": 4 * shape_dict(shape)["parameters"],
            "bf16_bytes": 2 * shape_dict(shape)["parameters"],
            "note": "the embeddings and head stay unquantized (fp32 here), so a small-vocab "
            "model's ratio is close to the linear layers' 4.13/32",
            "loaded_parameter_elements": parameters_total,
        },
        "optimizer": {
            "lora_parameters": lora_params,
            "paged_adamw_8bit_state_bytes": state_bytes,
            "bytes_per_parameter": state_bytes / lora_params,
            "adamw_32bit_state_bytes": 8 * lora_params,
        },
        "adapter": {
            "adapter_file_bytes": adapter_file,
            "base_file_bytes_fp32": base_file,
            "adapter_share_of_base_file": adapter_file / base_file,
            "lora_parameters": lora_params,
        },
    }


def adapter_at_8b() -> dict[str, Any]:
    """LoRA r=16 on all linear layers of an 8B-shaped Llama, from the shapes (fp32 adapter)."""
    shape = ModelShape(128256, 4096, 14336, 32, 32, 8)
    per_layer = sum(16 * (d_in + d_out) for d_in, d_out in shape.linear_shapes().values())
    lora = per_layer * shape.num_hidden_layers
    parameters = shape.linear_params + shape.embedding_params + shape.norm_params
    return {
        "lora_parameters": lora,
        "adapter_bytes_fp32": 4 * lora,
        "base_bytes_bf16": 2 * parameters,
        "adapter_share_of_base": 4 * lora / (2 * parameters),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (CI smoke run)")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    command = "python bench/quant_memory.py" + (" --quick" if args.quick else "")
    results = header("quant_memory", command, args.quick)
    results["libraries"] = library_versions("torch", "transformers", "peft", "bitsandbytes")
    results["reference_bits"] = {
        "qlora_double_quant": BITS_4BIT_DOUBLE_QUANT,
        "qlora_no_double_quant": BITS_4BIT,
    }
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as root:
        work = Path(root)
        large = QUICK_LARGE_LAYER if args.quick else LLAMA_8B_LAYER
        results["large_layer"] = measure_layers(work, large, "large-layer")
        results["bench_model"] = measure_layers(
            work, QUICK_SHAPE if args.quick else BENCH_SHAPE, "bench-model"
        )
        results.update(optimizer_and_adapter(work, QUICK_SHAPE if args.quick else BENCH_SHAPE))
    results["adapter_8b_computed"] = adapter_at_8b()
    dq = results["large_layer"]["double_quant"]
    results["goal"] = {
        "max_bits_per_weight_large_tensors": GOAL_BITS,
        "value": dq["max_bits_large_tensors"],
        "met": dq["max_bits_large_tensors"] is not None
        and dq["max_bits_large_tensors"] <= GOAL_BITS,
    }
    finish(results, args.out_dir)


if __name__ == "__main__":
    main()
