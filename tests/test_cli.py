"""The `rerank-plugins` command line, through its real entry points (and in process for detail)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_plugins.cli import COMMANDS, main
from rerank_plugins.data import demo_queries

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
    assert (
        main(["rerank", "-m", folder, "--device", "cpu", "-q", "q", "--docs", str(docs_file)]) == 0
    )
    captured = capsys.readouterr()
    assert "UNTRAINED classification head" in captured.err
    assert "NOT relevance" in captured.err
    assert len(captured.out.strip().splitlines()) == 2 + len(DOCS)  # the table stays clean


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
        "could not load cross-encoder 'rerank-plugins-tests/no-such-model'",
    )


def test_rerank_with_a_missing_model_folder_fails_with_one_line(
    tmp_path: Path, docs_file: Path, capsys
) -> None:
    missing = str(tmp_path / "no-such-folder")
    assert main(["rerank", "-m", missing, "-q", "q", "--docs", str(docs_file)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: model folder") and "does not exist" in err[0]


# ---------------------------------------------------------------------- demo


def test_demo_runs_offline(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`make demo` runs `rerank-plugins demo` with HF_HUB_OFFLINE=1: this is that command."""
    result = cli("demo", env={"RERANK_PLUGINS_CACHE": str(shared_cache(tmp_path_factory))})
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
