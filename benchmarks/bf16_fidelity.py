"""bf16 ranking fidelity against fp32, and which matrix multiplies cost it.

``precision="bf16"`` casts the whole model to bf16 (what the engine runs on a CPU with
native bf16). This script scores a `python benchmarks/run.py` workload with the benchmark
reranker (a head with a realistic score spread) in fp32 and in bf16 variants, and prints each
variant's worst-query Spearman correlation and top-10 overlap against fp32, as the benchmark
does. The variants keep the residual stream, LayerNorm, softmax and GELU in fp32 and round
only chosen linear layers' inputs and weights to bf16, to locate the error:

- ``full bf16``: the engine's bf16 (every weight and activation in bf16);
- ``bf16 linears``: every encoder linear layer in bf16, everything else in fp32;
- ``bf16 FFN`` / ``bf16 attention``: only the feed-forward or only the attention linears.

torch runs bf16 on any CPU (converted to fp32 inside the kernels where there is no native bf16),
so the **fidelity** numbers hold on any machine; its **speed** here says nothing about a CPU
with AMX or AVX512-BF16 and is not reported.

Run: ``python benchmarks/bf16_fidelity.py minilm 1x50`` or
``python benchmarks/bf16_fidelity.py base 1x50`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

# Run as a script, this file sees benchmarks/ first on sys.path; the harness is a package of
# the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.models import model_path
from benchmarks.harness.report import fidelity
from benchmarks.harness.workloads import Workload, build_workload, parse_shape


class _Bf16Linear(torch.nn.Module):
    """A linear layer whose input and weights are rounded to bf16; returns fp32."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(linear.weight.detach().bfloat16(), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().bfloat16())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.linear(x.bfloat16(), self.weight, self.bias)
        return out.float()


def _is_ffn(name: str) -> bool:
    return name.endswith("intermediate.dense") or (
        name.endswith("output.dense") and "attention" not in name
    )


def _with_bf16_linears(model: Any, chosen: Callable[[str], bool]) -> Any:
    out = copy.deepcopy(model)
    for parent_name, parent in list(out.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}"
            if isinstance(child, torch.nn.Linear) and ".layer." in full and chosen(full):
                setattr(parent, name, _Bf16Linear(child))
    return out


VARIANTS: dict[str, Callable[[Any], Any]] = {
    "full bf16 (the engine's precision='bf16')": lambda m: copy.deepcopy(m).bfloat16(),
    "bf16 linears, fp32 elsewhere": lambda m: _with_bf16_linears(m, lambda n: True),
    "bf16 FFN linears only": lambda m: _with_bf16_linears(m, _is_ffn),
    "bf16 attention linears only": lambda m: _with_bf16_linears(m, lambda n: not _is_ffn(n)),
}


def _scores(model: Any, tokenizer: Any, workload: Workload) -> list[list[float]]:
    out = []
    with torch.inference_mode():
        for query, docs in zip(workload.queries, workload.docs, strict=True):
            row: list[float] = []
            for start in range(0, len(docs), 8):
                part = list(docs[start : start + 8])
                enc = tokenizer(
                    [query] * len(part),
                    part,
                    padding=True,
                    truncation=True,
                    max_length=512,
                    return_tensors="pt",
                )
                row += model(**enc).logits[:, 0].float().tolist()
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["minilm", "base"])
    parser.add_argument("shape", help="workload shape, e.g. 1x50")
    parser.add_argument("--kind", default="synthetic", choices=["synthetic", "english"])
    args = parser.parse_args()
    path = str(model_path(args.model))
    tokenizer = AutoTokenizer.from_pretrained(path)
    workload = build_workload(tokenizer, parse_shape(args.shape), args.kind)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    fp32 = _scores(model, tokenizer, workload)
    print(f"{args.model}, {workload.name}, against fp32 (worst query):")
    for name, make in VARIANTS.items():
        f = fidelity(_scores(make(model), tokenizer, workload), fp32, None, "fp32")
        print(f"  {name:44s} Spearman {f.spearman:.4f}  top-10 {f.top10}/{f.top10_of}")


if __name__ == "__main__":
    main()
