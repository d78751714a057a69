"""`rerank-plugins finetune`: from a user's folder to a reranker every loader loads, measured.

Every fine-tune here is real: a tiny 2-layer BERT trained by sentence-transformers'
`CrossEncoderTrainer`, hard negatives mined by the real all-MiniLM-L6-v2 bi-encoder, and the
result loaded back by the engine, both adapters and `sentence_transformers.CrossEncoder`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from rerank_plugins.cli import main
from rerank_plugins.data import demo_judgments, load_corpus
from rerank_plugins.finetune import (
    SYSTEMS,
    FinetuneReport,
    FinetuneSettings,
    TrainingPair,
    finetune,
    is_finetuned,
    load_training_data,
    mine_hard_negatives,
    plan_finetune,
)
from rerank_plugins.finetune.data import CorpusPassage, self_supervised_pairs
from rerank_plugins.finetune.negatives import ExactIndex
from tests._models import mark_as_fallback

# Training, or the bi-encoder embedding a corpus: the full lane (`make test`), not `test-fast`.
slow = pytest.mark.slow

BEIR_SAMPLE = Path(__file__).parent / "data" / "beir_sample"
# One epoch of a tiny model: seconds, and every step of the method still runs.
QUICK = FinetuneSettings(epochs=1, negatives=4, depth=10, batch_size=4, candidates=20)
QUICK_FLAGS = ["--epochs", "1", "--negatives", "4", "--depth", "10", "--candidates", "20"]


@pytest.fixture(scope="module")
def bi_encoder() -> str:
    from rerank_plugins.models.offline import bi_encoder_path

    return bi_encoder_path()


def write_corpus(folder: Path, n: int = 40, *, untitled_every: int = 2) -> Path:
    """``n`` shipped passages as a corpus-only folder; every ``untitled_every``-th has no title."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, passage in enumerate(load_corpus()[:n]):
        row = {"_id": passage.id, "text": passage.text}
        if i % untitled_every:
            row["title"] = passage.metadata["title"]
        lines.append(json.dumps(row))
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory, bert_path: str, bi_encoder: str):
    """One fine-tune of a corpus-only folder through the command line, shared by the checks."""
    root = tmp_path_factory.mktemp("finetune-corpus")
    data = write_corpus(root / "my-corpus")
    output = root / "my-reranker"
    argv = ["finetune", str(data), "--base", bert_path, "--bi-encoder", bi_encoder]
    argv += ["--output", str(output), "--device", "cpu", "--quiet", *QUICK_FLAGS]
    return argv, output


# ------------------------------------------------------------------ data: what is trained on


def test_a_title_is_the_query_for_its_passage_and_a_held_out_sentence_otherwise() -> None:
    corpus, pairs = self_supervised_pairs(
        [
            CorpusPassage("a", "Paris is the capital of France.", "Paris"),
            CorpusPassage("b", "Rain falls from clouds. Clouds are made of tiny droplets."),
            CorpusPassage("c", "One sentence only, so no query."),
        ],
        seed=3,
    )
    assert pairs[0] == ("Paris", "a")
    assert corpus["a"] == "Paris is the capital of France."
    query, doc = pairs[1]
    assert doc == "b"
    assert query in {"Rain falls from clouds.", "Clouds are made of tiny droplets."}
    assert query not in corpus["b"], "the query sentence is held out of its passage"
    assert len(pairs) == 2, "a passage with one sentence and no title yields no query"
    assert set(corpus) == {"a", "b", "c"}, "it stays in the corpus, as a candidate"


def test_held_out_queries_are_never_trained_on(tmp_path: Path) -> None:
    data = load_training_data(write_corpus(tmp_path / "c"), held_out=0.25)
    assert data.source == "corpus"
    assert data.train_queries and data.eval_queries
    assert not set(data.train_queries) & set(data.eval_queries)
    assert not set(data.train_queries.values()) & set(data.eval_queries.values())
    assert "self-supervised" in data.method
    # The same inputs split the same way; another seed splits differently.
    assert load_training_data(tmp_path / "c", held_out=0.25) == data
    other = load_training_data(tmp_path / "c", held_out=0.25, seed=7)
    assert set(other.eval_queries.values()) != set(data.eval_queries.values())


def test_judged_questions_replace_the_split_and_their_wording_is_never_trained_on() -> None:
    judged = demo_judgments()
    records = [
        *load_corpus(),
        {"id": "trap", "title": judged[0].query, "text": "A passage titled like a test question."},
    ]
    data = load_training_data(records, held_out_queries=judged)
    assert set(data.eval_queries) == {j.id for j in judged}
    assert judged[0].query not in data.train_queries.values()
    assert len(data.train_queries) == len(load_corpus())


def test_judged_questions_over_a_corpus_alone_are_asked_of_the_whole_passages() -> None:
    """Training holds a sentence out of an untitled passage; the evaluation does not."""
    text = "Rain falls from clouds. Clouds are made of tiny droplets. Droplets grow by merging."
    records = [{"id": "rain", "text": text}, *load_corpus()[:10]]

    class Question:
        id, query, relevant = "q", "What are clouds made of?", {"rain": 1}

    data = load_training_data(records, held_out_queries=[Question()])
    assert data.corpus["rain"] != text, "trained on the passage without its query sentence"
    assert data.evaluation_corpus["rain"] == text
    plain = load_training_data(records, held_out=0.5)
    assert plain.evaluation_corpus is plain.corpus, "generated held-out queries: as trained"


def write_beir(folder: Path, train: dict[str, str], test: dict[str, str]) -> Path:
    """A BEIR folder over the sample's corpus: query id -> relevant passage, per split."""
    folder.mkdir(parents=True)
    shutil.copy(BEIR_SAMPLE / "corpus.jsonl", folder / "corpus.jsonl")
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
    queries = {q: f"question about {corpus[i]['text'][:40]}" for i, q in enumerate("abcdefgh")}
    with (folder / "queries.jsonl").open("w") as f:
        for q, text in queries.items():
            f.write(json.dumps({"id": q, "text": text}) + "\n")  # "id" as well as "_id"
    (folder / "qrels").mkdir()
    for split, judged in (("train", train), ("test", test)):
        rows = [f"{q}\t{doc}\t1" for q, doc in judged.items()]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def test_a_beir_folder_trains_on_train_and_evaluates_on_test_queries_it_never_saw(
    tmp_path: Path,
) -> None:
    train = {"a": "rag-0", "b": "rag-1", "c": "rag-2", "d": "rag-0"}
    test = {"d": "rag-0", "e": "rag-1", "f": "rag-2"}  # "d" is in both
    data = load_training_data(write_beir(tmp_path / "b", train, test))
    assert set(data.train_queries) == {"a", "b", "c", "d"}
    assert set(data.eval_queries) == {"e", "f"}, "a test query also trained on is left out"
    assert "qrels/train.tsv" in data.method and "qrels/test.tsv" in data.method

    # A test split that only repeats training queries: the training queries are split.
    repeated = load_training_data(write_beir(tmp_path / "r", train, {"a": "rag-0"}), held_out=0.5)
    assert len(repeated.eval_queries) == 2
    assert not set(repeated.eval_queries) & set(repeated.train_queries)


def test_a_beir_folder_whose_qrels_name_no_known_query_is_refused(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "b", {"zz": "rag-0"}, {"yy": "rag-1"})
    with pytest.raises(ValueError, match=r"judges no query of queries\.jsonl"):
        load_training_data(folder)


def test_a_beir_folder_trains_on_its_judged_queries_and_holds_some_out() -> None:
    data = load_training_data(BEIR_SAMPLE, held_out=0.3)
    assert data.source == "beir"
    assert not set(data.train_queries) & set(data.eval_queries)
    judged = {line.split("\t")[0] for line in (BEIR_SAMPLE / "qrels" / "test.tsv").open()}
    judged.discard("query-id")
    assert set(data.train_queries) | set(data.eval_queries) == judged, "unjudged ones left out"
    assert data.eval_qrels and all(data.eval_qrels[q] for q in data.eval_queries)


@slow
def test_hard_negatives_are_the_bi_encoders_top_passages_that_are_not_answers(
    bi_encoder: str,
) -> None:
    from rerank_plugins.retrieval import BiEncoder

    corpus = {p.id: p.text for p in load_corpus()[:60]}
    first = next(iter(corpus))
    corpus["copy"] = corpus[first]  # the same text under another id is an answer too
    index = ExactIndex(BiEncoder(bi_encoder, device="cpu"), corpus)
    query = load_corpus()[0].metadata["title"]
    rows = mine_hard_negatives(
        index, corpus, {"q": query}, {"q": {first: 1}}, negatives=5, depth=20
    )
    positives = [r for r in rows if r.label == 1]
    negatives = [r for r in rows if r.label == 0]
    assert [r.passage_id for r in positives] == [first]
    assert len(negatives) == 5
    assert first not in {r.passage_id for r in negatives}
    assert "copy" not in {r.passage_id for r in negatives}
    ranked = [d for d, _ in index.search(query, 22) if d not in {first, "copy"}]
    assert [r.passage_id for r in negatives] == ranked[:5], "the highest-ranked non-answers"
    assert all(isinstance(r, TrainingPair) for r in rows)


@slow
def test_denoising_drops_the_candidates_the_base_reranker_scores_as_high_as_the_answer(
    bi_encoder: str, bert_engine
) -> None:
    from rerank_plugins.retrieval import BiEncoder

    corpus = {p.id: p.text for p in load_corpus()[:60]}
    answer = next(iter(corpus))
    query = load_corpus()[0].metadata["title"]
    index = ExactIndex(BiEncoder(bi_encoder, device="cpu"), corpus)
    args = (index, corpus, {"q": query}, {"q": {answer: 1}})
    plain = mine_hard_negatives(*args, negatives=30, depth=30)
    kept = mine_hard_negatives(*args, negatives=30, depth=30, denoiser=bert_engine)
    bar = bert_engine.score(query, [corpus[answer]])[0]
    candidates = [r.passage_id for r in plain if r.label == 0]
    texts = [corpus[d] for d in candidates]
    scores = dict(zip(candidates, bert_engine.score(query, texts), strict=True))
    expected = [d for d in candidates if scores[d] < bar]
    assert 0 < len(expected) < len(candidates), "the tiny reranker vetoes some, not all"
    assert [r.passage_id for r in kept if r.label == 0] == expected


# ------------------------------------------------------------------ the command, end to end


@slow
def test_finetune_on_a_corpus_only_folder_prints_the_three_systems_and_writes_a_model(
    corpus_run, capsys
) -> None:
    argv, output = corpus_run
    assert main(argv) == 0
    printed = capsys.readouterr()
    for system in SYSTEMS:
        assert system in printed.out
    assert "nDCG@10" in printed.out and "MRR@10" in printed.out and "Recall@10" in printed.out
    assert "self-supervised" in printed.err
    assert is_finetuned(output)
    report = FinetuneReport.load(output)
    assert set(report.metrics) == set(SYSTEMS)
    assert report.held_out_queries > 0 and report.train_queries > 0
    assert report.steps > 0 and report.train_pairs > report.train_queries
    assert (output / "finetune_metrics.png").stat().st_size > 1000
    card = (output / "README.md").read_text(encoding="utf-8")
    for fact in (report.base, report.bi_encoder, "self-supervised", "nDCG@10", "Limits"):
        assert fact in card
    assert f"{report.metric('fine-tuned', 'ndcg@10'):.4f}" in card


@slow
def test_the_written_folder_loads_in_the_engine_both_adapters_and_sentence_transformers(
    corpus_run,
) -> None:
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from sentence_transformers import CrossEncoder

    from rerank_plugins import get_engine
    from rerank_plugins.langchain import RerankCompressor
    from rerank_plugins.llama_index import RerankPostprocessor

    argv, output = corpus_run
    if not is_finetuned(output):
        assert main(argv) == 0
    query = "why is the sky blue"
    docs = [p.text for p in load_corpus()[:6]]
    engine = get_engine(str(output), device="cpu")
    assert engine.info.warnings == (), "a fine-tuned head is trained: no untrained warning"
    base = get_engine(FinetuneReport.load(output).base, device="cpu")
    assert engine.info.max_length == base.info.max_length, "trained on 128 tokens, reads as many"
    ours = engine.score(query, docs)
    theirs = CrossEncoder(str(output), device="cpu").predict([(query, d) for d in docs])
    assert ours == pytest.approx([float(s) for s in theirs], abs=1e-4)

    compressed = RerankCompressor(model=str(output), top_n=3, device="cpu").compress_documents(
        [Document(page_content=d) for d in docs], query
    )
    best = max(range(len(docs)), key=ours.__getitem__)
    assert compressed[0].page_content == docs[best]
    nodes = RerankPostprocessor(model=str(output), top_n=3, device="cpu").postprocess_nodes(
        [NodeWithScore(node=TextNode(text=d), score=0.0) for d in docs],
        query_bundle=QueryBundle(query),
    )
    assert nodes[0].node.get_content() == docs[best]

    moved = output.with_name("moved")
    shutil.copytree(output, moved)
    report = FinetuneReport.load(moved)
    assert report.output == str(moved), "a moved folder reports where it is now"
    assert report.plot == str(moved / "finetune_metrics.png")


@slow
def test_running_the_same_command_again_reuses_the_folder_without_training(
    corpus_run, capsys
) -> None:
    argv, output = corpus_run
    if not is_finetuned(output):
        assert main(argv) == 0
    weights = (output / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "already holds this fine-tune" in printed.err
    assert "fine-tuned" in printed.out
    assert (output / "model.safetensors").stat().st_mtime_ns == weights


@slow
def test_finetune_on_a_beir_folder(tmp_path: Path, bert_path: str, bi_encoder: str, capsys) -> None:
    data = tmp_path / "scifact"
    shutil.copytree(BEIR_SAMPLE, data)
    argv = ["finetune", str(data), "--base", bert_path, "--bi-encoder", bi_encoder]
    argv += ["-o", str(tmp_path / "out"), "--device", "cpu", "-q", "--held-out", "0.3"]
    assert main([*argv, *QUICK_FLAGS]) == 0
    printed = capsys.readouterr()
    assert "qrels/test.tsv" in printed.err
    report = FinetuneReport.load(tmp_path / "out")
    assert report.held_out_queries == 2  # 30% of the sample's 8 judged queries, rounded
    assert set(report.metrics) == set(SYSTEMS)


@slow
def test_the_untrained_fallback_comes_out_with_a_trained_head_and_no_fallback_mark(
    tmp_path: Path, bert_path: str, bi_encoder: str, caplog
) -> None:
    from rerank_plugins import get_engine

    base = mark_as_fallback(bert_path, tmp_path / "fallback")
    report = finetune(
        load_corpus()[:40], base=str(base), bi_encoder=bi_encoder, output=tmp_path / "tuned",
        settings=QUICK, device="cpu", progress=False,
    )  # fmt: skip
    assert report.base_untrained
    untrained_warnings = [r for r in caplog.records if "UNTRAINED" in r.getMessage()]
    assert not untrained_warnings, "evaluating the base says it in the report, not the log"
    saved = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert "rerank_plugins_fallback" not in saved
    assert get_engine(str(tmp_path / "tuned"), device="cpu").info.warnings == ()
    assert "offline fallback" in (tmp_path / "tuned" / "README.md").read_text()


@slow
def test_an_interrupted_fine_tune_resumes_from_its_last_checkpoint(
    tmp_path: Path, bert_path: str, bi_encoder: str
) -> None:
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step >= self.step:
                raise KeyboardInterrupt

    corpus = load_corpus()[:40]
    output = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        finetune(
            corpus, base=bert_path, bi_encoder=bi_encoder, output=output, settings=QUICK,
            device="cpu", progress=False, callbacks=[StopAfter(2)],
        )  # fmt: skip
    assert not output.exists(), "nothing appears at the output until it is complete"
    partial = tmp_path / "out.partial" / "checkpoints"
    assert list(partial.glob("checkpoint-*")), "the interrupted run kept its checkpoint"

    report = finetune(
        corpus, base=bert_path, bi_encoder=bi_encoder, output=output, settings=QUICK,
        device="cpu", progress=False,
    )  # fmt: skip
    assert report.resumed_from_step is not None and report.resumed_from_step >= 2
    assert report.steps > report.resumed_from_step
    assert not (tmp_path / "out.partial").exists(), "a finished run removes its checkpoints"


@slow
@pytest.mark.parametrize(
    "settings",
    [
        dataclasses.replace(QUICK, loss="bce"),
        dataclasses.replace(QUICK, distill=0.0),
        dataclasses.replace(QUICK, denoise=True, margin=0.01),
    ],
    ids=["bce", "no-distillation", "denoise-and-margin"],
)
def test_every_loss_and_negative_filter_trains_a_folder_that_loads(
    tmp_path: Path, bert_path: str, bi_encoder: str, settings: FinetuneSettings
) -> None:
    from rerank_plugins import get_engine

    report = finetune(
        load_corpus()[:40], base=bert_path, bi_encoder=bi_encoder, output=tmp_path / "out",
        settings=settings, device="cpu", progress=False,
    )  # fmt: skip
    assert report.steps > 0 and report.settings["loss"] == settings.loss
    card = (tmp_path / "out" / "README.md").read_text()
    assert ("binary cross-entropy" in card) is (settings.loss == "bce")
    assert ("distillation" in card) is (settings.loss == "listwise" and settings.distill > 0)
    assert ("base reranker scores as high" in card) is settings.denoise
    scores = get_engine(str(tmp_path / "out"), device="cpu").score("sky", ["blue", "red"])
    assert len(scores) == 2


@slow
def test_with_nothing_held_out_it_trains_and_says_nothing_was_evaluated(
    tmp_path: Path, bert_path: str, bi_encoder: str, capsys
) -> None:
    argv = ["finetune", str(write_corpus(tmp_path / "c")), "--base", bert_path]
    argv += ["--bi-encoder", bi_encoder, "-o", str(tmp_path / "out"), "--held-out", "0"]
    assert main([*argv, "--device", "cpu", "-q", *QUICK_FLAGS]) == 0
    assert "no held-out queries, so nothing was evaluated" in capsys.readouterr().out
    assert FinetuneReport.load(tmp_path / "out").metrics == {}
    assert "Not evaluated" in (tmp_path / "out" / "README.md").read_text()
    assert not (tmp_path / "out" / "finetune_metrics.png").exists()


@slow
def test_another_fine_tune_into_a_used_output_needs_overwrite(
    tmp_path: Path, bert_path: str, bi_encoder: str, capsys
) -> None:
    argv = ["finetune", str(write_corpus(tmp_path / "c")), "--base", bert_path]
    argv += ["--bi-encoder", bi_encoder, "-o", str(tmp_path / "out"), "--device", "cpu", "-q"]
    assert main([*argv, *QUICK_FLAGS]) == 0
    first = FinetuneReport.load(tmp_path / "out").fingerprint
    capsys.readouterr()
    assert exit_code([*argv, *QUICK_FLAGS, "--seed", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert FinetuneReport.load(tmp_path / "out").fingerprint == first, "refused: left as it was"
    assert main([*argv, *QUICK_FLAGS, "--seed", "5", "--overwrite"]) == 0
    assert FinetuneReport.load(tmp_path / "out").fingerprint != first


@slow
def test_two_runs_of_one_fine_tune_at_once_train_it_once(
    tmp_path: Path, bert_path: str, bi_encoder: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def run() -> FinetuneReport:
        return finetune(
            load_corpus()[:40], base=bert_path, bi_encoder=bi_encoder, output=tmp_path / "out",
            settings=QUICK, device="cpu", progress=False,
        )  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: run(), range(2)))
    assert sorted(r.reused for r in reports) == [False, True], "the second waited and reused"
    assert {r.fingerprint for r in reports} == {reports[0].fingerprint}
    assert is_finetuned(tmp_path / "out") and not (tmp_path / "out.partial").exists()


# ------------------------------------------------------------------ bad input: one line, exit 2


def exit_code(argv: list[str]) -> int:
    """`main`'s exit code, whether argparse (SystemExit) or the command refused the input."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("data", "extra", "match"),
    [
        ("missing", [], r"does not exist"),
        ("empty", [], r"has no corpus\.jsonl"),
        ("corpus", ["--held-out", "2"], r"--held-out: must be between 0 and 0\.9"),
        ("corpus", ["--epochs", "0"], r"--epochs: must be above 0"),
        ("corpus", ["--loss", "hinge"], r"--loss: invalid choice"),
        ("taken", [], r"already holds other files"),
    ],
)
def test_bad_input_is_refused_in_one_line_with_exit_code_2(
    tmp_path: Path, bert_path: str, bi_encoder: str, data: str, extra: list[str], match: str,
    capsys,
) -> None:  # fmt: skip
    write_corpus(tmp_path / "corpus", n=8)
    (tmp_path / "empty").mkdir()
    output = tmp_path / "out"
    if data == "taken":
        output.mkdir()
        (output / "notes.txt").write_text("mine")
        data = "corpus"
    argv = ["finetune", str(tmp_path / data), "--base", bert_path, "--bi-encoder", bi_encoder]
    assert exit_code([*argv, "-o", str(output), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "error: " in lines[-1]
    assert re.search(match, lines[-1]), lines[-1]
    if (output / "notes.txt").exists():
        assert (output / "notes.txt").read_text() == "mine", "a refused output is left as it was"


def test_a_base_with_several_outputs_is_refused(tmp_path: Path, bert_path: str) -> None:
    base = tmp_path / "classifier"
    shutil.copytree(bert_path, base)
    config = json.loads((base / "config.json").read_text())
    config["id2label"] = {"0": "no", "1": "yes", "2": "maybe"}
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="3 outputs"):
        plan_finetune(write_corpus(tmp_path / "c", n=8), base=str(base), bi_encoder=str(base))


# ------------------------------------------------------------------ docs/finetune.md, as written

DOCS = Path(__file__).resolve().parents[1] / "docs" / "finetune.md"


def doc_commands() -> list[str]:
    """Every command in the page's ```bash blocks, continuation lines joined."""
    blocks = re.findall(r"^```bash\n(.*?)^```", DOCS.read_text(encoding="utf-8"), re.S | re.M)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.split(" #")[0].strip() for line in text.splitlines() if line.strip()]


@slow
def test_every_command_of_the_finetune_walk_through_runs(
    tmp_path: Path, bert_path: str, bi_encoder: str, monkeypatch, capsys
) -> None:
    """The page's commands, in order, with tiny models for the hub ids and small data."""
    import shlex

    write_corpus(tmp_path / "my-corpus")
    shutil.copytree(BEIR_SAMPLE, tmp_path / "scifact")
    (tmp_path / "passages.txt").write_text(
        "\n".join(p.text for p in load_corpus()[:5]) + "\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    swap = {
        "cross-encoder/ms-marco-MiniLM-L-6-v2": bert_path,
        "sentence-transformers/all-MiniLM-L6-v2": bi_encoder,
    }
    commands = doc_commands()
    assert [c.split()[1] for c in commands] == [
        "finetune", "finetune", "rerank", "eval", "finetune"
    ]  # fmt: skip
    for command in commands:
        for hub_id, local in swap.items():
            command = command.replace(hub_id, local)
        argv = shlex.split(command)
        assert argv[0] == "rerank-plugins"
        if argv[1] == "finetune" and "--help" not in argv:
            argv += ["--device", "cpu", "--quiet"]
        code = exit_code(argv[1:])
        printed = capsys.readouterr()
        assert code == 0, f"{command}\n{printed.err}"
        if argv[1] == "finetune" and "--help" not in argv:
            output = Path(argv[argv.index("--output") + 1])
            assert is_finetuned(output) and "fine-tuned" in printed.out
        elif argv[1] == "rerank":
            assert "why is the sky blue?" in command and printed.out.count("\n") >= 5
        elif argv[1] == "eval":
            assert "ndcg@10" in printed.out
        else:
            assert "--negatives" in printed.out and "--held-out" in printed.out
