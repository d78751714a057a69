"""Decoder (LLM) rerankers: our engine against CrossEncoder.predict and FlagLLMReranker.

Builds two random-weight models from published configurations: Qwen3-Reranker-0.6B (Qwen3) and
bge-reranker-v2-gemma (Gemma-2B). On a CPU, depth and vocabulary are cut by one factor
(``--scale``): every layer keeps its published width, heads and FFN, and the LM head keeps its
share of the FLOPs, so the ratios between the engines stay close to the full model's
(attention, which grows with the text, is the one part that does not scale with depth). Each model
is saved twice: as the causal LM folder (FlagLLMReranker, our ``flag-llm`` protocol) and as a
sentence-transformers CrossEncoder folder (``CrossEncoder.predict``, our
``sentence-transformers`` protocol); each pair of competitors scores the same weights.

Per shape (``1x20``, ``1x50``: one query, N documents of about 200 tokens), the engines run
interleaved, each call timed on its own, and the table gives medians, the speed-up, the largest
probability difference from the reference, the tokens our prefix reuse skipped, and the share
of FLOPs the reference spent in the LM head.

``--steps`` times our engine alone with its shortcuts switched on one at a time (the full LM
head at every position, then two rows at the last position, then the shared prefix run once).

Run: ``python benchmarks/decoders.py`` (defaults: Qwen3 at depth and vocabulary / 4, Gemma at
/ 9, three repeats), or ``python benchmarks/decoders.py --models qwen3 --shapes 1x20
--qwen3-scale 7 --repeats 1`` to smoke.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine_info  # noqa: I001 (after the sys.path line)
from tests._decoders import (
    GEMMA_SPECIALS,
    QWEN3_RERANKER_TEMPLATE,
    QWEN_SPECIALS,
    build_bpe_tokenizer,
)
from tests._models import WORDS

# Published configurations (config.json of Qwen/Qwen3-Reranker-0.6B and google/gemma-2b, which
# BAAI/bge-reranker-v2-gemma fine-tunes).
QWEN3_0_6B = {
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151669,
    "tie_word_embeddings": True,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
}
GEMMA_2B = {
    "hidden_size": 2048,
    "intermediate_size": 16384,
    "num_hidden_layers": 18,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "vocab_size": 256000,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
}
QUERY_WORDS = 8
DOC_TOKENS = 200


def build(kind: str, scale: int, root: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The causal LM folder, its CrossEncoder folder, and the config actually used."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import GemmaConfig, GemmaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    folder = root / kind
    if kind == "qwen3":
        tok = build_bpe_tokenizer(
            folder,
            QWEN_SPECIALS,
            pad_token="<|endoftext|>",  # noqa: S106 (a token, not a password)
            eos_token="<|im_end|>",  # noqa: S106
        )
        # As Qwen3-Reranker's CrossEncoder folder lays out its format (FlagLLMReranker ignores it).
        tok.chat_template = QWEN3_RERANKER_TEMPLATE
        tok.save_pretrained(folder)
        published, config_cls, model_cls = QWEN3_0_6B, Qwen3Config, Qwen3ForCausalLM
    else:
        tok = build_bpe_tokenizer(
            folder,
            GEMMA_SPECIALS,
            pad_token="<pad>",  # noqa: S106 (a token, not a password)
            eos_token="<eos>",  # noqa: S106
            bos_token="<bos>",  # noqa: S106
            unk_token="<unk>",  # noqa: S106
        )
        published, config_cls, model_cls = GEMMA_2B, GemmaConfig, GemmaForCausalLM
    used = dict(published)
    used["num_hidden_layers"] = max(1, round(published["num_hidden_layers"] / scale))
    used["vocab_size"] = max(len(tok), round(published["vocab_size"] / scale))
    layers, vocab = used["num_hidden_layers"], used["vocab_size"]
    print(f"{kind}: {layers} layers, vocabulary {vocab}", flush=True)
    torch.manual_seed(0)
    config = config_cls(
        **used,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model_cls(config).save_pretrained(folder)
    st_folder = root / f"{kind}-st"
    CrossEncoder(str(folder), device="cpu").save_pretrained(str(st_folder))
    return folder, st_folder, used


def documents(tokenizer: Any, n: int, seed: int) -> tuple[str, list[str]]:
    rng = random.Random(seed)
    query = " ".join(rng.choice(WORDS) for _ in range(QUERY_WORDS))
    docs = []
    for _ in range(n):
        words: list[str] = []
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < DOC_TOKENS:
            words += [rng.choice(WORDS) for _ in range(20)]
        docs.append(" ".join(words))
    return query, docs


def head_share(used: dict[str, Any], tokens_per_pair: float) -> float:
    """Share of a full-logits forward's FLOPs spent in the LM head (matmuls; attention too)."""
    h, f, layers = used["hidden_size"], used["intermediate_size"], used["num_hidden_layers"]
    heads, kv, d = used["num_attention_heads"], used["num_key_value_heads"], used["head_dim"]
    per_layer = 2 * (h * heads * d * 2 + h * kv * d * 2 + 3 * h * f)
    attention = 2 * 2 * heads * d * tokens_per_pair / 2  # QK^T and AV, causal: half on average
    body = layers * (per_layer + attention)
    head = 2 * h * used["vocab_size"]
    return head / (body + head)


def run_model(kind: str, args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    import numpy as np
    from FlagEmbedding import FlagLLMReranker
    from sentence_transformers import CrossEncoder

    from rerank_plugins import RerankEngine

    folder, st_folder, used = build(kind, getattr(args, f"{kind}_scale"), root)
    cross = CrossEncoder(str(st_folder), device="cpu")
    flag = FlagLLMReranker(str(folder), devices="cpu")
    ours_st = RerankEngine(str(st_folder), device="cpu", cache_size=0)
    ours_flag = RerankEngine(str(folder), device="cpu", cache_size=0, decoder_protocol="flag-llm")
    rows = []
    for shape in args.shapes:
        n = int(shape.split("x")[1])
        query, docs = documents(flag.tokenizer, n, seed=n)
        pairs = [(query, d) for d in docs]
        pairings = [
            ("CrossEncoder.predict", partial(cross.predict, pairs), ours_st),
            (
                "FlagLLMReranker.compute_score",
                partial(flag.compute_score, pairs, normalize=True),
                ours_flag,
            ),
        ]
        for name, reference, engine in pairings:
            runner: Any = getattr(engine.backend, "runner")  # noqa: B009 (decoder backend only)
            ref_times, our_times = [], []
            ref_scores: list[float] = []
            our_scores: list[float] = []
            reference()  # warm-up: kernels, allocator
            engine.score(query, docs[:4])
            run0, reused0 = runner.tokens_run, runner.tokens_reused
            for _ in range(args.repeats):  # interleaved: a slow spell hits both sides alike
                start = time.perf_counter()
                ref_scores = list(np.asarray(reference(), dtype=float))
                ref_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                our_scores = engine.score(query, docs)
                our_times.append(time.perf_counter() - start)
            ran = (runner.tokens_run - run0) / args.repeats
            reused = (runner.tokens_reused - reused0) / args.repeats
            ref_s, our_s = statistics.median(ref_times), statistics.median(our_times)
            pair_tokens = (ran + reused) / n
            share = head_share(used, pair_tokens) if name.startswith("Flag") else 0.0
            rows.append(
                {
                    "model": kind,
                    "shape": shape,
                    "reference": name,
                    "ref_s": ref_s,
                    "ours_s": our_s,
                    "speedup": ref_s / our_s,
                    "max_diff": float(np.max(np.abs(np.asarray(our_scores) - ref_scores))),
                    "tokens_per_pair": pair_tokens,
                    "reused_share": reused / (ran + reused),
                    "head_share": share,
                    "details": engine.info.details,
                }
            )
            print(_line(rows[-1]), flush=True)
    for e in (ours_st, ours_flag):
        e.close()
    gc.collect()
    return rows


def run_steps(kind: str, args: argparse.Namespace, root: Path) -> None:
    """Our engine with its two shortcuts switched on one at a time: what each step buys."""
    from transformers import AutoTokenizer

    from rerank_plugins import RerankEngine

    folder, st_folder, _ = build(kind, getattr(args, f"{kind}_scale"), root)
    # Qwen3 as its CrossEncoder folder (its chat template: a long shared prompt), Gemma as
    # bge-reranker-v2-gemma is run (FlagLLMReranker's layout: a short one).
    if kind == "qwen3":
        engine = RerankEngine(str(st_folder), device="cpu", cache_size=0)
    else:
        engine = RerankEngine(str(folder), device="cpu", cache_size=0, decoder_protocol="flag-llm")
    runner: Any = getattr(engine.backend, "runner")  # noqa: B009 (decoder backend only)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    steps = [
        ("engine batching, full LM head", False, False),
        ("+ LM head: 2 rows, last position", True, False),
        ("+ shared prefix run once", True, True),
    ]
    for shape in args.shapes:
        n = int(shape.split("x")[1])
        query, docs = documents(tokenizer, n, seed=n)
        engine.score(query, docs[:4])
        times: dict[str, list[float]] = {name: [] for name, _, _ in steps}
        for _ in range(args.repeats):
            for name, head, reuse in steps:
                runner.native_head, runner.prefix_reuse = head, reuse
                start = time.perf_counter()
                engine.score(query, docs)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times[steps[0][0]])
        for name, _, _ in steps:
            t = statistics.median(times[name])
            protocol = engine.info.details["protocol"]
            row = f"| {kind} ({protocol}) | {shape} | {name} | {t:.2f} s | {base / t:.2f}x |"
            print(row, flush=True)
    engine.close()


def _line(row: dict[str, Any]) -> str:
    head = f"{row['head_share']:.0%}" if row["head_share"] else "- (last position only)"
    return (
        f"| {row['model']} | {row['shape']} | {row['reference']} | {row['ref_s']:.2f} s | "
        f"{row['ours_s']:.2f} s | **{row['speedup']:.2f}x** | {row['max_diff']:.1e} | "
        f"{row['tokens_per_pair']:.0f} | {row['reused_share']:.0%} | {head} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="qwen3,gemma", help="qwen3, gemma or both")
    parser.add_argument("--shapes", default="1x20,1x50", help="1xN: one query, N documents")
    parser.add_argument("--qwen3-scale", type=int, default=4, help="Qwen3: depth, vocab / this")
    parser.add_argument("--gemma-scale", type=int, default=9, help="Gemma: depth, vocab / this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--steps", action="store_true", help="time each shortcut of ours on its own instead"
    )
    args = parser.parse_args()
    args.shapes = args.shapes.split(",")
    info = machine_info()
    print(f"machine: {info}")
    print(
        f"scale: depth and vocabulary / {args.qwen3_scale} (Qwen3-0.6B), / {args.gemma_scale} "
        f"(Gemma-2B); documents ~{DOC_TOKENS} tokens"
    )
    if args.steps:
        print("| model (protocol) | shape | ours | median | vs the first row |")
        print("|---|---|---|---|---|")
    else:
        print(
            "| model | shape | reference | reference | ours | speed-up | max prob diff | "
            "tokens/pair | prefix reused | reference's LM-head FLOPs |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            if args.steps:
                run_steps(kind, args, Path(tmp))
            else:
                run_model(kind, args, Path(tmp))


if __name__ == "__main__":
    main()
