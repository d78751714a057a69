"""Tiny decoder-only (LLM) rerankers built locally: Qwen3, Gemma and Llama configs, random weights.

Each gets a byte-level BPE tokenizer trained here on the test words plus the tokens the
reranking formats need (``yes``/``no``/``Yes``, ``<|im_start|>``, ``<think>`` ...), and a
scoring head spread so that relevance logits vary like a trained reranker's.
"""

from __future__ import annotations

import random
from pathlib import Path

from tests._models import SENTENCES, WORDS, random_text

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]

QWEN3_RERANKER_TEMPLATE = (
    '{%- set ns = namespace(instruct="Given a web search query, retrieve relevant passages that '
    'answer the query", query="", document="") -%}'
    "{%- for m in messages -%}"
    "{%- set text = m.content if m.content is string else m.content[0].text -%}"
    '{%- if m.role == "system" -%}{%- set ns.instruct = text -%}'
    '{%- elif m.role == "query" -%}{%- set ns.query = text -%}'
    '{%- elif m.role == "document" -%}{%- set ns.document = text -%}{%- endif -%}'
    "{%- endfor -%}"
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: {{ ns.instruct }}\n<Query>: {{ ns.query }}\n<Document>: "
    "{{ ns.document }}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
"""A chat template laying out Qwen3-Reranker's format from sentence-transformers' pair messages
(roles ``query`` and ``document``; a prompt arrives as the ``system`` message): how a
CrossEncoder folder of Qwen3-Reranker carries its format."""

_FORMAT_TEXT = [
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".',
    "Given a web search query, retrieve relevant passages that answer the query",
    "Given a query A and a passage B, determine whether the passage contains an answer to the "
    "query by providing a prediction of either 'Yes' or 'No'.",
    "<Instruct>: <Query>: <Document>: system user assistant A: B:",
]


def build_bpe_tokenizer(folder: Path, specials: list[str], *, seed: int = 0, **named: str):
    """A byte-level BPE tokenizer (GPT-2 style pre-tokenizer) that knows the test words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests._models import assert_tokenizer_knows_its_words

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=900,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = random.Random(seed)
    answers = ["yes", "no", "Yes", "No", "1", "0"]
    corpus = (
        SENTENCES
        + [random_text(rng, 12) for _ in range(300)]
        + _FORMAT_TEXT * 20
        + [f"{a}\n{w}" for a in answers for w in WORDS]
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=2048, **named)
    for word in answers:
        if fast.convert_tokens_to_ids(word) in (None, fast.unk_token_id):
            msg = f"the tiny tokenizer has no single token for {word!r}"
            raise RuntimeError(msg)
    assert_tokenizer_knows_its_words(fast)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def _spread_scoring_rows(model, tokenizer, true: str, false: str, seed: int) -> None:
    """Point the true/false rows of the LM head along the hidden states' main direction.

    Random weights give near-equal logits for every pair, which would let any score test pass;
    this spreads ``logit(true) - logit(false)`` to a std of about 1.5.
    """
    import torch

    rng = random.Random(seed + 1)
    texts = [
        f"{random_text(rng, 4)}\n{d}\n{_FORMAT_TEXT[2]}"
        for d in SENTENCES + [random_text(rng, rng.randint(3, 40)) for _ in range(40)]
    ]
    model.eval()
    with torch.no_grad():
        last = []
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            out = model(input_ids=ids, output_hidden_states=True)
            last.append(out.hidden_states[-1][0, -1])
        feats = torch.stack(last)
        mean = feats.mean(0)
        _, _, v = torch.pca_lowrank(feats - mean, q=1, center=False)
        direction = v[:, 0]
        scale = 0.75 / float(((feats - mean) @ direction).std())
        head = model.get_output_embeddings().weight
        t, f = tokenizer.convert_tokens_to_ids(true), tokenizer.convert_tokens_to_ids(false)
        head[t] = direction * scale
        head[f] = -direction * scale


_TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 2048,
    "initializer_range": 0.2,
}


def _save_causal_lm(
    folder: Path, tok, architecture: str, answers: tuple[str, str], seed: int, **shape
):
    """Build the 2-layer ``{architecture}ForCausalLM`` for ``tok``, spread its answer rows, save it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, f"{architecture}Config")(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **_TINY_SHAPE,
        **shape,
    )
    model = getattr(transformers, f"{architecture}ForCausalLM")(config)
    _spread_scoring_rows(model, tok, *answers, seed)
    model.save_pretrained(folder)
    return folder


def build_qwen3(folder: Path, seed: int = 0, *, chat_template: bool = False) -> Path:
    """A 2-layer Qwen3 causal LM with Qwen3-Reranker's special tokens (no sentence-transformers files).

    With ``chat_template``, its tokenizer carries `QWEN3_RERANKER_TEMPLATE`.
    """
    tok = build_bpe_tokenizer(
        folder, QWEN_SPECIALS, seed=seed, pad_token="<|endoftext|>", eos_token="<|im_end|>"
    )
    if chat_template:
        tok.chat_template = QWEN3_RERANKER_TEMPLATE
        tok.save_pretrained(folder)
    return _save_causal_lm(
        folder,
        tok,
        "Qwen3",
        ("yes", "no"),
        seed,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    )


def build_gemma(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Gemma causal LM, laid out as bge-reranker-v2-gemma ships (scores the ``Yes`` logit)."""
    tok = build_bpe_tokenizer(
        folder,
        GEMMA_SPECIALS,
        seed=seed,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    return _save_causal_lm(
        folder, tok, "Gemma", ("Yes", "No"), seed, num_key_value_heads=1, head_dim=16
    )


def build_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama causal LM with a bos token: the generic decoder shape."""
    tok = build_bpe_tokenizer(
        folder, GEMMA_SPECIALS, seed=seed, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    return _save_causal_lm(folder, tok, "Llama", ("yes", "no"), seed, num_key_value_heads=2)


def save_as_cross_encoder(source: Path, folder: Path) -> Path:
    """The causal LM at ``source`` saved as a sentence-transformers ``CrossEncoder`` (LogitScore)."""
    from sentence_transformers import CrossEncoder

    CrossEncoder(str(source)).save_pretrained(str(folder))
    return folder
