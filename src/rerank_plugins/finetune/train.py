"""Training the cross-encoder: sentence-transformers' trainer, the losses, resuming, saving."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.errors import MissingDependencyError
from rerank_plugins.finetune.negatives import TrainingPair
from rerank_plugins.models.offline import FALLBACK_MARKER

__all__ = [
    "TEACHER_TEMPERATURE",
    "TrainedModel",
    "check_dependencies",
    "save_model",
    "train_cross_encoder",
]

logger = logging.getLogger("rerank_plugins")

TEACHER_TEMPERATURE = 0.05
"""Divides the bi-encoder's cosine similarities before the softmax of the distilled targets:
cosines differ by hundredths, logits by units."""

# Checkpoints written over a run: enough to lose little to an interruption, few enough that
# writing them (model and optimizer state) costs little next to the training itself.
_CHECKPOINTS = 5


@dataclass
class TrainedModel:
    """The outcome of `train_cross_encoder`.

    Attributes:
        model: The trained `sentence_transformers.CrossEncoder` (None once released).
        device: Where it trained (``cpu``, ``cuda``, ``mps``).
        steps: Optimizer steps of the whole run.
        resumed_from_step: The checkpoint's step this run resumed from (None: from scratch).
        train_loss: Mean training loss the trainer reported.
        seconds: Time spent in this run's training.
        precision: ``"bf16 mixed"`` or ``"fp32"``.
    """

    model: Any
    device: str
    steps: int
    resumed_from_step: int | None
    train_loss: float | None
    seconds: float
    precision: str = "fp32"


def check_dependencies() -> tuple[Any, Any, Any, Any]:
    """Import what training needs: torch, transformers, sentence-transformers 6+, datasets.

    Returns:
        The modules torch, transformers, sentence_transformers and datasets.

    Raises:
        MissingDependencyError: A package of the ``finetune`` extra is missing or too old
            (the message says what to install).
    """
    torch = require("torch", extra="finetune", purpose="fine-tuning")
    transformers = require("transformers", extra="finetune", purpose="fine-tuning")
    st = require("sentence_transformers", extra="finetune", purpose="fine-tuning")
    datasets = require("datasets", extra="finetune", purpose="fine-tuning")
    require("accelerate", extra="finetune", purpose="fine-tuning")
    if not hasattr(st.CrossEncoder, "preprocess"):
        msg = (
            f"fine-tuning needs sentence-transformers 6 or newer, found {st.__version__}; "
            "install it with: pip install 'rerank-plugins[finetune]'"
        )
        raise MissingDependencyError(msg)
    return torch, transformers, st, datasets


def train_cross_encoder(
    base: str,
    rows: Sequence[TrainingPair],
    checkpoints: Path,
    *,
    loss: str = "listwise",
    distill: float = 1.0,
    epochs: float = 2.0,
    batch_size: int = 4,
    learning_rate: float = 1e-4,
    warmup: float = 0.1,
    max_length: int = 128,
    bf16: bool | None = None,
    seed: int = 0,
    device: str = "auto",
    fresh_head: bool = False,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainedModel:
    """Fine-tune ``base`` on positives and hard negatives; resume from checkpoints.

    ``"listwise"``: for each positive, a softmax over its score and its negatives' scores,
    trained towards the positive (cross-entropy); with ``distill``, plus the KL divergence to
    the softmax of the bi-encoder's similarities (over `TEACHER_TEMPERATURE`), weighted by
    ``distill``. ``"bce"``: sentence-transformers' ``BinaryCrossEntropyLoss`` per pair, with
    ``pos_weight`` the ratio of negatives to positives. The trainer saves a checkpoint (model,
    optimizer, scheduler and random states) every fifth of the run into ``checkpoints``,
    keeping the last; when that folder already holds one, training resumes from it.

    Args:
        base: The cross-encoder (or plain encoder: it gets a fresh one-output head) to train.
        rows: Training rows (`rerank_plugins.finetune.negatives.mine_hard_negatives`).
        checkpoints: Where the trainer keeps its checkpoints.
        loss: ``"listwise"`` or ``"bce"``.
        distill: Weight of the bi-encoder's similarities as soft targets (listwise only).
        epochs: Passes over the training queries.
        batch_size: Queries per optimizer step, each with its positive and negatives.
        learning_rate: Peak learning rate (linear warm-up, then linear decay).
        warmup: Share of the steps spent warming up.
        max_length: Tokens per pair while training (the saved model keeps the base's limit).
        bf16: bf16 mixed precision; None: where the GPU or the CPU runs it natively.
        seed: Seeds a new head, the shuffling and the dropout.
        device: ``"auto"`` (CUDA, then MPS, then CPU), or a device name.
        fresh_head: Draw the classification head anew (seeded, the usual initialisation)
            before training: for a base whose head is untrained, such as the offline
            fallback, whose head is scaled to spread scores, not to learn from.
        progress: Show a progress bar with the loss and a time estimate on stderr.
        callbacks: More ``transformers.TrainerCallback`` s.

    Returns:
        The trained model and what the run did.

    Raises:
        MissingDependencyError: A package of the ``finetune`` extra is missing or too old.
    """
    torch, transformers, st, datasets = check_dependencies()
    from sentence_transformers.cross_encoder import (
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )

    from rerank_plugins.backends._torch import cpu_supports_bf16, resolve_device

    resolved = resolve_device(device)
    if bf16 is None:
        bf16 = torch.cuda.is_bf16_supported() if resolved.startswith("cuda") else False
        bf16 = bf16 or (resolved == "cpu" and cpu_supports_bf16())
    transformers.set_seed(seed)  # a new head is drawn now
    model = st.CrossEncoder(base, num_labels=1, device=resolved)
    # Train on pairs cut to ``max_length`` (speed); save with the base's own limit, so the
    # fine-tuned model reads as much of a passage as the base did.
    saved_length = model.max_seq_length
    model.max_seq_length = min(max_length, saved_length or max_length)
    if fresh_head:
        _reset_head(torch, model.model)
    if loss == "listwise":
        columns = _groups(rows, teacher=distill > 0)
        loss_fn = _listwise_loss(torch, model, distill)
        per_step = batch_size
    elif loss == "bce":
        columns, loss_fn = _pairs(torch, model, rows)
        # As many pairs per step as the listwise loss scores for ``batch_size`` queries.
        per_step = batch_size * max(1, round(len(rows) / max(1, _positives(rows))))
    else:
        msg = f"loss must be 'listwise' or 'bce', got {loss!r}."
        raise ValueError(msg)
    dataset = datasets.Dataset.from_dict(columns)
    steps = max(1, math.ceil(math.ceil(len(dataset) / per_step) * epochs))
    args = CrossEncoderTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        per_device_train_batch_size=per_step,
        learning_rate=learning_rate,
        warmup_steps=round(steps * warmup),  # an int: a ratio only on transformers 5
        lr_scheduler_type="linear",
        seed=seed,
        data_seed=seed,
        save_strategy="steps",
        save_steps=max(1, math.ceil(steps / _CHECKPOINTS)),
        save_total_limit=1,
        logging_steps=max(1, steps // 10),
        report_to="none",
        disable_tqdm=True,  # our bar instead: on stderr, with the loss, no printed log lines
        use_cpu=resolved == "cpu",
        bf16=bool(bf16),
        dataloader_num_workers=0,
    )
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss_fn, callbacks=list(callbacks)
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    if progress:
        trainer.add_callback(_progress_bar(transformers))
    last = _last_checkpoint(checkpoints)
    resumed = _checkpoint_step(last) if last else None
    if last:
        logger.info("resuming fine-tuning from %s", last)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    train_loss = getattr(result, "training_loss", None)
    model.max_seq_length = saved_length
    return TrainedModel(
        model=model,
        device=resolved,
        steps=int(trainer.state.global_step),
        resumed_from_step=resumed,
        train_loss=float(train_loss) if train_loss is not None else None,
        seconds=time.perf_counter() - start,
        precision="bf16 mixed" if bf16 else "fp32",
    )


def save_model(model: Any, folder: Path) -> None:
    """Save ``model`` where `get_engine` and ``CrossEncoder`` load it; drop the fallback mark.

    Args:
        model: A `sentence_transformers.CrossEncoder`.
        folder: The folder to write (config, weights with the trained head, tokenizer).
    """
    config = getattr(model.model, "config", None)
    if config is not None and hasattr(config, FALLBACK_MARKER):
        delattr(config, FALLBACK_MARKER)
    model.save(str(folder))
    config_file = folder / "config.json"
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    if FALLBACK_MARKER in saved:  # a transformers line that keeps unknown keys elsewhere
        del saved[FALLBACK_MARKER]
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True), encoding="utf-8")


def _positives(rows: Sequence[TrainingPair]) -> int:
    return sum(1 for r in rows if r.label > 0)


def _groups(rows: Sequence[TrainingPair], *, teacher: bool) -> dict[str, list[Any]]:
    """One row per positive: the query, the positive, its query's negatives (and similarities).

    Every row has as many negatives as the query with the most; a query with fewer repeats
    its own (the softmax then counts a repeated negative twice, which does no harm), and a
    query with none is left out: there is nothing to tell its positive from.
    """
    by_query: dict[str, list[TrainingPair]] = {}
    for row in rows:
        by_query.setdefault(row.query_id, []).append(row)
    width = max(sum(1 for r in group if r.label == 0) for group in by_query.values())
    columns: dict[str, list[Any]] = {"query": [], "positive": []}
    columns.update({f"negative_{i + 1}": [] for i in range(width)})
    if teacher:
        columns["label"] = []
    for group in by_query.values():
        negatives = [r for r in group if r.label == 0]
        if not negatives:
            continue
        padded = [negatives[i % len(negatives)] for i in range(width)]
        for positive in (r for r in group if r.label > 0):
            columns["query"].append(positive.query)
            columns["positive"].append(positive.passage)
            for i, negative in enumerate(padded):
                columns[f"negative_{i + 1}"].append(negative.passage)
            if teacher:
                columns["label"].append([positive.similarity, *(r.similarity for r in padded)])
    return columns


def _pairs(
    torch: Any, model: Any, rows: Sequence[TrainingPair]
) -> tuple[dict[str, list[Any]], Any]:
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    positives = _positives(rows)
    negatives = len(rows) - positives
    columns: dict[str, list[Any]] = {
        "query": [r.query for r in rows],
        "passage": [r.passage for r in rows],
        "label": [float(r.label) for r in rows],
    }
    weight = negatives / positives if positives and negatives else 1.0
    return columns, BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(weight))


def _listwise_loss(torch: Any, model: Any, distill: float) -> Any:
    """Softmax cross-entropy over (positive, negatives), plus the distilled bi-encoder targets.

    All pairs of a batch go through the model in one forward pass.
    """
    from sentence_transformers.util import batch_to_device

    functional = torch.nn.functional

    class ListwiseLoss(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, inputs: Any, labels: Any = None, prompt: Any = None, task: Any = None
        ) -> Any:
            queries, columns = inputs[0], inputs[1:]
            pairs = [(q, column[i]) for column in columns for i, q in enumerate(queries)]
            features = self.model.preprocess(pairs, prompt=prompt, task=task)
            scores = self.model(batch_to_device(features, self.model.device))["scores"]
            logits = scores.view(len(columns), len(queries)).T.float()
            target = torch.zeros(len(queries), dtype=torch.long, device=logits.device)
            loss = functional.cross_entropy(logits, target)
            if distill and labels is not None:
                teacher = torch.stack(list(labels)).to(logits.device).float()
                soft = functional.softmax(teacher / TEACHER_TEMPERATURE, dim=-1)
                kl = functional.kl_div(
                    functional.log_softmax(logits, dim=-1), soft, reduction="batchmean"
                )
                loss = loss + distill * kl
            return loss

        def get_config_dict(self) -> dict[str, Any]:
            return {"distill": distill, "teacher_temperature": TEACHER_TEMPERATURE}

    return ListwiseLoss(model)


def _reset_head(torch: Any, hf_model: Any) -> None:
    """Re-draw the linear layers outside the base model, as transformers initialises them."""
    prefix = f"{getattr(hf_model, 'base_model_prefix', '')}."
    std = float(getattr(hf_model.config, "initializer_range", 0.02))
    with torch.no_grad():
        for name, module in hf_model.named_modules():
            if name and not name.startswith(prefix) and isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()


def _progress_bar(transformers: Any) -> Any:
    """A callback drawing one bar over the optimizer steps, with the last loss, on stderr."""
    from tqdm.auto import tqdm

    class ProgressBar(transformers.TrainerCallback):
        bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc="training", unit="step"
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logs = kwargs.get("logs") or {}
            if self.bar is not None and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ProgressBar()


def _last_checkpoint(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob("checkpoint-*"):
        step = _checkpoint_step(str(path))
        if step is not None and (path / "trainer_state.json").is_file():
            found.append((step, str(path)))
    return max(found)[1] if found else None


def _checkpoint_step(path: str) -> int | None:
    tail = Path(path).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None
