"""One fine-tune from data to a loadable folder: check, mine, train, evaluate, write."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_plugins import builds
from rerank_plugins.finetune.data import (
    DEFAULT_SEED,
    CorpusSource,
    JudgedQueryLike,
    TrainingData,
    load_training_data,
)
from rerank_plugins.finetune.report import PLOT_FILE, REPORT_FILE, SYSTEMS, FinetuneReport
from rerank_plugins.models import check_model_reference

__all__ = [
    "LOSSES",
    "FinetunePlan",
    "FinetuneSettings",
    "check_base_model",
    "check_output",
    "finetune",
    "is_finetuned",
    "plan_finetune",
]

logger = logging.getLogger("rerank_plugins")

LOSSES: tuple[str, ...] = ("listwise", "bce")
"""The training losses `FinetuneSettings.loss` accepts."""

# Bump when the method changes, so folders built by an older one are not reused as current.
_METHOD_VERSION = 1
_CACHE_FOLDER = "finetuned"


@dataclass(frozen=True)
class FinetuneSettings:
    """How to fine-tune. The defaults fine-tune a MiniLM-size reranker in minutes on a CPU.

    They were tuned on the shipped corpus (300 passages, docs/finetune.md has the numbers):
    eight hard negatives per query, the listwise loss with the bi-encoder's scores distilled,
    two epochs at 1e-4.

    Examples:
        >>> FinetuneSettings(epochs=1).negatives
        8
        >>> FinetuneSettings(batch_size=0)
        Traceback (most recent call last):
        ...
        ValueError: batch_size must be a positive integer, got 0.
    """

    epochs: float = 2.0
    """Passes over the training queries."""
    negatives: int = 8
    """Hard negatives per query (fewer for a query with fewer candidates)."""
    depth: int = 30
    """How far down the bi-encoder's ranking hard negatives are looked for."""
    margin: float | None = None
    """Skip candidates within this cosine similarity of the best answer (None: keep them)."""
    denoise: bool = False
    """Also skip candidates the base reranker scores at least as high as the answer (not done
    for the untrained offline fallback, whose scores say nothing of relevance)."""
    loss: str = "listwise"
    """``"listwise"``: softmax cross-entropy over each positive and its negatives (Gao et al.
    2021's localized contrastive estimation). ``"bce"``: binary cross-entropy per pair,
    positives weighted by the negatives per positive."""
    distill: float = 1.0
    """Weight of the bi-encoder's scores as soft targets of the listwise loss (0: labels only);
    they carry the bi-encoder's sense of similarity to the reranker."""
    batch_size: int = 4
    """Queries per optimizer step, each with its positive and its negatives."""
    learning_rate: float = 1e-4
    """Peak learning rate (linear warm-up, then linear decay)."""
    warmup: float = 0.1
    """Share of the steps with a linearly rising learning rate."""
    max_length: int = 128
    """Tokens per (query, passage) pair while training."""
    bf16: bool | None = None
    """Train in bf16 mixed precision (None: where the GPU or CPU runs bf16 natively)."""
    held_out: float = 0.2
    """Share of the queries held out for evaluation (0: none). Ignored with judged
    ``held_out_queries``, and for a BEIR folder with a second split to evaluate on."""
    candidates: int = 50
    """First-stage candidates reranked per held-out query in the evaluation."""
    seed: int = DEFAULT_SEED
    """Seeds the split, the held-out sentences, a new head, the shuffling and the dropout."""

    def __post_init__(self) -> None:
        for name in ("negatives", "depth", "batch_size", "max_length", "candidates"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"{name} must be a positive integer, got {value!r}."
                raise ValueError(msg)
        for name in ("epochs", "learning_rate"):
            if not getattr(self, name) > 0:
                msg = f"{name} must be above 0, got {getattr(self, name)!r}."
                raise ValueError(msg)
        if self.loss not in LOSSES:
            msg = f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}."
            raise ValueError(msg)
        if not self.distill >= 0:
            msg = f"distill must be 0 or more, got {self.distill!r}."
            raise ValueError(msg)
        if not 0 <= self.warmup < 1:
            msg = f"warmup must be a share from 0 up to 1, got {self.warmup!r}."
            raise ValueError(msg)
        if not 0 <= self.held_out <= 0.9:
            msg = f"held_out must be a share between 0 and 0.9, got {self.held_out!r}."
            raise ValueError(msg)
        if self.margin is not None and not self.margin >= 0:
            msg = f"margin must be 0 or more (or None), got {self.margin!r}."
            raise ValueError(msg)


@dataclass(frozen=True)
class FinetunePlan:
    """A fine-tune whose inputs are checked: the data read, the models and the output checked.

    `plan_finetune` makes one; `run` trains (or returns the report of the finished folder).
    Everything that can be wrong with the inputs is found while planning, before any model
    loads, so a command line can tell bad input from a failure while training.

    Attributes:
        data: What the data was (a folder, a file, or a count of records).
        training: The training and held-out queries, and the corpus.
        base: The model to start from.
        bi_encoder: The first stage.
        output: The folder to write.
        settings: The settings.
        fingerprint: SHA-256 of the data, models, settings and method version.
        finished: The report of ``output`` when it already holds this very fine-tune.
    """

    data: str
    training: TrainingData
    base: str
    bi_encoder: str
    output: Path
    settings: FinetuneSettings
    fingerprint: str
    finished: FinetuneReport | None = None

    @property
    def checkpoints(self) -> Path:
        """Where an unfinished run keeps its checkpoints: ``<output>.partial``."""
        folder = self.output.resolve()  # "." and ".." have no name to add to
        return folder.with_name(folder.name + ".partial")

    def run(
        self, *, device: str = "auto", progress: bool = True, callbacks: Sequence[Any] = ()
    ) -> FinetuneReport:
        """Mine, train (resuming from ``checkpoints``), evaluate and write ``output``.

        Args:
            device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``...
            progress: Show progress bars (with time estimates) on stderr.
            callbacks: ``transformers.TrainerCallback`` s for the trainer.

        Returns:
            The report (``reused`` True when ``output`` held this fine-tune already).
        """
        if self.finished is not None:
            logger.info("reusing the fine-tuned model in %s", self.output)
            return dataclasses.replace(self.finished, reused=True)
        # One run at a time per output: a second run of this fine-tune (two demos started
        # together) waits, then finds the first one's folder; none shares the checkpoints.
        folder = self.output.resolve()
        with _exclusive(folder.with_name(f".{folder.name}.lock")):
            if _holds(self.output, self.fingerprint):
                return dataclasses.replace(FinetuneReport.load(self.output), reused=True)
            return _Run(self, device, progress).execute(callbacks)


def plan_finetune(
    data: CorpusSource,
    *,
    base: str,
    bi_encoder: str,
    output: str | os.PathLike[str] | None = None,
    settings: FinetuneSettings | None = None,
    held_out_queries: Iterable[JudgedQueryLike] | None = None,
    overwrite: bool = False,
) -> FinetunePlan:
    """Check a fine-tune's inputs and read its data; see `finetune` for the arguments.

    Raises:
        FileNotFoundError: The data is missing a file (the message names it).
        ModelLoadError: ``base`` or ``bi_encoder`` is not a model that can load here.
        ValueError: Malformed data, too few queries, a base with several outputs, or an
            ``output`` that holds something else.
        MissingDependencyError: Training would need the ``finetune`` extra, not installed.

    Examples:
        >>> plan_finetune("my-corpus/", base="./no/such/model", bi_encoder="x/z")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rerank_plugins.errors.ModelLoadError: model folder './no/such/model' does not exist; ...
    """
    settings = settings or FinetuneSettings()
    check_base_model(base)
    check_model_reference(bi_encoder)
    training = load_training_data(
        data, held_out=settings.held_out, seed=settings.seed, held_out_queries=held_out_queries
    )
    fingerprint = _fingerprint(training, base, bi_encoder, settings)
    out = Path(output).expanduser() if output is not None else _cache_folder(fingerprint)
    finished = check_output(out, fingerprint=fingerprint, overwrite=overwrite)
    if finished is None:
        from rerank_plugins.finetune.train import check_dependencies

        check_dependencies()
    return FinetunePlan(
        _describe(data), training, base, bi_encoder, out, settings, fingerprint, finished
    )


def finetune(
    data: CorpusSource,
    *,
    base: str,
    bi_encoder: str,
    output: str | os.PathLike[str] | None = None,
    settings: FinetuneSettings | None = None,
    held_out_queries: Iterable[JudgedQueryLike] | None = None,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    callbacks: Sequence[Any] = (),
) -> FinetuneReport:
    """Fine-tune the reranker ``base`` on ``data``, evaluate it, and write a loadable folder.

    Steps: read the data (`load_training_data`: a BEIR folder's queries, or queries generated
    from a corpus alone), embed the corpus with ``bi_encoder``, mine hard negatives for each
    training query (`mine_hard_negatives`), train, then rank the held-out queries three ways
    (first stage alone, ``base``, the fine-tuned model) with `rerank_plugins.evaluation`.
    ``output`` then holds the model (with a trained head), a model card (README.md), the
    report (``finetune_report.json``) and a plot (``finetune_metrics.png``, with the ``eval``
    extra). It appears in one step, complete.

    Calling again with the same data, models and settings returns the saved report without
    training (``reused`` is True). An interrupted run leaves its checkpoints in
    ``<output>.partial``, and the same call resumes from the last one.

    Args:
        data: A BEIR folder, a folder holding ``corpus.jsonl``, that file, or passage records.
        base: The reranker to start from: hub id or folder of a cross-encoder, or a plain
            encoder (it gets a fresh one-output head, as does the untrained offline fallback).
        bi_encoder: The sentence-transformers first stage (hub id or folder).
        output: The folder to write. Default: a folder in rerank-plugins' cache named by the
            fingerprint of the inputs and settings.
        settings: Training settings (default `FinetuneSettings()`).
        held_out_queries: Judged questions to evaluate on instead of a held-out split (e.g.
            `rerank_plugins.data.demo_judgments()`); no query worded like one is trained on.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``...
        progress: Show progress bars (with time estimates) on stderr.
        overwrite: Replace an ``output`` that holds a fine-tune of other data or settings.
        callbacks: ``transformers.TrainerCallback`` s for the trainer.

    Returns:
        The report: metrics of the three systems, the folder, timings.

    Raises:
        FileNotFoundError: The data is missing a file (the message names it).
        ModelLoadError: ``base`` or ``bi_encoder`` cannot be found or loaded.
        ValueError: Malformed data, too few queries, a base with several outputs, or an
            ``output`` that holds something else.
        MissingDependencyError: The ``finetune`` extra is not installed.

    Examples:
        >>> from rerank_plugins.finetune import FinetuneSettings, finetune
        >>> report = finetune(  # doctest: +SKIP
        ...     "my-corpus/",
        ...     base="cross-encoder/ms-marco-MiniLM-L-6-v2",
        ...     bi_encoder="sentence-transformers/all-MiniLM-L6-v2",
        ...     output="my-reranker",
        ...     settings=FinetuneSettings(epochs=1),
        ... )
        >>> print(report.table())  # doctest: +SKIP
    """
    plan = plan_finetune(
        data,
        base=base,
        bi_encoder=bi_encoder,
        output=output,
        settings=settings,
        held_out_queries=held_out_queries,
        overwrite=overwrite,
    )
    return plan.run(device=device, progress=progress, callbacks=callbacks)


def is_finetuned(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a finished fine-tune (a model and its report).

    Examples:
        >>> is_finetuned("no/such/folder")
        False
    """
    path = Path(folder)
    return (
        (path / REPORT_FILE).is_file()
        and (path / "config.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def check_base_model(base: str) -> None:
    """Refuse a ``base`` that cannot load, or a classifier with more than one output.

    Raises:
        ModelLoadError: Not a model folder, or a hub id that cannot load here.
        ValueError: A classifier with several labels (the losses train one relevance logit).
    """
    from rerank_plugins.models import read_config

    check_model_reference(base)
    config = (read_config(base) if os.path.isdir(base) else None) or {}
    labels = len(config.get("id2label") or {})
    classifier = any(
        str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []
    )
    if labels > 1 and classifier:
        msg = (
            f"base model {base!r} is a classifier with {labels} outputs; pass a cross-encoder "
            "with one output (a relevance logit) or a plain encoder."
        )
        raise ValueError(msg)


def check_output(
    folder: Path, *, fingerprint: str, overwrite: bool = False
) -> FinetuneReport | None:
    """The report of ``folder`` if it holds this fine-tune; None if it may be written.

    Args:
        folder: The output folder.
        fingerprint: The fine-tune's fingerprint.
        overwrite: A folder holding another fine-tune may be replaced.

    Returns:
        The saved report when ``folder`` holds a finished fine-tune with this fingerprint,
        else None (the folder is absent, empty, or may be replaced).

    Raises:
        ValueError: ``folder`` is a file, holds files other than a fine-tune, or holds a
            fine-tune of other inputs and ``overwrite`` is False.
    """
    if not folder.exists():
        return None
    if not folder.is_dir():
        msg = f"output {str(folder)!r} is a file; pass a folder to write the model into."
        raise ValueError(msg)
    if not any(folder.iterdir()):
        return None
    if not (folder / REPORT_FILE).is_file():
        msg = (
            f"output folder {str(folder)!r} already holds other files; pass a new or empty "
            "folder for the fine-tuned model."
        )
        raise ValueError(msg)
    report = FinetuneReport.load(folder)
    if report.fingerprint == fingerprint and is_finetuned(folder):
        return report
    if overwrite:
        return None
    what = (
        "an incomplete copy of this fine-tune (its model files are missing)"
        if report.fingerprint == fingerprint
        else "a fine-tune of other data, models or settings"
    )
    msg = (
        f"output folder {str(folder)!r} holds {what}; pass a new folder, or overwrite=True "
        "(--overwrite) to replace it."
    )
    raise ValueError(msg)


class _Run:
    """The steps of one planned fine-tune, and what they share."""

    def __init__(self, plan: FinetunePlan, device: str, progress: bool) -> None:
        from rerank_plugins.models.offline import is_untrained_fallback

        self.plan = plan
        self.settings = plan.settings
        self.device = device
        self.progress = progress
        self.untrained = is_untrained_fallback(plan.base)

    def execute(self, callbacks: Sequence[Any]) -> FinetuneReport:
        plan = self.plan
        work = plan.checkpoints
        _start_work(work, plan.fingerprint)
        started = time.perf_counter()
        rows, index = self.mine()
        prepared = time.perf_counter()
        trained = self.train(rows, work, callbacks)
        trained_at = time.perf_counter()
        metrics = self.evaluate(index, work / "model")
        finished = time.perf_counter()
        report = FinetuneReport(
            output=str(plan.output),
            base=plan.base,
            bi_encoder=plan.bi_encoder,
            data=plan.data,
            method=plan.training.method,
            fingerprint=plan.fingerprint,
            settings=dataclasses.asdict(self.settings),
            train_queries=len(plan.training.train_queries),
            train_pairs=len(rows),
            held_out_queries=len(plan.training.eval_queries),
            candidates=self.settings.candidates if metrics else 0,
            metrics=metrics,
            device=trained.device,
            precision=trained.precision,
            steps=trained.steps,
            resumed_from_step=trained.resumed_from_step,
            train_loss=trained.train_loss,
            seconds={
                "prepare": round(prepared - started, 2),
                "train": round(trained_at - prepared, 2),
                "evaluate": round(finished - trained_at, 2),
                "total": round(finished - started, 2),
            },
            base_untrained=self.untrained,
        )
        # A folder that appeared at ``output`` while this trained is checked again here:
        # another run of this fine-tune may have finished first; anything else is kept.
        if check_output(plan.output, fingerprint=plan.fingerprint, overwrite=True) is None:
            builds.build_once(
                plan.output,
                complete=lambda folder: _holds(folder, plan.fingerprint),
                build=lambda folder: _write(report, work / "model", folder),
            )
        shutil.rmtree(work, ignore_errors=True)
        return FinetuneReport.load(plan.output)

    def mine(self) -> tuple[list[Any], Any]:
        """Embed the corpus and mine each training query's hard negatives."""
        from rerank_plugins.finetune.negatives import ExactIndex, mine_hard_negatives
        from rerank_plugins.retrieval import BiEncoder

        training = self.plan.training
        index = ExactIndex(BiEncoder(self.plan.bi_encoder, device=self.device), training.corpus)
        denoiser = None
        if self.settings.denoise and self.untrained:
            logger.warning(
                "denoise skipped: the base is the untrained fallback, whose scores say "
                "nothing of relevance"
            )
        elif self.settings.denoise:
            denoiser = _engine(self.plan.base, self.device)
        try:
            rows = mine_hard_negatives(
                index,
                training.corpus,
                training.train_queries,
                training.train_qrels,
                negatives=self.settings.negatives,
                depth=self.settings.depth,
                margin=self.settings.margin,
                denoiser=denoiser,
                progress=self.progress,
            )
        finally:
            if denoiser is not None:
                denoiser.close()
        if not any(row.label == 0 for row in rows):
            msg = (
                "no hard negatives: every candidate of every training query is judged "
                "relevant; add passages to the corpus, or check the judgments."
            )
            raise ValueError(msg)
        return rows, index

    def train(self, rows: Sequence[Any], work: Path, callbacks: Sequence[Any]) -> Any:
        """Train from the last checkpoint in ``work``, if any; save the model to ``work/model``."""
        from rerank_plugins.finetune.train import save_model, train_cross_encoder

        s = self.settings
        trained = train_cross_encoder(
            self.plan.base,
            rows,
            work / "checkpoints",
            loss=s.loss,
            distill=s.distill,
            epochs=s.epochs,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            warmup=s.warmup,
            max_length=s.max_length,
            bf16=s.bf16,
            seed=s.seed,
            device=self.device,
            fresh_head=self.untrained,
            progress=self.progress,
            callbacks=callbacks,
        )
        model_dir = work / "model"
        shutil.rmtree(model_dir, ignore_errors=True)
        save_model(trained.model, model_dir)
        trained.model = None  # the evaluation loads the saved folder, as every user will
        return trained

    def evaluate(self, index: Any, model_dir: Path) -> dict[str, dict[str, float]]:
        """Mean metrics of the first stage, the base and the fine-tuned model, held out."""
        training, settings = self.plan.training, self.settings
        if not training.eval_queries:
            return {}
        from tqdm.auto import tqdm

        from rerank_plugins.evaluation import BeirData, evaluate

        corpus = training.evaluation_corpus
        if corpus is not training.corpus:
            from rerank_plugins.finetune.negatives import ExactIndex

            index = ExactIndex(index.encoder, corpus)
        data = BeirData(
            corpus=corpus,
            titles=dict.fromkeys(corpus, ""),
            queries=training.eval_queries,
            qrels=training.eval_qrels,
        )
        run = {
            qid: [d for d, _ in index.search(query, settings.candidates)]
            for qid, query in training.eval_queries.items()
        }
        metrics: dict[str, dict[str, float]] = {}
        from rerank_plugins.models.offline import untrained_notice_held_back

        for system, model in ((SYSTEMS[1], self.plan.base), (SYSTEMS[2], str(model_dir))):
            # An untrained base is said in the report (``base_untrained``), not logged as if
            # someone were about to rank with it.
            untrained = system == SYSTEMS[1] and self.untrained
            with untrained_notice_held_back() if untrained else contextlib.nullcontext():
                engine = _engine(model, self.device)
            bar = tqdm(
                total=len(run), desc=f"evaluating the {system}", unit="query",
                disable=not self.progress,
            )  # fmt: skip
            try:
                result = evaluate(
                    data, engine, run, candidates=settings.candidates, progress=_ticker(bar)
                )
            finally:
                bar.close()
                engine.close()
            metrics.setdefault(SYSTEMS[0], result.first_stage)
            metrics[system] = result.reranked
        return {s: metrics[s] for s in SYSTEMS}


def _write(report: FinetuneReport, model_dir: Path, folder: Path) -> None:
    """The output folder's contents: the model, the plot, the model card, the report."""
    from rerank_plugins.finetune.report import model_card, plot

    shutil.copytree(model_dir, folder, dirs_exist_ok=True)
    if report.metrics:
        if plot(report.metrics, folder / PLOT_FILE) is None:
            report.notes.append(
                "no plot: matplotlib is not installed; pip install 'rerank-plugins[eval]'"
            )
        else:
            report.plot = str(Path(report.output) / PLOT_FILE)
    (folder / "README.md").write_text(model_card(report), encoding="utf-8")
    report.save(folder)


def _ticker(bar: Any) -> Callable[[int, int], None]:
    def tick(done: int, total: int) -> None:
        bar.update(1)

    return tick


def _engine(model: str, device: str) -> Any:
    """A private engine (not the shared one): closed after use, the score cache off."""
    from rerank_plugins.engine import RerankEngine

    return RerankEngine(model, device=device, cache_size=0)


def _fingerprint(
    training: TrainingData, base: str, bi_encoder: str, settings: FinetuneSettings
) -> str:
    record = {
        "version": _METHOD_VERSION,
        "data": training.digest,
        "base": _model_identity(base),
        "bi_encoder": _model_identity(bi_encoder),
        "settings": dataclasses.asdict(settings),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _model_identity(model: str) -> str:
    """A folder by its absolute path and its config; a hub id as it is."""
    if not os.path.isdir(model):
        return model
    config = Path(model, "config.json")
    text = config.read_text(encoding="utf-8") if config.is_file() else ""
    # The weights by size and time: retrained in place, it is another model (cheap to read,
    # where hashing gigabytes of weights on every plan would not be).
    for weights in sorted(Path(model).glob("*.safetensors")) + sorted(Path(model).glob("*.bin")):
        stat = weights.stat()
        text += f"\n{weights.name}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{os.path.abspath(model)}:{hashlib.sha256(text.encode()).hexdigest()}"


def _holds(folder: Path, fingerprint: str) -> bool:
    if not is_finetuned(folder):
        return False
    try:
        return FinetuneReport.load(folder).fingerprint == fingerprint
    except (OSError, ValueError, TypeError):
        return False


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (POSIX; elsewhere no lock is taken)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent runs of one fine-tune are not guarded there
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _start_work(work: Path, fingerprint: str) -> None:
    """Keep the checkpoints of an interrupted run of this fine-tune; clear any other's."""
    state = work / "fingerprint.txt"
    if work.exists():
        current = state.read_text(encoding="utf-8").strip() if state.is_file() else ""
        if current == fingerprint:
            return
        logger.info("clearing %s: it holds checkpoints of another fine-tune", work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    state.write_text(fingerprint + "\n", encoding="utf-8")


def _cache_folder(fingerprint: str) -> Path:
    return builds.cache_root() / _CACHE_FOLDER / fingerprint[:16]


def _describe(data: CorpusSource) -> str:
    if isinstance(data, str | os.PathLike):
        return os.fspath(data)
    return f"{len(data)} passage records"
