"""The downstream tasks a language model is scored on (by `blueberry-eval`, and during training with
`--eval-tasks`): the benchmark files people have on disk, and two built-in tasks that need no download
(docs/evaluation.md has the formats and commands).

`--tasks` is a comma-separated list; a benchmark names its file, `NAME=PATH[@SPLIT]`:
- `hellaswag`: rowanz/hellaswag's `hellaswag_val.jsonl`, or the `Rowan/hellaswag` layout;
- `arc_easy`, `arc_challenge`: AI2's `ARC-*-Test.jsonl`, or the `allenai/ai2_arc` layout;
- `piqa`: PIQA's `valid.jsonl` with `valid-labels.lst` beside it, or a layout whose records hold `label`;
- `cloze` (built in): a validation document's opening, its next words among passages of others;
- `bpb` (built in): bits per byte on the validation sequences of `--data`.
Queries and choices are those of lm-eval's task of the same name (its HellaSwag `preprocess`, its
`"Question: ...\nAnswer:"` prompts). A Hugging Face layout (a `.parquet` or `.arrow` file, a
`save_to_disk` directory, a downloaded dataset repository) is read with `datasets` from the local
files alone; `@SPLIT` picks the split (default: lm-eval's, `validation` for HellaSwag and PIQA,
`test` for ARC).

`cloze` and `bpb` read the data `--data` names (default: the built-in corpus, prepared at the model's
`seq_len`), which the caller opens (`load_tasks` takes a function that opens it, called only when needed). `cloze` is built only from the documents of its validation split, which training never
reads: each question is a document's opening (at least 16 words), the true next 8 words, and 8-word
passages of three other validation documents, in an order and at positions drawn with a fixed seed.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blueberry.data.tokenizer import prepared_tokenizer
from blueberry.data.tokens import TokenShards
from blueberry.errors import UserError

CLOZE_WORDS = 8  # words per choice
CLOZE_MIN_CONTEXT = 16  # words of the document before the first question in it
CLOZE_CHOICES = 4
CLOZE_QUESTIONS = 500  # the built-in corpus's validation split holds about 1,500 candidates
CLOZE_SEED = 0


@dataclass(frozen=True)
class MultipleChoice:
    """One question: `query + " " + choice` is scored for each choice; `label` indexes the right one."""

    query: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: Path | None = None  # for file tasks
    split: str | None = None  # for directories holding several splits


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's `hellaswag/utils.py` `preprocess`: WikiHow's bracketed artifacts removed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_question(doc: dict[str, Any]) -> MultipleChoice:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return MultipleChoice(query=hellaswag_preprocess(doc["activity_label"] + ": " + context),
                          choices=tuple(hellaswag_preprocess(e) for e in doc["endings"]), label=int(doc["label"]))


def arc_question(doc: dict[str, Any]) -> MultipleChoice:
    question = doc["question"]
    if isinstance(question, dict):  # AI2's jsonl
        stem, texts, labels = question["stem"], [c["text"] for c in question["choices"]], \
            [c["label"] for c in question["choices"]]
    else:  # allenai/ai2_arc
        stem, texts, labels = question, list(doc["choices"]["text"]), list(doc["choices"]["label"])
    return MultipleChoice(query=f"Question: {stem}\nAnswer:", choices=tuple(texts),
                          label=labels.index(doc["answerKey"]))


def piqa_question(doc: dict[str, Any]) -> MultipleChoice:
    return MultipleChoice(query=f"Question: {doc['goal']}\nAnswer:", choices=(doc["sol1"], doc["sol2"]),
                          label=int(doc["label"]))


@dataclass(frozen=True)
class FileFormat:
    question: Callable[[dict[str, Any]], MultipleChoice]
    split: str  # the split lm-eval scores
    expected: str  # for error messages


HELLASWAG = FileFormat(hellaswag_question, "validation",
                       "HellaSwag records with ctx_a, ctx_b, activity_label, endings, label (rowanz/hellaswag's "
                       "jsonl or the Rowan/hellaswag layout)")
ARC = FileFormat(arc_question, "test",
                 "ARC records: AI2's jsonl (question {stem, choices [{text, label}]}, answerKey) or the "
                 "allenai/ai2_arc layout (question, choices {text, label}, answerKey)")
PIQA = FileFormat(piqa_question, "validation",
                  "PIQA records with goal, sol1, sol2 and a label (in the record, or one per line in "
                  "<name>-labels.lst beside <name>.jsonl)")
FILE_TASKS = {"hellaswag": HELLASWAG, "arc_easy": ARC, "arc_challenge": ARC, "piqa": PIQA}
BUILTIN_TASKS = ("cloze", "bpb")


def parse_tasks(text: str) -> list[TaskSpec]:
    """`hellaswag=PATH,arc_easy=PATH@validation,cloze,bpb` -> specs; names and paths checked here."""
    specs: list[TaskSpec] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, location = item.partition("=")
        name = name.strip()
        if name in BUILTIN_TASKS:
            if location:
                raise UserError(f"task {name} is built in and takes no file (got {item!r}): pass --data DIR to "
                                "choose its data")
            specs.append(TaskSpec(name))
            continue
        if name not in FILE_TASKS:
            raise UserError(f"unknown task {name!r}: choose from {', '.join([*FILE_TASKS, *BUILTIN_TASKS])}")
        if not location:
            raise UserError(f"task {name} needs its file: {name}=PATH ({FILE_TASKS[name].expected})")
        path, split = Path(location), None
        if not path.exists() and "@" in location:
            head, _, split = location.rpartition("@")
            path = Path(head)
        if not path.exists():
            raise UserError(f"{name}: {path} does not exist (expected {FILE_TASKS[name].expected})")
        specs.append(TaskSpec(name, path, split))
    if not specs:
        raise UserError("--tasks names no task")
    names = [s.name for s in specs]
    if len(set(names)) < len(names):
        raise UserError(f"--tasks names a task twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return specs


def task_metrics(specs: Sequence[TaskSpec]) -> list[str]:
    """The names `blueberry.models.lm.eval.evaluate_tasks` reports for `specs`: `NAME/acc` and
    `NAME/acc_norm` per multiple-choice task, `bpb`, and `core` when there is a multiple-choice task."""
    names = [metric for spec in specs
             for metric in ((spec.name,) if spec.name == "bpb" else (f"{spec.name}/acc", f"{spec.name}/acc_norm"))]
    return names + (["core"] if any(spec.name != "bpb" for spec in specs) else [])


def higher_is_better(metric: str) -> bool:
    """Accuracies and the centred `core` grow as a model improves; bits per byte falls."""
    return metric == "core" or metric.endswith(("/acc", "/acc_norm"))


def _json_records(path: Path, expected: str) -> list[dict[str, Any]]:
    """A .jsonl file (one object per line), or a .json file holding a list of objects."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: expected {expected}") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): expected {expected}") from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path} line {number} is not JSON ({err.msg}): expected {expected}") from None
    if not all(isinstance(r, dict) for r in records):
        raise UserError(f"{path} holds something other than JSON objects: expected {expected}")
    return records


def _dataset_records(path: Path, split: str, expected: str) -> list[dict[str, Any]]:
    """Records of a Hugging Face layout on local disk, read with `datasets` into a scratch cache."""
    import datasets

    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one table is the command's output, not a bar per split read
    with tempfile.TemporaryDirectory(prefix="blueberry-eval-") as cache:
        try:
            if path.is_file() and path.suffix == ".arrow":
                found: Any = datasets.Dataset.from_file(str(path), in_memory=True)
            elif path.is_file() and path.suffix == ".parquet":
                found = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache,
                                              keep_in_memory=True)
            elif path.is_file():
                raise UserError(f"{path} is neither .jsonl, .json, .parquet nor .arrow: expected {expected}")
            elif (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                found = datasets.load_from_disk(str(path), keep_in_memory=True)
            else:
                found = datasets.load_dataset(str(path), cache_dir=cache, keep_in_memory=True)
        except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as err:
            raise UserError(f"{path} is not a dataset datasets can read ({str(err).splitlines()[0][:200]}): "
                            f"expected {expected}") from None
        finally:
            if not quiet:
                datasets.enable_progress_bars()
        if isinstance(found, datasets.DatasetDict):
            if split not in found:
                raise UserError(f"{path} has no split {split!r} (it has {', '.join(found)}): append @SPLIT to the path")
            found = found[split]
        return found.to_list()


def _piqa_labels(path: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PIQA's release keeps labels apart: `valid.jsonl` has `valid-labels.lst`, one 0 or 1 per line."""
    if not records or "label" in records[0]:
        return records
    labels_file = path.with_name(f"{path.stem}-labels.lst")
    if not labels_file.is_file():
        raise UserError(f"{path} holds no labels and {labels_file} does not exist: PIQA's labels come one per line "
                        f"in {labels_file.name} beside {path.name}")
    labels = labels_file.read_text().split()
    if len(labels) != len(records) or not all(label in ("0", "1") for label in labels):
        raise UserError(f"{labels_file} must hold one label (0 or 1) per record of {path} ({len(records)}); it holds "
                        f"{len(labels)} lines")
    return [{**record, "label": int(label)} for record, label in zip(records, labels)]


def read_questions(spec: TaskSpec) -> list[MultipleChoice]:
    """The questions of a file task, or a one-line error naming the file and the format it expects."""
    assert spec.path is not None
    form = FILE_TASKS[spec.name]
    if spec.path.is_file() and spec.path.suffix in (".jsonl", ".json"):
        records = _json_records(spec.path, form.expected)
        where = "line"
    else:
        records = _dataset_records(spec.path, spec.split or form.split, form.expected)
        where = "record"
    if spec.name == "piqa" and spec.path.is_file():
        records = _piqa_labels(spec.path, records)
    if not records:
        raise UserError(f"{spec.path} holds no records: expected {form.expected}")
    questions = []
    for number, record in enumerate(records, start=1):
        try:
            question = form.question(record)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            problem = f"no field {err}" if isinstance(err, KeyError) else str(err).splitlines()[0][:120]
            raise UserError(f"{spec.path} {where} {number} does not fit task {spec.name} ({problem}): expected "
                            f"{form.expected}") from None
        if not 0 <= question.label < len(question.choices):
            raise UserError(f"{spec.path} {where} {number}: label {question.label} does not index one of its "
                            f"{len(question.choices)} choices")
        questions.append(question)
    return questions


def validation_texts(data: TokenShards, tokenizer: Any) -> list[str]:
    """The documents of `data`'s validation split, as text: the rows' token stream (consecutive rows
    overlap by one token) cut at EOS. The last document, cut off by the split's end, is left out."""
    eos = data.manifest.tokenizer.eos_id
    documents: list[str] = []
    pending: list[np.ndarray] = []
    first = True
    for batch in data.val_batches(64, 2**40):
        for row in batch.numpy():
            piece, first = (row if first else row[1:]), False
            start = 0
            for end in np.flatnonzero(piece == eos):
                ids = np.concatenate([*pending, piece[start:end]])
                pending, start = [], end + 1
                if len(ids):
                    documents.append(tokenizer.decode(ids.tolist()))
            pending.append(piece[start:])
    return documents


def cloze_questions(texts: Sequence[str], questions: int = CLOZE_QUESTIONS, words: int = CLOZE_WORDS,
                    seed: int = CLOZE_SEED) -> list[MultipleChoice]:
    """Up to `questions` cloze questions from `texts` (documents), the same ones for the same arguments.

    The candidates are each document's consecutive `words`-word passages after its first
    `CLOZE_MIN_CONTEXT` words (the query is all of the document before the passage; the scorer keeps
    what fits the model's context). `questions` of them are drawn without replacement, in a random
    order (so `--limit` takes a random sample), each with three distractor passages of `words` words
    at random places in three other documents. Passages keep their own whitespace; the query ends at
    the word before."""
    spans = [[m.span() for m in re.finditer(r"\S+", text)] for text in texts]
    candidates = [(d, k) for d, s in enumerate(spans)
                  for k in range(CLOZE_MIN_CONTEXT, len(s) - words + 1, words)]
    donors = [d for d, s in enumerate(spans) if len(s) >= words]
    if len(donors) < CLOZE_CHOICES or not candidates:
        raise UserError(f"the validation split holds {len(texts)} documents, too few for cloze questions (each "
                        f"needs {CLOZE_MIN_CONTEXT + words} words, and distractors from {CLOZE_CHOICES - 1} others): "
                        "use --data with more held-out text")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(candidates), min(questions, len(candidates)), replace=False)

    def passage(d: int, k: int) -> str:
        return texts[d][spans[d][k][0]:spans[d][k + words - 1][1]]

    out = []
    for index in picked:
        d, k = candidates[index]
        truth = passage(d, k)
        choices = [truth]
        others = [o for o in donors if o != d]
        for o in rng.permutation(others):
            start = int(rng.integers(0, len(spans[o]) - words + 1))
            if passage(o, start) not in choices:
                choices.append(passage(o, start))
            if len(choices) == CLOZE_CHOICES:
                break
        if len(choices) < CLOZE_CHOICES:
            continue  # every other document repeats this passage: no fair question here
        order = rng.permutation(CLOZE_CHOICES)
        out.append(MultipleChoice(query=texts[d][:spans[d][k - 1][1]], choices=tuple(choices[i] for i in order),
                                  label=int(np.flatnonzero(order == 0)[0])))
    return out


def load_tasks(specs: Sequence[TaskSpec], tokenizer: Any, open_data: Callable[[], TokenShards],
               data_name: str = "the data", questions: int = CLOZE_QUESTIONS,
               ) -> dict[str, list[MultipleChoice] | TokenShards]:
    """Every task `specs` names, ready for `blueberry.models.lm.eval.evaluate_tasks`; `open_data()` (the
    prepared token data, `data_name` in messages) is called only when `cloze` or `bpb` is asked for."""
    tasks: dict[str, list[MultipleChoice] | TokenShards] = {}
    shards: TokenShards | None = None
    for spec in specs:
        if spec.name in FILE_TASKS:
            tasks[spec.name] = read_questions(spec)
            continue
        shards = shards or open_data()
        if spec.name == "bpb":
            recorded = shards.manifest.tokenizer
            if recorded.sha256 != tokenizer.sha256:
                raise UserError(f"bpb: {data_name} was tokenized with {recorded.name!r}, not the run's tokenizer "
                                f"{tokenizer.name!r}: the model can only score its own tokens; pass --data prepared "
                                f"with --tokenizer {tokenizer.name}")
            tasks["bpb"] = shards
        else:
            tasks["cloze"] = cloze_questions(validation_texts(shards, prepared_tokenizer(shards, tokenizer)), questions)
    return tasks
