"""No code path unpickles anything: a scan of app/ and worker/ for the calls that can run code
while loading (torch.load, pickle, joblib, numpy's allow_pickle, weights_only=False) and for
remote code switched on by hand. Each use must be in ALLOWED, with the reason it is safe."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("app", "worker")
UNSAFE_MODULES = frozenset(
    {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
)
# (file, call) -> why it is safe. Everything else the scan finds fails the test.
ALLOWED: dict[tuple[str, str], str] = {
    ("worker/training/checkpoint.py", "torch.load"): (
        "the worker's own optimizer, scheduler and RNG state in its checkpoint directory, "
        "never a user's file, and with weights_only=True (tensors and plain containers only)"
    ),
}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


def dotted(node: ast.expr) -> str:
    """`torch.load` for an Attribute chain, `load` for a Name; "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        parent = dotted(node.value)
        return f"{parent}.{node.attr}" if parent else ""
    return ""


def keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value == value
        for k in call.keywords
    )


def scan(source: str, file: str) -> list[Finding]:
    findings = []
    tree = ast.parse(source, file)
    imported_loads: set[str] = set()  # names bound to a pickle-style load by `from x import`
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNSAFE_MODULES:
                    findings.append(Finding(file, node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in UNSAFE_MODULES:
                findings.append(Finding(file, node.lineno, f"from {node.module} import"))
            if root == "torch":
                imported_loads |= {a.asname or a.name for a in node.names if a.name == "load"}
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name == "torch.load" or name in imported_loads:
                findings.append(Finding(file, node.lineno, "torch.load"))
                if not keyword_is(node, "weights_only", True):
                    findings.append(Finding(file, node.lineno, "torch.load without weights_only"))
            if keyword_is(node, "weights_only", False):
                findings.append(Finding(file, node.lineno, "weights_only=False"))
            if keyword_is(node, "allow_pickle", True):
                findings.append(Finding(file, node.lineno, "allow_pickle=True"))
            if keyword_is(node, "trust_remote_code", True):
                findings.append(Finding(file, node.lineno, "trust_remote_code=True"))
            if keyword_is(node, "use_safetensors", False):
                findings.append(Finding(file, node.lineno, "use_safetensors=False"))
    return findings


def scan_tree() -> list[Finding]:
    findings = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            file = path.relative_to(ROOT).as_posix()
            findings += scan(path.read_text(), file)
    return findings


def test_nothing_is_unpickled_outside_the_allow_list():
    unexplained = [f for f in scan_tree() if (f.file, f.what) not in ALLOWED]
    assert not unexplained, "unsafe loading: " + "; ".join(map(str, unexplained))


def test_every_allowed_use_still_exists():
    found = {(f.file, f.what) for f in scan_tree()}
    assert set(ALLOWED) <= found, f"stale allow-list entries: {set(ALLOWED) - found}"


def test_the_scan_finds_what_it_looks_for():
    source = """
import pickle
from joblib import load as jl
from torch import load
import torch
torch.load(path)
torch.load(path, weights_only=False)
load(path, weights_only=True)
numpy.load(path, allow_pickle=True)
AutoModel.from_pretrained(path, trust_remote_code=True, use_safetensors=False)
"""
    whats = [f.what for f in scan(source, "example.py")]
    assert whats.count("torch.load") == 3
    assert whats.count("torch.load without weights_only") == 2
    assert {
        "import pickle",
        "from joblib import",
        "weights_only=False",
        "allow_pickle=True",
    } <= set(whats)
    assert {"trust_remote_code=True", "use_safetensors=False"} <= set(whats)


def test_every_base_model_load_asks_for_safetensors():
    """The one place that loads base weights says use_safetensors=True, so a directory that
    holds both kinds still never reaches the pickle."""
    calls = []
    for package in SCANNED:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and dotted(node.func).endswith(
                    "ForCausalLM.from_pretrained"
                ):
                    calls.append((path.name, keyword_is(node, "use_safetensors", True)))
    assert calls and all(ok for _, ok in calls), calls
