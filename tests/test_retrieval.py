"""TwoStageRetriever end to end on the in-memory store and on Qdrant's local mode."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rerank_plugins import get_engine
from rerank_plugins.data import load_corpus
from rerank_plugins.retrieval import (
    BiEncoder,
    Hit,
    InMemoryStore,
    QdrantStore,
    TwoStageRetriever,
    VectorStore,
    content_id,
)
from rerank_plugins.retrieval.stores import point_id
from tests._process import python

STORES = ["memory", "qdrant-memory", "qdrant-local"]


# ---------------------------------------------------------------------- helpers


class CachedEncoder:
    """The real all-MiniLM-L6-v2 bi-encoder, each text embedded once per test session."""

    def __init__(self, encoder: BiEncoder) -> None:
        self.inner = encoder
        self.cache: dict[str, np.ndarray] = {}
        self.query_threads: list[int] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for text, vector in zip(missing, self.inner.encode_documents(missing), strict=True):
                self.cache[text] = vector
        return np.stack([self.cache[t] for t in texts])

    def encode_query(self, query: str) -> np.ndarray:
        self.query_threads.append(threading.get_ident())
        key = "query: " + query
        if key not in self.cache:
            self.cache[key] = self.inner.encode_query(query)
        return self.cache[key]


class HashingEncoder:
    """A model-free bag-of-words encoder for plumbing tests."""

    name = "hashing-encoder"
    dim = 64

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for word in text.lower().split():
            v[int(hashlib.blake2b(word.encode(), digest_size=8).hexdigest(), 16) % self.dim] += 1.0
        norm = np.linalg.norm(v)
        return v / norm if norm else v

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self._one(t) for t in texts]) if texts else np.zeros((0, self.dim))

    def encode_query(self, query: str) -> np.ndarray:
        return self._one(query)


class LengthScorer:
    """A fake engine: longer texts score higher. Counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        self.calls += 1
        return [float(len(t)) for t in texts]

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        return self.score(query, texts)

    def rerank(self, query, texts, top_n=None, score_threshold=None):  # pragma: no cover
        raise NotImplementedError

    async def arerank(self, query, texts, top_n=None, score_threshold=None):  # pragma: no cover
        raise NotImplementedError

    # The rest of the Scorer interface: what it runs, its counters, its life.
    info = SimpleNamespace(model="length", normalize=False, max_length=None)
    closed = False

    def stats(self) -> dict[str, int]:
        return {"requests": self.calls}

    def close(self) -> None:
        self.closed = True


class ExplodingScorer(LengthScorer):
    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        raise AssertionError("the reranker must not run on an empty index")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from rerank_plugins.models.offline import bi_encoder_path

    return bi_encoder_path()


@pytest.fixture(scope="session")
def encoder(minilm_path: str) -> CachedEncoder:
    return CachedEncoder(BiEncoder(minilm_path, device="cpu").load())


@pytest.fixture(scope="module")
def passages() -> list:
    return load_corpus()[::5]  # 60 passages, four from each topic


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    if request.param == "memory":
        yield InMemoryStore()
        return
    location = ":memory:" if request.param == "qdrant-memory" else str(tmp_path / "qdrant")
    qdrant = QdrantStore(collection="test", path=location)
    yield qdrant
    qdrant.close()


def indexed(store: VectorStore, encoder, engine, passages) -> TwoStageRetriever:
    r = TwoStageRetriever(encoder, engine=engine, store=store)
    r.index(
        [p.text for p in passages],
        metadatas=[p.metadata for p in passages],
        ids=[p.id for p in passages],
    )
    return r


# ---------------------------------------------------------------------- import cost


@pytest.mark.slow
def test_importing_retrieval_loads_no_model_runtime() -> None:
    code = (
        "import sys, rerank_plugins.retrieval, rerank_plugins.models.offline, rerank_plugins.data\n"
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'qdrant_client'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- end to end


def test_hits_are_sorted_by_rerank_score_with_correct_first_stage_ranks(
    store, encoder, bert_engine, passages
) -> None:
    r = indexed(store, encoder, bert_engine, passages)
    query = "Why is the sky blue?"
    run = r.retrieve_detailed(query, top_k=5, candidates=20)

    assert len(run.hits) == 5
    assert len(run.candidates) == 20
    scores = [h.score for h in run.hits]
    assert scores == sorted(scores, reverse=True)

    # The first stage, recomputed independently: cosine over the same embeddings.
    matrix = encoder.encode_documents([p.text for p in passages])
    cosine = matrix @ encoder.encode_query(query)
    expected = [passages[i].id for i in np.argsort(-cosine, kind="stable")[:20]]
    assert [c.id for c in run.candidates] == expected
    assert [c.first_stage_rank for c in run.candidates] == list(range(1, 21))
    assert run.candidates[0].id == "physics-01"  # "Why the sky is blue" passage
    by_id = {p.id: i for i, p in enumerate(passages)}
    for c in run.candidates:
        assert c.first_stage_score == pytest.approx(float(cosine[by_id[c.id]]), abs=1e-4)

    # Every hit is the candidate at its first-stage rank, with the engine's score for it.
    for hit in run.hits:
        assert run.candidates[hit.first_stage_rank - 1] is hit
        assert hit.score == pytest.approx(bert_engine.score(query, [hit.text])[0], abs=1e-6)

    # retrieve() is the same ranking: candidates by rerank score, ties in first-stage order.
    best = sorted(run.candidates, key=lambda h: -h.score)[:5]
    assert [h.id for h in r.retrieve(query, top_k=5, candidates=20)] == [h.id for h in best]


def test_ids_and_metadata_are_kept(store, encoder, bert_engine, passages) -> None:
    r = indexed(store, encoder, bert_engine, passages)
    originals = {p.id: p for p in passages}
    hits = r.retrieve("How do vaccines work?", top_k=10, candidates=30)
    assert len(hits) == 10
    for hit in hits:
        assert isinstance(hit, Hit)
        assert hit.text == originals[hit.id].text
        assert hit.metadata == originals[hit.id].metadata
        assert set(hit.metadata) == {"title", "topic"}


def test_reindexing_the_same_ids_updates_instead_of_duplicating(
    store, encoder, bert_engine
) -> None:
    r = TwoStageRetriever(encoder, engine=bert_engine, store=store)
    r.index(["the sky is blue", "cats purr", "paris is in france"], ids=["a", "b", "c"])
    r.index(["dogs bark loudly"], metadatas=[{"v": 2}], ids=["b"])
    assert len(r) == 3
    hits = {h.id: h for h in r.retrieve("dogs bark", top_k=3, candidates=3)}
    assert set(hits) == {"a", "b", "c"}
    assert hits["b"].text == "dogs bark loudly"
    assert hits["b"].metadata == {"v": 2}


def test_a_repeated_id_in_one_call_keeps_the_last_text(store, encoder, bert_engine) -> None:
    r = TwoStageRetriever(encoder, engine=bert_engine, store=store)
    r.index(["first version", "other", "second version"], ids=["x", "y", "x"])
    assert len(r) == 2
    hits = {h.id: h.text for h in r.retrieve("version", top_k=2, candidates=2)}
    assert hits == {"x": "second version", "y": "other"}


def test_retrieve_on_an_empty_index_returns_an_empty_list_without_reranking(store) -> None:
    r = TwoStageRetriever(HashingEncoder(), engine=ExplodingScorer(), store=store)
    assert r.retrieve("anything at all?") == []
    assert asyncio.run(r.aretrieve("anything at all?")) == []
    assert r.index([]) == []
    assert len(r) == 0


def test_default_ids_derive_from_the_text_so_reindexing_does_not_duplicate(encoder) -> None:
    r = TwoStageRetriever(encoder, engine=LengthScorer())
    texts = ["RAG combines retrieval with generation.", "Paris is in France."]
    ids = r.index(texts)
    assert ids == [content_id(t) for t in texts]
    assert r.index(texts) == ids
    assert len(r) == 2


def test_top_k_larger_than_the_index_returns_every_document(encoder, bert_engine) -> None:
    r = TwoStageRetriever(encoder, engine=bert_engine)
    r.index(["one fish", "two fish", "red fish"])
    hits = r.retrieve("fish", top_k=10, candidates=50)
    assert sorted(h.text for h in hits) == ["one fish", "red fish", "two fish"]
    assert sorted(h.first_stage_rank for h in hits) == [1, 2, 3]


def test_score_threshold_drops_hits_before_the_top_k_cut() -> None:
    r = TwoStageRetriever(HashingEncoder(), engine=LengthScorer())
    r.index(["a", "bbb", "cc", "dddd"])
    hits = r.retrieve("a b c d", top_k=3, candidates=4, score_threshold=2.5)
    assert [h.text for h in hits] == ["dddd", "bbb"]


def test_a_custom_scorer_does_the_reranking() -> None:
    scorer = LengthScorer()
    r = TwoStageRetriever(HashingEncoder(), engine=scorer)
    r.index(["short", "a much longer text", "medium text"])
    assert [h.text for h in r.retrieve("text", top_k=3, candidates=3)] == [
        "a much longer text",
        "medium text",
        "short",
    ]
    assert scorer.calls == 1


# ---------------------------------------------------------------------- validation


def test_candidates_below_top_k_is_a_clear_error() -> None:
    r = TwoStageRetriever(HashingEncoder(), engine=LengthScorer())
    r.index(["a"])
    with pytest.raises(ValueError, match=r"candidates=5 is smaller than top_k=10"):
        r.retrieve("q", top_k=10, candidates=5)
    with pytest.raises(ValueError, match="candidates=5 is smaller"):
        asyncio.run(r.aretrieve("q", top_k=10, candidates=5))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"query": ""}, ValueError, "query is empty"),
        ({"query": 3}, TypeError, "query must be a str"),
        ({"top_k": 0}, ValueError, "top_k must be >= 1"),
        ({"top_k": "3"}, TypeError, "top_k must be a positive int"),
        ({"candidates": 0}, ValueError, "candidates must be >= 1"),
    ],
)
def test_bad_retrieve_arguments_are_rejected(kwargs, error, match) -> None:
    r = TwoStageRetriever(HashingEncoder(), engine=LengthScorer())
    r.index(["a"])
    call = {"query": "q", "top_k": 1, "candidates": 1, **kwargs}
    with pytest.raises(error, match=match):
        r.retrieve(call.pop("query"), **call)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"texts": "one string"}, TypeError, "single string"),
        ({"metadatas": [{}]}, ValueError, "got 1 metadatas for 2 texts"),
        ({"metadatas": [{}, "x"]}, TypeError, r"metadatas\[1\] must be a dict"),
        ({"ids": ["a"]}, ValueError, "got 1 ids for 2 texts"),
        ({"ids": ["a", 2]}, TypeError, r"ids\[1\] must be a str"),
        ({"ids": ["a", ""]}, ValueError, r"ids\[1\] is empty"),
    ],
)
def test_bad_index_arguments_are_rejected(kwargs, error, match) -> None:
    r = TwoStageRetriever(HashingEncoder(), engine=LengthScorer())
    call = {"texts": ["a", "b"], **kwargs}
    with pytest.raises(error, match=match):
        r.index(call.pop("texts"), **call)
    assert len(r) == 0


def test_metadata_is_copied_in_and_out() -> None:
    r = TwoStageRetriever(HashingEncoder(), engine=LengthScorer())
    meta = {"tags": ["x"]}
    r.index(["a text"], metadatas=[meta], ids=["d"])
    meta["tags"].append("changed by the caller")
    hit = r.retrieve("a text", top_k=1, candidates=1)[0]
    assert hit.metadata == {"tags": ["x"]}
    hit.metadata["tags"].append("changed by a reader")
    assert r.retrieve("a text", top_k=1, candidates=1)[0].metadata == {"tags": ["x"]}


def test_index_shows_a_progress_bar_when_asked(capsys) -> None:
    r = TwoStageRetriever(HashingEncoder(), engine=LengthScorer(), show_progress=True)
    r.index([f"text number {i}" for i in range(600)])
    assert "indexing" in capsys.readouterr().err


# ---------------------------------------------------------------------- the shared engine


def test_the_retriever_reranks_with_the_shared_process_engine(
    encoder, bert_path, bert_engine
) -> None:
    assert TwoStageRetriever(encoder, reranker=bert_path, device="cpu").engine is bert_engine
    options = {"device": "cpu"}
    r = TwoStageRetriever(encoder, reranker=bert_path, reranker_options=options)
    assert r.engine is bert_engine
    assert r.engine is get_engine(bert_path, device="cpu")


def test_engine_settings_are_validated_when_the_retriever_is_built(bert_path) -> None:
    with pytest.raises(TypeError, match="unknown engine option"):
        TwoStageRetriever(HashingEncoder(), reranker=bert_path, batch_sise=8)
    with pytest.raises(TypeError, match="not both"):
        TwoStageRetriever(HashingEncoder(), reranker=bert_path, engine=LengthScorer())
    with pytest.raises(TypeError, match="given both"):
        TwoStageRetriever(
            HashingEncoder(), reranker=bert_path, reranker_options={"device": "cpu"}, device="cpu"
        )
    with pytest.raises(TypeError, match="bi_encoder must be"):
        TwoStageRetriever(42, engine=LengthScorer())  # type: ignore[arg-type]


def test_a_hub_id_and_a_folder_work_as_in_the_readme(minilm_path, bert_path) -> None:
    r = TwoStageRetriever(bi_encoder=minilm_path, reranker=bert_path, device="cpu")
    r.index(["RAG combines retrieval with generation.", "Paris is in France.", "Cats purr."])
    hits = r.retrieve("What is RAG?", top_k=2, candidates=3)
    assert len(hits) == 2
    assert hits[0].score >= hits[1].score
    assert {h.first_stage_rank for h in hits} <= {1, 2, 3}


# ---------------------------------------------------------------------- async


def test_aretrieve_matches_retrieve_and_embeds_off_the_event_loop(
    encoder, bert_engine, passages
) -> None:
    r = indexed(InMemoryStore(), encoder, bert_engine, passages)
    query = "What is retrieval-augmented generation?"
    expected = r.retrieve(query, top_k=5, candidates=15)

    async def main() -> tuple[list[Hit], int]:
        loop_thread = threading.get_ident()
        encoder.query_threads.clear()
        hits = await r.aretrieve(query, top_k=5, candidates=15)
        return hits, loop_thread

    hits, loop_thread = asyncio.run(main())
    assert [(h.id, h.score, h.first_stage_rank) for h in hits] == [
        (h.id, h.score, h.first_stage_rank) for h in expected
    ]
    assert encoder.query_threads and loop_thread not in encoder.query_threads


# ---------------------------------------------------------------------- stores


def test_in_memory_store_survives_a_save_and_load_round_trip(
    tmp_path, encoder, bert_engine, passages
) -> None:
    r = indexed(InMemoryStore(), encoder, bert_engine, passages)
    folder = r.store.save(tmp_path / "store")  # type: ignore[attr-defined]
    loaded = InMemoryStore.load(folder)
    assert len(loaded) == len(passages)
    assert loaded.encoder == encoder.name
    again = TwoStageRetriever(encoder, engine=bert_engine, store=loaded)
    query = "How do bees communicate?"
    before = r.retrieve(query, top_k=5, candidates=20)
    after = again.retrieve(query, top_k=5, candidates=20)
    assert after == before
    # The loaded store keeps taking writes.
    again.index(["Honeybees dance to share where flowers are."], ids=["new"])
    assert len(loaded) == len(passages) + 1


def test_in_memory_store_save_and_load_report_problems(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no saved store"):
        InMemoryStore.load(tmp_path / "nothing-here")
    store = InMemoryStore()
    store.upsert(["a"], np.ones((1, 3)), ["text"], [{"when": object()}])
    with pytest.raises(TypeError, match="cannot be saved as JSON"):
        store.save(tmp_path / "bad")


def test_in_memory_search_is_exact_and_rejects_other_dimensions() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    store = InMemoryStore()
    for start in range(0, 500, 37):  # many small batches exercise the growing buffer
        ids = [str(i) for i in range(start, min(start + 37, 500))]
        store.upsert(ids, vectors[start : start + 37], ids, [{} for _ in ids])
    query = rng.normal(size=16)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = np.argsort(-(unit @ (query / np.linalg.norm(query))), kind="stable")[:25]
    assert [m.id for m in store.search(query, 25)] == [str(i) for i in expected]
    with pytest.raises(ValueError, match="holds 16-dimensional vectors"):
        store.upsert(["z"], np.ones((1, 8)), ["z"], [{}])
    with pytest.raises(ValueError, match="query vector has 8 dimensions"):
        store.search(np.ones(8), 3)


def test_qdrant_local_store_persists_across_clients(
    tmp_path, encoder, bert_engine, passages
) -> None:
    path = str(tmp_path / "qdrant")
    with QdrantStore(collection="docs", path=path) as first:
        before = indexed(first, encoder, bert_engine, passages).retrieve("What is inflation?")
    with QdrantStore(collection="docs", path=path) as second:
        assert len(second) == len(passages)
        after = TwoStageRetriever(encoder, engine=bert_engine, store=second).retrieve(
            "What is inflation?"
        )
    assert [(h.id, h.metadata) for h in after] == [(h.id, h.metadata) for h in before]
    assert [h.score for h in after] == pytest.approx([h.score for h in before])


def test_qdrant_points_use_uuid5_ids_and_keep_the_callers_id_in_the_payload() -> None:
    with QdrantStore(collection="ids", path=":memory:") as store:
        r = TwoStageRetriever(HashingEncoder(), engine=LengthScorer(), store=store)
        r.index(["a text"], metadatas=[{"source": "wiki", "n": 1}], ids=["doc-1"])
        (point,) = store.client.retrieve("ids", [point_id("doc-1")], with_payload=True)
        assert str(point.id) == point_id("doc-1")
        assert point.payload == {
            "id": "doc-1",
            "text": "a text",
            "metadata": {"source": "wiki", "n": 1},
        }
        hit = r.retrieve("a text", top_k=1, candidates=1)[0]
        assert (hit.id, hit.metadata) == ("doc-1", {"source": "wiki", "n": 1})


def test_qdrant_store_needs_exactly_one_location() -> None:
    with pytest.raises(ValueError, match="exactly one of path=, url= or client="):
        QdrantStore(collection="x")
    with pytest.raises(ValueError, match="got path, url"):
        QdrantStore(collection="x", path=":memory:", url="http://localhost:6333")


def test_qdrant_store_rejects_vectors_of_another_dimension() -> None:
    with QdrantStore(collection="dims", path=":memory:") as store:
        store.upsert(["a"], np.ones((1, 4)), ["a"], [{}])
        with pytest.raises(ValueError, match="holds 4-dimensional vectors, got 8"):
            QdrantStore(collection="dims", client=store.client).upsert(
                ["b"], np.ones((1, 8)), ["b"], [{}]
            )


def test_qdrant_store_accepts_an_existing_client_and_leaves_it_open() -> None:
    from qdrant_client import QdrantClient

    client = QdrantClient(location=":memory:")
    store = QdrantStore(collection="shared", client=client)
    store.upsert(["a"], np.ones((1, 4)), ["a"], [{}])
    store.close()
    assert client.count("shared").count == 1
    client.close()
