"""What every benchmark shares: where results go, the machine's load, medians, percentiles.

Not a benchmark itself (`make bench` runs the scripts it lists, not every file here).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (/proc/loadavg)."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def wait_until_quiet(threshold: float, timeout_s: float, poll_s: float = 30.0) -> dict[str, Any]:
    """Poll the 1-minute load until it drops below `threshold` (other work shares the cores)."""
    began = time.monotonic()
    while True:
        load = load_average()
        waited = time.monotonic() - began
        if load[0] < threshold or waited >= timeout_s:
            return {"threshold": threshold, "waited_s": round(waited), "quiet": load[0] < threshold}
        print(f"load {load[0]:.2f} >= {threshold}: waiting ({waited:.0f} s)", file=sys.stderr)
        time.sleep(poll_s)


def machine() -> dict[str, Any]:
    """The CPU and Python this ran on."""
    model = ""
    with open("/proc/cpuinfo") as stream:
        for line in stream:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def library_versions(*names: str) -> dict[str, str | None]:
    """Installed versions of the named distributions (None when absent)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def header(name: str, command: str, quick: bool) -> dict[str, Any]:
    """The fields every result file starts with."""
    return {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "quick": quick,
        "machine": machine(),
        "load_average_start": load_average(),
    }


def finish(results: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Stamp the end load average, write results/<benchmark>.json, print the JSON."""
    results["load_average_end"] = load_average()
    out_dir = out_dir or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{results['benchmark']}.json"
    text = json.dumps(results, indent=2, default=str) + "\n"
    path.write_text(text)
    print(text)
    return path


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tensor_bytes(tensor: Any) -> int:
    return 0 if tensor is None else int(tensor.numel() * tensor.element_size())


def model_tensors(model: Any) -> list[Any]:
    """Parameters, buffers and each 4-bit layer's quantization state (absmax, code, offset)."""
    import bitsandbytes as bnb

    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            tensors += [state.absmax, state.code, state.offset]
            if state.state2 is not None:
                tensors += [state.state2.absmax, state.state2.code]
    return tensors


def unique_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of `tensors`, a storage shared by several counted once."""
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        if tensor is None or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor_bytes(tensor)
    return total
