"""Every user-facing error is one short line that says what was wrong and what to do instead.

Each case triggers one error the way a user would (the library call, or the command line through
`rerank_plugins.cli.main`) and returns its message; every message is held to the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from rerank_plugins import RerankEngine, get_engine
from rerank_plugins.cli import main
from rerank_plugins.retrieval import BiEncoder, TwoStageRetriever
from tests._fakes import FakeBackend

MAX_LENGTH = 400
# Two periods that are not part of an ellipsis, or a period after other closing punctuation.
DOUBLED = re.compile(r"(?<!\.)\.\.(?!\.)|\. \.|;\.|:\.|,\.")
# A remedy or the rule to follow: "pass ...", "check ...", "expected ...", "must be ...".
SAYS_WHAT_TO_DO = re.compile(
    r"\b(pass|use|check|expected|must|add|copy|unset|install|see|wrap|leave|give)\b", re.I
)


class Env:
    """What a case needs: a scratch folder, a documents file, and the tiny model on request."""

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.tmp = tmp_path
        self.request = request
        self.docs = tmp_path / "docs.txt"
        self.docs.write_text("rag combines retrieval and generation\nparis is in france\n")

    @property
    def bert_path(self) -> str:
        return str(self.request.getfixturevalue("bert_path"))

    def corrupt_model(self) -> str:
        """The tiny model's folder with unreadable weights: the loader itself fails on it."""
        import shutil

        folder = self.tmp / "corrupt"
        shutil.copytree(self.bert_path, folder)
        (folder / "model.safetensors").write_bytes(b"not a safetensors file.")
        return str(folder)

    def folder(self, **files: str) -> str:
        folder = self.tmp / "folder"
        folder.mkdir()
        for name, text in files.items():
            (folder / name.replace("_json", ".json").replace("_txt", ".txt")).write_text(text)
        return str(folder)


def raised(call: Callable[[], object]) -> str:
    with pytest.raises(Exception) as info:  # any type: the message is what is under test
        call()
    return str(info.value)


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    assert code not in (0, None)
    # Only the error lines: run in process, a model load may also draw transformers' progress
    # bar on stderr (the command line turns it off before transformers is first imported).
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1, errors
    return errors[0]


LIBRARY: dict[str, Callable[[Env], str]] = {
    "missing folder": lambda env: raised(lambda: get_engine(str(env.tmp / "no" / "model"))),
    "empty folder": lambda env: raised(lambda: get_engine(env.folder())),
    "folder with a text file": lambda env: raised(
        lambda: get_engine(env.folder(notes_txt="hello"))
    ),
    "config.json without model_type": lambda env: raised(
        lambda: get_engine(env.folder(config_json='{"hidden_size": 8}'))
    ),
    "config.json without weights": lambda env: raised(
        lambda: get_engine(env.folder(config_json='{"model_type": "bert"}'))
    ),
    "folder for the onnx backend": lambda env: raised(
        lambda: get_engine(env.folder(), backend="onnx")
    ),
    "folder for the decoder backend": lambda env: raised(
        lambda: get_engine(env.folder(), backend="decoder")
    ),
    "folder for a bi-encoder": lambda env: raised(lambda: BiEncoder(env.folder()).load()),
    "unknown hub id offline": lambda env: raised(
        lambda: get_engine("rerank-plugins-tests/no-such-model")
    ),
    "corrupt weights, sentence-transformers": lambda env: raised(
        lambda: RerankEngine(env.corrupt_model(), device="cpu")
    ),
    "corrupt weights, flag": lambda env: raised(
        lambda: RerankEngine(env.corrupt_model(), device="cpu", backend="flag")
    ),
    "corrupt weights, onnx": lambda env: raised(
        lambda: RerankEngine(env.corrupt_model(), device="cpu", backend="onnx")
    ),
    "corrupt weights, bi-encoder": lambda env: raised(
        lambda: BiEncoder(env.corrupt_model()).load()
    ),
    "backend='bogus'": lambda env: raised(lambda: get_engine(env.bert_path, backend="bogus")),
    "device='tpu'": lambda env: raised(lambda: get_engine(env.bert_path, device="tpu")),
    "max_length=-1": lambda env: raised(lambda: get_engine(env.bert_path, max_length=-1)),
    "max_length above the model's limit": lambda env: raised(
        lambda: RerankEngine(env.bert_path, device="cpu", max_length=4096)
    ),
    "an unknown engine option": lambda env: raised(lambda: get_engine(env.bert_path, colour=1)),
    "top_n=0": lambda env: raised(
        lambda: RerankEngine.from_backend(FakeBackend()).rerank("q", ["a"], top_n=0)
    ),
    "candidates below top_k": lambda env: raised(
        lambda: TwoStageRetriever(engine=RerankEngine.from_backend(FakeBackend())).retrieve(
            "q", top_k=5, candidates=2
        )
    ),
}

CLI: dict[str, Callable[[Env], list[str]]] = {
    "--backend bogus": lambda env: ["rerank", "-q", "q", "--docs", str(env.docs), "--backend", "bogus"],
    "--device tpu": lambda env: ["rerank", "-q", "q", "--docs", str(env.docs), "--device", "tpu"],
    "--precision int8": lambda env: ["rerank", "-q", "q", "--docs", str(env.docs), "--precision", "int8"],
    "--max-length -1": lambda env: ["rerank", "-q", "q", "--docs", str(env.docs), "--max-length", "-1"],
    "--max-length above the limit": lambda env: [
        "rerank", "-m", env.bert_path, "--device", "cpu", "-q", "q", "--docs", str(env.docs),
        "--max-length", "4096",
    ],
    "--top-n 0": lambda env: ["rerank", "-q", "q", "--docs", str(env.docs), "--top-n", "0"],
    "a missing --docs file": lambda env: ["rerank", "-q", "q", "--docs", str(env.tmp / "none.txt")],
    "a missing model folder": lambda env: [
        "rerank", "-m", str(env.tmp / "no" / "model"), "-q", "q", "--docs", str(env.docs),
    ],
    "an empty model folder": lambda env: [
        "rerank", "-m", env.folder(), "-q", "q", "--docs", str(env.docs),
    ],
    "an unknown hub id offline": lambda env: [
        "rerank", "-m", "rerank-plugins-tests/no-such-model", "-q", "q", "--docs", str(env.docs),
    ],
    "a model folder without model_type": lambda env: [
        "rerank", "-m", env.folder(config_json="{}"), "-q", "q", "--docs", str(env.docs),
    ],
    "demo with an unknown reranker offline": lambda env: [
        "demo", "--reranker", "rerank-plugins-tests/no-such-model",
    ],
    "--max-length many": lambda env: ["rerank", "-q", "q", "--max-length", "many"],
    "an unknown option": lambda env: ["rerank", "-q", "q", "--frobnicate"],
    "an unknown command": lambda env: ["frobnicate"],
    "eval --candidates 0": lambda env: ["eval", str(env.tmp), "-m", "x/y", "--run", "r", "--candidates", "0"],
    "eval without a data set": lambda env: ["eval", str(env.tmp), "-m", "x/y", "--run", "r.trec"],
    "demo --top-k 0": lambda env: ["demo", "--top-k", "0"],
    "serve --port 70000": lambda env: ["serve", "--port", "70000"],
}  # fmt: skip


def assert_reads_well(message: str) -> None:
    assert message, "no message"
    assert "\n" not in message, message
    assert len(message) < MAX_LENGTH, f"{len(message)} characters: {message[:200]}..."
    assert not DOUBLED.search(message), message
    assert SAYS_WHAT_TO_DO.search(message), f"says nothing of what to do: {message}"


@pytest.mark.parametrize("case", LIBRARY)
def test_a_library_error_is_one_short_line_that_says_what_to_do(
    case: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    assert_reads_well(LIBRARY[case](Env(tmp_path, request)))


@pytest.mark.parametrize("case", CLI)
def test_a_command_line_error_is_one_short_line_that_says_what_to_do(
    case: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    stderr = cli_error(CLI[case](Env(tmp_path, request)), capsys)
    assert stderr.startswith("error: "), stderr
    assert_reads_well(stderr)
