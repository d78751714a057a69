"""The `rerank-plugins` command line, through its real entry points (and in process for detail)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_plugins.cli import COMMANDS, main
from rerank_plugins.cli._common import plural
from rerank_plugins.data import demo_queries
from tests._models import mark_as_fallback

# Processes, servers, Ray, ONNX exports or the benchmark harness: the full lane only.
pytestmark = pytest.mark.slow

ENTRY_POINT = Path(sys.executable).parent / "rerank-plugins"
DOCS = [
    "rag combines retrieval and generation to answer a question",
    "the weather in paris is rain and cloud",
    "paris is the capital city of france on a river",
    "a cross encoder scores a query and a passage together",
]


def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per test session, so the fallback is built once (see test_fallback)."""
    return tmp_path_factory.getbasetemp() / "rerank-plugins-cache"


def cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, module: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (or ``python -m rerank_plugins``) in a subprocess."""
    command = [sys.executable, "-m", "rerank_plugins"] if module else [str(ENTRY_POINT)]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    full_env.update(env or {})
    return subprocess.run(
        [*command, *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, match: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert re.search(match, lines[0]), lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture()
def docs_file(tmp_path: Path) -> Path:
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------- entry points, help


def test_the_console_script_is_installed() -> None:
    assert ENTRY_POINT.exists(), "pip install -e . creates the rerank-plugins script"


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_command_has_help(command: str) -> None:
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: rerank-plugins")
    if not command:
        for name in COMMANDS:
            assert name in result.stdout


def test_python_dash_m_runs_the_same_command_line() -> None:
    result = cli("--version", module=True)
    assert result.returncode == 0
    assert result.stdout.strip() == "rerank-plugins 0.1.0"


def test_no_command_prints_help_and_exits_2() -> None:
    result = cli()
    assert result.returncode == 2
    assert "usage: rerank-plugins" in result.stdout


def test_an_unknown_option_is_a_one_line_usage_error() -> None:
    assert_one_line_error(cli("rerank", "--query", "q", "--frobnicate"), 2, "unrecognized")
    assert_one_line_error(cli("nonsense"), 2, "invalid choice")


# ---------------------------------------------------------------------- rerank


def test_rerank_prints_a_table_best_first(docs_file: Path, bert_path: str, bert_engine) -> None:
    result = cli(
        "rerank",
        "--model",
        bert_path,
        "--device",
        "cpu",
        "-q",
        "what is rag?",
        "--docs",
        str(docs_file),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "index", "score", "text"]
    rows = [line.split(maxsplit=3) for line in lines[2:]]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    expected = bert_engine.rerank("what is rag?", DOCS)
    assert [int(r[1]) for r in rows] == [x.index for x in expected]
    assert [r[3] for r in rows] == [x.text for x in expected]
    assert "reranked 4 documents" in result.stderr
    assert "backend=sentence-transformers" in result.stderr


def test_rerank_json_from_stdin_matches_the_engine(bert_path: str, bert_engine) -> None:
    result = cli(
        "rerank", "-m", bert_path, "--device", "cpu", "-q", "paris weather", "--json", "--top-n", "2",
        stdin="\n".join(DOCS) + "\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    expected = bert_engine.rerank("paris weather", DOCS, top_n=2)
    assert [set(item) for item in got] == [{"index", "score", "text"}] * 2
    assert [(g["index"], g["text"]) for g in got] == [(e.index, e.text) for e in expected]
    assert [g["score"] for g in got] == pytest.approx([e.score for e in expected], abs=1e-6)
    assert got[0]["score"] >= got[1]["score"]


def test_rerank_reads_jsonl_with_a_text_field(tmp_path: Path, bert_path: str, capsys) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(DOCS)), encoding="utf-8"
    )
    argv = ["rerank", "-m", bert_path, "--device", "cpu", "-q", "q", "--json", "--docs", str(path)]
    assert main([*argv, "--text-field", "body"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert sorted(g["index"] for g in got) == [0, 1, 2, 3]
    assert {g["text"] for g in got} == set(DOCS)


def test_rerank_dash_reads_stdin_and_min_score_cuts_before_top_n(
    bert_path: str, bert_engine, monkeypatch, capsys
) -> None:
    import io

    scores = bert_engine.score("q", DOCS)
    cut = sorted(scores)[1]  # keeps the best three
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n\n".join(DOCS)))
    argv = ["rerank", "-m", bert_path, "--device", "cpu", "-q", "q", "--docs", "-", "--json"]
    assert main([*argv, "--min-score", str(cut), "--top-n", "10"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got) == 3
    assert [g["index"] for g in got] == sorted(range(4), key=lambda i: -scores[i])[:3]


def test_rerank_with_the_fallback_model_says_its_head_is_untrained(
    tmp_path_factory, docs_file: Path, capsys
) -> None:
    from rerank_plugins.models.offline import build_minilm_cross_encoder

    folder = build_minilm_cross_encoder(shared_cache(tmp_path_factory) / "fallback-minilm-ce")
    # A fresh process: the command's own logging set-up decides what reaches stderr.
    done = cli("rerank", "-m", folder, "--device", "cpu", "-q", "q", "--docs", str(docs_file))
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "UNTRAINED" in line]
    assert len(notices) == 1, done.stderr  # said once, by the engine's load warning
    assert notices[0].startswith("WARNING rerank_plugins.model: ")
    assert "NOT relevance" in notices[0]
    assert len(done.stdout.strip().splitlines()) == 2 + len(DOCS)  # the table stays clean


@pytest.mark.parametrize(
    ("args", "stdin", "code", "match"),
    [
        (["--query", "q", "--docs", "no/such/file.txt"], None, 2, "does not exist"),
        (["--query", "   ", "--docs", "-"], "doc\n", 2, "--query is empty"),
        (["--query", "q", "--top-n", "0"], "doc\n", 2, "--top-n must be at least 1"),
        (["--query", "q"], "\n\n", 2, "no documents in stdin"),
        (["--query", "q"], '{"text": "a"}\n{"body": "b"}\n', 2, "line 2 has no string field"),
        (["--query", "q"], '{"text": "a"}\nnot json\n', 2, "line 2 is not valid JSON"),
        (["--docs", "x"], None, 2, "required: -q/--query"),
    ],
)
def test_rerank_rejects_bad_input_with_one_line(args, stdin, code, match) -> None:
    assert_one_line_error(cli("rerank", *args, stdin=stdin), code, match)


def test_rerank_with_an_unknown_model_fails_with_one_line(tmp_path: Path) -> None:
    assert_one_line_error(
        cli("rerank", "-m", "rerank-plugins-tests/no-such-model", "-q", "q", stdin="a doc\n"),
        1,
        "model 'rerank-plugins-tests/no-such-model' is neither a local folder nor in the "
        "Hugging Face cache",
    )


def test_rerank_with_a_missing_model_folder_fails_with_one_line(
    tmp_path: Path, docs_file: Path, capsys
) -> None:
    missing = str(tmp_path / "no-such-folder")
    assert main(["rerank", "-m", missing, "-q", "q", "--docs", str(docs_file)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: model folder") and "does not exist" in err[0]


def _not_a_model(kind: str, folder: Path) -> str:
    folder.mkdir()
    if kind == "a text file":
        (folder / "notes.txt").write_text("not a model\n")
    elif kind == "a config.json without model_type":
        (folder / "config.json").write_text('{"hidden_size": 8}')
    elif kind == "a config.json but no weights":
        (folder / "config.json").write_text('{"model_type": "bert"}')
    return str(folder)


@pytest.mark.parametrize(
    ("kind", "missing"),
    [
        ("nothing", "is empty"),
        ("a text file", "has no config.json"),
        ("a config.json without model_type", "has no model_type"),
        ("a config.json but no weights", "no weights"),
    ],
)
def test_a_folder_that_is_not_a_model_fails_with_a_short_line_naming_what_is_missing(
    kind: str, missing: str, tmp_path: Path, docs_file: Path, capsys
) -> None:
    folder = _not_a_model(kind, tmp_path / "not-a-model")
    assert main(["rerank", "-m", folder, "-q", "q", "--docs", str(docs_file)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) < 300, err
    assert repr(folder) in err[0] and missing in err[0]
    assert "pass a folder" in err[0] or "copy the weights" in err[0]


@pytest.mark.parametrize(
    "bad",
    [
        ["--backend", "bogus"],
        ["--device", "tpu"],
        ["--precision", "int8"],
        ["--max-length", "-1"],
        ["--max-length", "0"],
        ["--max-length", "many"],
        ["--backend", "onnx", "--decoder-protocol", "qwen3"],
        ["--long-documents", "sometimes"],
    ],
    ids=" ".join,
)
@pytest.mark.parametrize("command", ["rerank", "eval", "demo", "serve"])
def test_a_bad_engine_option_is_a_usage_error_before_any_model_loads(
    command: str, bad: list[str], tmp_path: Path, docs_file: Path, capsys
) -> None:
    # The model named does not exist: a bad option must be refused before it is looked for.
    model = str(tmp_path / "no-such-model")
    argv = {
        "rerank": ["rerank", "-m", model, "-q", "q", "--docs", str(docs_file)],
        "eval": ["eval", str(Path(__file__).parent / "data" / "beir_sample"), "-m", model],
        "demo": ["demo", "--reranker", model],
        "serve": ["serve", "-m", model],
    }[command]
    if command == "eval":
        argv += ["--run", str(Path(__file__).parent / "data" / "beir_sample" / "run.trec")]
    try:
        code = main([*argv, *bad])
    except SystemExit as exit_:  # argparse's own checks (types, choices)
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "does not exist" not in err[0]


def test_a_max_length_above_the_model_limit_is_a_usage_error(
    bert_path: str, docs_file: Path, capsys
) -> None:
    argv = ["rerank", "-m", bert_path, "--device", "cpu", "-q", "q", "--docs", str(docs_file)]
    assert main([*argv, "--max-length", "4096"]) == 2
    # The last line: in process, transformers (imported before the command set its progress-bar
    # switch) may draw its loading bar above it.
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: --max-length 4096 exceeds the model's limit of 512 tokens; pass <= 512."


def test_a_model_that_fails_to_load_stays_a_runtime_error(tmp_path: Path, docs_file: Path) -> None:
    folder = _not_a_model("nothing", tmp_path / "empty")
    assert main(["rerank", "-m", folder, "-q", "q", "--docs", str(docs_file)]) == 1


def test_rerank_counts_in_the_singular_for_one_document(
    bert_path: str, tmp_path: Path, capsys
) -> None:
    one = tmp_path / "one.txt"
    one.write_text("rag combines retrieval and generation\n", encoding="utf-8")
    assert main(["rerank", "-m", bert_path, "--device", "cpu", "-q", "q", "--docs", str(one)]) == 0
    assert "reranked 1 document in " in capsys.readouterr().err


# ---------------------------------------------------------------------- help and docs


def _subcommands() -> list[str]:
    from rerank_plugins.cli import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(subparsers.choices)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_no_help_text_shows_a_doubled_percent_sign(command: str, capsys) -> None:
    try:
        code = main([*([command] if command else []), "--help"])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 0
    out = capsys.readouterr().out
    assert "usage: rerank-plugins" in out
    assert "%%" not in out


def test_eval_help_names_the_share_of_relevant_documents_kept(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "80/90/95% of the relevant" in " ".join(capsys.readouterr().out.split())


def test_the_docs_command_table_lists_exactly_the_parser_subcommands() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `rerank-plugins (\S+)` \|", page, re.M)
    assert sorted(documented) == sorted(_subcommands())
    assert len(documented) == len(set(documented))


# ---------------------------------------------------------------------- demo


def test_demo_runs_offline(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`make demo` runs `rerank-plugins demo` with HF_HUB_OFFLINE=1: this is that command, but
    for the fine-tune of the fallback (minutes of MiniLM training; the next test runs that path
    with a tiny model)."""
    env = {"RERANK_PLUGINS_CACHE": str(shared_cache(tmp_path_factory))}
    result = cli("demo", "--no-finetune", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout

    # The fallback, and its untrained head, are announced plainly (in a wrapped box).
    words = " ".join(out.replace("!", " ").split())
    assert "using the fallback" in words
    assert "UNTRAINED classification head" in words
    assert "show the plumbing and the speed, NOT relevance" in words
    assert "reminder: the reranker's head is untrained" in out

    # The engine info line: backend, device, precision.
    assert re.search(r"engine\s+backend=sentence-transformers device=\S+ precision=\S+", out)
    assert "indexed 300 passages" in out

    # Per query: the query, stage timings, and both top-5 rankings side by side.
    queries = demo_queries()
    assert len(queries) >= 4
    for n, query in enumerate(queries, start=1):
        assert f"[{n}/{len(queries)}] {query}" in out
    timings = re.findall(
        r"embed [\d.]+ ms \| search [\d.]+ ms \| rerank 50 candidates \d+ ms \(\d+ pairs/s\)", out
    )
    assert len(timings) == len(queries)
    assert out.count("first stage (bi-encoder)") == len(queries)
    assert out.count("reranked (cross-encoder)") == len(queries)
    rows = re.findall(r"^\s+\d\s+[\d.]+\s+.+ \|\s+\d\s+[\d.]+\s+#\d+\s+.+$", out, re.M)
    assert len(rows) == 5 * len(queries)
    assert "summary: 4 queries" in out
    assert "Traceback" not in result.stderr


def test_the_offline_demo_fine_tunes_an_untrained_fallback_once_and_measures_it_held_out(
    tmp_path: Path, bert_path: str, monkeypatch, capsys
) -> None:
    """Offline, the demo's reranker is an untrained fallback: it is fine-tuned on the shipped
    corpus (here a tiny model marked as the fallback stands in for MiniLM), cached, measured on
    the judged demo questions, and the verdict follows the numbers."""
    from rerank_plugins.data import demo_judgments
    from rerank_plugins.finetune import FinetuneReport
    from rerank_plugins.models.offline import bi_encoder_path

    fallback = mark_as_fallback(bert_path, tmp_path / "fallback")
    monkeypatch.setenv("RERANK_PLUGINS_CACHE", str(tmp_path / "cache"))
    argv = ["demo", "--bi-encoder", bi_encoder_path(), "--reranker", str(fallback)]
    argv += ["--device", "cpu", "-q", "Why is the sky blue?", "--candidates", "10"]

    assert main(argv) == 0
    first = capsys.readouterr().out

    def built() -> list[Path]:  # the lock file beside them is hidden
        return [p for p in (tmp_path / "cache" / "finetuned").iterdir() if p.name[0] != "."]

    [tuned] = built()
    report = FinetuneReport.load(tuned)
    assert report.held_out_queries == len(demo_judgments())
    assert report.base_untrained
    assert "fine-tuning the fallback reranker on the shipped corpus, once" in first
    assert f"the demo reranks with {tuned}" in " ".join(first.split())
    assert "held-out check: 32 hand-judged questions" in first
    for system in ("first stage", "base reranker", "fine-tuned"):
        assert re.search(rf"^{system}\s+{report.metric(system, 'ndcg@10'):.4f}", first, re.M)
    beats = report.metric("fine-tuned", "ndcg@10") > report.metric("first stage", "ndcg@10")
    words = " ".join(first.replace("!", " ").split())
    assert ("beats the first stage" in words) is beats
    assert ("does NOT beat the first stage" in words) is not beats
    assert "UNTRAINED classification head" not in words, "the reranker in use is trained"

    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "fine-tuning the fallback" not in second, "the second run reuses the first's model"
    assert "fine-tuned on the shipped corpus (reused;" in second
    assert built() == [tuned]


def test_without_the_finetune_extra_the_demo_says_so_and_shows_the_untrained_head(
    tmp_path: Path, bert_path: str, monkeypatch, capsys
) -> None:
    import rerank_plugins.finetune.train as train
    from rerank_plugins.errors import MissingDependencyError
    from rerank_plugins.models.offline import bi_encoder_path

    def missing() -> None:
        msg = "fine-tuning needs datasets; install it with: pip install 'rerank-plugins[finetune]'"
        raise MissingDependencyError(msg)

    monkeypatch.setattr(train, "check_dependencies", missing)
    fallback = mark_as_fallback(bert_path, tmp_path / "fallback")
    monkeypatch.setenv("RERANK_PLUGINS_CACHE", str(tmp_path / "cache"))
    argv = ["demo", "--bi-encoder", bi_encoder_path(), "--reranker", str(fallback)]
    assert main([*argv, "--device", "cpu", "-q", "Why is the sky blue?"]) == 0
    words = " ".join(capsys.readouterr().out.replace("!", " ").split())
    assert "not fine-tuning the fallback reranker: fine-tuning needs datasets" in words
    assert "UNTRAINED classification head" in words, "the untrained head's notice is back"
    assert "reminder: the reranker's head is untrained" in words


def test_demo_counts_in_the_singular_for_one_query_and_one_candidate(
    bert_path: str, capsys
) -> None:
    from rerank_plugins.models.offline import bi_encoder_path

    argv = ["demo", "--bi-encoder", bi_encoder_path(), "--reranker", bert_path, "--device", "cpu"]
    assert main([*argv, "-q", "Why is the sky blue?", "--top-k", "1", "--candidates", "1"]) == 0
    out = capsys.readouterr().out
    assert "rerank 1 candidate " in out
    assert "summary: 1 query, " in out
    assert "in 0 of 1 query" in out  # one candidate: reranking cannot change the top 1
    wrong = re.findall(r"\b1 (?:queries|candidates|documents|passages|pairs|topics|passes)\b", out)
    assert not wrong, wrong


def test_demo_with_local_models_shows_no_fallback_notice(bert_path: str, capsys) -> None:
    from rerank_plugins.models.offline import bi_encoder_path

    argv = ["demo", "--bi-encoder", bi_encoder_path(), "--reranker", bert_path, "--device", "cpu"]
    assert main([*argv, "-q", "Why is the sky blue?", "--top-k", "3", "--candidates", "10"]) == 0
    out = capsys.readouterr().out
    assert "[1/1] Why is the sky blue?" in out
    assert "rerank 10 candidates" in out
    assert "UNTRAINED" not in out
    assert "fallback" not in out
    assert "Why the sky is blue" in out  # the bi-encoder's first hit


@pytest.mark.parametrize(
    ("args", "code", "match"),
    [
        (["--top-k", "5", "--candidates", "2"], 2, r"--candidates \(2\) must be at least --top-k"),
        (["--top-k", "0"], 2, "--top-k must be at least 1"),
        (["--query", ""], 2, "--query is empty"),
        (["--reranker", "./no/such/folder"], 1, "does not exist"),
    ],
)
def test_demo_rejects_bad_input_with_one_line(args, code, match) -> None:
    assert_one_line_error(cli("demo", *args), code, match)


def test_bench_points_at_the_repository_harness_in_one_line(capsys) -> None:
    assert main(["bench", "--quick", "--models", "minilm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "not part of the installed package" in err[0] and "make bench" in err[0]
    assert main(["bench", "--help"]) == 0
    assert "make bench" in capsys.readouterr().out


def test_counts_agree_with_their_nouns() -> None:
    assert plural(1, "query", "queries") == "1 query"
    assert plural(2, "query", "queries") == "2 queries"
    assert plural(0, "document") == "0 documents"
    assert plural(1, "forward pass", "forward passes") == "1 forward pass"
