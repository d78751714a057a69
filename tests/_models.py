"""Tiny, randomly initialised cross-encoders built locally, so tests never need the hub."""

from __future__ import annotations

import importlib.metadata
import random
from pathlib import Path

TRANSFORMERS_MAJOR = int(importlib.metadata.version("transformers").split(".")[0])
"""The installed transformers line (4 or 5): the few tests of version-specific behaviour read it."""

WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "was",
    "rag",
    "retrieval",
    "augmented",
    "generation",
    "combines",
    "search",
    "documents",
    "language",
    "model",
    "answer",
    "question",
    "weather",
    "paris",
    "france",
    "capital",
    "city",
    "river",
    "rain",
    "sun",
    "cloud",
    "python",
    "code",
    "engine",
    "rerank",
    "cross",
    "encoder",
    "vector",
    "index",
    "query",
    "passage",
    "relevant",
    "score",
    "token",
    "batch",
    "cache",
    "memory",
    "fast",
    "slow",
    "cpu",
    "gpu",
    "cat",
    "dog",
    "bird",
    "fish",
    "tree",
    "forest",
    "mountain",
    "sea",
    "ocean",
    "music",
    "art",
    "history",
    "science",
    "physics",
    "chemistry",
    "biology",
    "math",
    "number",
    "data",
    "table",
    "chair",
    "house",
    "car",
    "train",
    "plane",
    "road",
    "bridge",
    "what",
    "why",
    "how",
    "when",
    "where",
    "who",
    "which",
    "does",
    "do",
    "can",
    "will",
    "would",
    "should",
    "could",
    "may",
    "might",
]

SENTENCES = [
    "rag combines retrieval and generation to answer a question",
    "the weather in paris is rain and cloud",
    "paris is the capital city of france on a river",
    "a cross encoder scores a query and a passage together",
    "the vector index finds relevant documents fast",
    "cats and dogs are not fish or birds",
    "python code for a rerank engine with a cache",
    "the gpu is fast and the cpu is slow for a big batch",
    "music and art and history are not science",
    "the train crossed the bridge over the river",
]


def assert_tokenizer_knows_its_words(tokenizer) -> None:
    """Fail the build of a tiny model whose tokenizer maps the test vocabulary to unknowns.

    A tokenizer that reads every word as unknown gives every pair the same ids, and a test
    comparing two scorers would then pass whatever they do.
    """
    ids = tokenizer(" ".join(SENTENCES), add_special_tokens=False)["input_ids"]
    unknown = sum(1 for i in ids if i == tokenizer.unk_token_id)
    if not ids or unknown > len(ids) // 20:
        msg = f"the tiny tokenizer reads {unknown} of {len(ids)} test tokens as unknown"
        raise RuntimeError(msg)


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def build_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT sequence classifier (num_labels=1) with a WordPiece vocab."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,?!'-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters]
    vocab += [f"##{c}" for c in letters]
    vocab = list(dict.fromkeys(vocab))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # From the folder, not BertTokenizerFast(vocab_file=...): transformers 5 renamed that
    # argument to ``vocab`` and silently drops the old one (every word then becomes [UNK]).
    tok = BertTokenizerFast.from_pretrained(str(folder), model_max_length=512)
    assert_tokenizer_knows_its_words(tok)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
        initializer_range=0.3,  # content-sensitive hidden states: the head needs little gain
    )
    model = BertForSequenceClassification(config)
    spread_head(model, tok, model.classifier, seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_xlmr(folder: Path, seed: int = 0) -> Path:
    """A 2-layer XLM-RoBERTa classifier (BGE reranker architecture) with a trained tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaTokenizerFast,
    )

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>")
    rng = random.Random(seed)
    corpus = SENTENCES + [random_text(rng, 12) for _ in range(300)]
    tok.train_from_iterator(corpus, trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    fast = XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=fast.pad_token_id,
        bos_token_id=bos,
        eos_token_id=eos,
        type_vocab_size=1,
        num_labels=1,
        initializer_range=0.3,  # content-sensitive hidden states: the head needs little gain
    )
    assert_tokenizer_knows_its_words(fast)
    model = XLMRobertaForSequenceClassification(config)
    spread_head(model, fast, model.classifier.out_proj, seed)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def spread_head(model, tokenizer, head, seed: int, logit_std: float = 1.5) -> None:
    """Point the final linear layer along the main direction of variation of its inputs.

    A randomly initialised head gives near-constant logits, which would make every score test
    pass trivially; this one spreads logits like a trained reranker's (std ~1.5).
    """
    import torch

    rng = random.Random(seed + 1)
    queries = [random_text(rng, 4) for _ in range(16)]
    docs = SENTENCES + [random_text(rng, rng.randint(3, 40)) for _ in range(54)]
    pairs = [(rng.choice(queries), d) for d in docs]
    captured: list = []
    handle = head.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    model.eval()
    with torch.no_grad():
        enc = tokenizer(
            [p[0] for p in pairs], [p[1] for p in pairs], padding=True, return_tensors="pt"
        )
        model(**enc)
    handle.remove()
    feats = captured[0]
    mean = feats.mean(0)
    _, _, v = torch.pca_lowrank(feats - mean, q=1, center=False)
    direction = v[:, 0]
    proj = (feats - mean) @ direction
    scale = logit_std / float(proj.std())
    with torch.no_grad():
        head.weight.copy_((direction * scale).unsqueeze(0))
        head.bias.fill_(-float(mean @ direction) * scale)


def mark_as_fallback(model: str | Path, folder: Path) -> Path:
    """A copy of ``model`` carrying the offline fallback's mark (its head counts as untrained)."""
    import json
    import shutil

    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["rerank_plugins_fallback"] = {"version": 1, "head": "untrained"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder
