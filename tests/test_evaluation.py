"""Downstream evaluation (`blueberry-eval`) is scored as the references score it.

Proves that: the task loaders read HellaSwag, ARC and PIQA from their released jsonl and from the
Hugging Face layouts (parquet, `save_to_disk`, arrow, a downloaded repository) into the same
questions, HellaSwag's exactly as lm-eval's own `process_docs`; our acc and acc_norm equal
lm-evaluation-harness's on its own arc_easy and hellaswag configs (data moved to local files) scored
through our `blueberry` adapter, whose rolling log-likelihood and greedy generation behave; bits per byte
equals a naive float64 computation, and its byte table counts UTF-8 bytes exactly; the built-in cloze
task is deterministic, built from validation documents only, with the true passage from the
question's own document and distractors from others; CORE centring is the DCLM arithmetic; a
training hook reports the metrics; bad task files are one-line errors with exit status 2.

Everything runs on a corpus, tokenizer and model made here in seconds: nothing is downloaded.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from blueberry.cli import eval as eval_cli
from blueberry.cli import train as train_cli
from blueberry.core.config import TrainConfig
from blueberry.core.hooks import History, Hook, Hooks
from blueberry.core.loop import train
from blueberry.models.lm.config import ModelConfig
from blueberry.models.lm.eval import (ChoiceResult, DownstreamEval, LMScorer, centered, core_score, evaluate_tasks,
                                      multiple_choice, token_byte_lengths)
from blueberry.models.lm.task import LMTask
from blueberry.data.tokenizer import load_tokenizer
from blueberry.platform.data import PrepareConfig, open_data, prepare
from blueberry.models.lm.benchmarks import (MultipleChoice, TaskSpec, cloze_questions, parse_tasks, read_questions,
                                            validation_texts)
from blueberry.inference.run import open_run
from pipelines.prepare import is_validation_document

SEQ_LEN = 64
WORDS = ("the a river stone garden light window quiet north evening market bridge letter silver yellow train "
         "bread winter music paper mountain café naïve über façade déjà Zürich 東京 ✓ opens carries follows "
         "remembers under above near between slowly often never always because while").split()


def document(rng: np.random.Generator, n_words: int) -> str:
    words = rng.choice(WORDS, n_words)
    sentences = [" ".join(words[i:i + 9]).capitalize() + "." for i in range(0, n_words, 9)]
    return "Story " + " ".join(sentences)  # an ASCII start: no document begins inside a multi-byte character


def byte_level_bpe(docs: list[str], vocab_size: int) -> RustTokenizer:
    """A tokenizer built as the built-in one is (`blueberry.data.tokenizer.train_builtin_tokenizer`), small."""
    backend = RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                          show_progress=False))
    return backend


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """200 documents, a byte-level BPE tokenizer trained on them, the documents prepared as token data
    (a fifth held out for validation), and a small model trained on them for 4 steps (a run on disk)."""
    root = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(0)
    docs = [document(rng, int(rng.integers(40, 120))) for _ in range(200)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    byte_level_bpe(docs, 384).save(str(root / "tokenizer.json"))
    tokenizer = load_tokenizer(str(root / "tokenizer.json"))
    cfg = PrepareConfig(source=f"local:{root / 'docs.jsonl'}", tokenizer=str(root / "tokenizer.json"),
                        seq_len=SEQ_LEN, val_fraction=0.2)
    prepare(cfg, root / "data", progress=False)
    shape = ["vocab_size=384", "d_model=64", "n_layers=2", "n_heads=2", "n_kv_heads=1", "d_ff=128"]
    assert train_cli.main(["--no-progress", "--no-track", "--data", str(root / "data"), "--seq-len", str(SEQ_LEN),
                           *[arg for field in shape for arg in ("--model", field)], "--optimizer", "adamw",
                           "--train-tokens", str(4 * 8 * SEQ_LEN), "--batch-size", "8", "--eval-every", "0",
                           "--eval-tokens", str(SEQ_LEN),
                           "--device", "cpu", "--runs-dir", str(root / "runs"), "--run-name", "t"]) == 0
    run = open_run(run="t", runs_dir=root / "runs")
    return {"root": root, "docs": docs, "tokenizer": tokenizer, "data": open_data(str(root / "data"), SEQ_LEN),
            "run": run, "config": cfg}


# --- what the benchmark files hold ------------------------------------------------------------------------

HELLASWAG = [
    {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering "
     "the window of a car, and a woman wearing winter clothes smiles.", "ctx_b": "then",
     "ctx": "...", "split": "val", "split_type": "indomain", "label": 3,
     "endings": [", the man adds wax to the windshield and cuts it.",
                 (", a person board a ski lift, while two men supporting the head of the person wearing winter "
                  "clothes snow as the we girls sled."),
                 ", the man puts on a christmas coat, knitted with netting.",
                 ", the man continues removing the snow on his car."], "source_id": "activitynet~v_-1IBHYS3L-Y"},
    {"ind": 92, "activity_label": "Personal Care and Style", "ctx_a": "[header] How to dye your hair [title] "
     "Choose a color.", "ctx_b": "[step] Pick a shade close to your natural one.", "ctx": "...", "split": "val",
     "split_type": "zeroshot", "label": 0,
     "endings": ["[substeps] A  shade or two lighter works best.", "[title] Bleach everything first.",
                 "Shave your head.  [step] Then dye it.", "Use food colouring [title] only."],
     "source_id": "wikihow~12"},
]
ARC_AI2 = [
    {"id": "Mercury_7175875", "question": {"stem": "An astronomer observes that a planet rotates faster after a "
     "meteorite impact. Which is the most likely effect of this increase in rotation?",
     "choices": [{"text": "Planetary density will decrease.", "label": "A"}, {"text": "Planetary years will become "
                 "longer.", "label": "B"}, {"text": "Planetary days will become shorter.", "label": "C"},
                 {"text": "Planetary gravity will become stronger.", "label": "D"}]}, "answerKey": "C"},
    {"id": "NYSEDREGENTS_2015_4_8", "question": {"stem": "Which is a renewable resource?",
     "choices": [{"text": "coal", "label": "1"}, {"text": "wind", "label": "2"}, {"text": "oil", "label": "3"}]},
     "answerKey": "2"},
]
PIQA = [{"goal": "How do I ready a guinea pig cage for it's new occupants?",
         "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips.",
         "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material."},
        {"goal": "dresser", "sol1": "replace drawer with bobby pin ", "sol2": "finish, woodwork with bobby pin "}]
PIQA_LABELS = [0, 0]


def arc_hf(record):
    """AI2's jsonl record in `allenai/ai2_arc`'s layout."""
    q = record["question"]
    return {"id": record["id"], "question": q["stem"], "answerKey": record["answerKey"],
            "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def hf_layouts(root, records, split):
    """The same records as a parquet file, an arrow file, a `save_to_disk` directory (several splits)
    and a downloaded repository's directory (data files named by split)."""
    hf = [{**r, "label": str(r["label"])} if "endings" in r else r for r in records]  # Rowan/hellaswag: string labels
    ds = datasets.Dataset.from_list(hf)
    root.mkdir()
    ds.to_parquet(str(root / "file.parquet"))
    datasets.DatasetDict({split: ds, "train": ds.select([0])}).save_to_disk(str(root / "saved"))
    ds.save_to_disk(str(root / "arrow"))
    (root / "repo" / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "repo" / "data" / f"{split}-00000-of-00001.parquet"))
    ds.select([0]).to_parquet(str(root / "repo" / "data" / "train-00000-of-00001.parquet"))
    return [root / "file.parquet", next((root / "arrow").glob("*.arrow")), root / "saved", root / "repo"]


def test_hellaswag_questions_are_lm_evals_in_every_layout(tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks.hellaswag.utils import process_docs

    expected = [MultipleChoice(d["query"], tuple(d["choices"]), d["gold"])
                for d in process_docs(datasets.Dataset.from_list(HELLASWAG))]
    # WikiHow's brackets gone, and ctx_b lower-cased after its first character (`str.capitalize`), as lm-eval does.
    assert expected[1].query == "Personal Care and Style: How to dye your hair. Choose a color. pick a shade close " \
                                "to your natural one."
    paths = [write_jsonl(tmp_path / "hellaswag_val.jsonl", HELLASWAG),
             *hf_layouts(tmp_path / "hf", HELLASWAG, "validation")]
    for path in paths:
        assert read_questions(TaskSpec("hellaswag", path)) == expected, path


def test_arc_and_piqa_questions_in_every_layout(tmp_path):
    arc = [MultipleChoice("Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
                          "Which is the most likely effect of this increase in rotation?\nAnswer:",
                          tuple(c["text"] for c in ARC_AI2[0]["question"]["choices"]), 2),
           MultipleChoice("Question: Which is a renewable resource?\nAnswer:", ("coal", "wind", "oil"), 1)]
    arc_paths = [write_jsonl(tmp_path / "ARC-Easy-Test.jsonl", ARC_AI2),
                 write_jsonl(tmp_path / "arc_hf.jsonl", [arc_hf(r) for r in ARC_AI2]),
                 *hf_layouts(tmp_path / "arc", [arc_hf(r) for r in ARC_AI2], "test")]
    for path in arc_paths:
        assert read_questions(TaskSpec("arc_easy", path)) == arc, path

    piqa = [MultipleChoice(f"Question: {r['goal']}\nAnswer:", (r["sol1"], r["sol2"]), label)
            for r, label in zip(PIQA, PIQA_LABELS)]
    write_jsonl(tmp_path / "valid.jsonl", PIQA)
    (tmp_path / "valid-labels.lst").write_text("".join(f"{label}\n" for label in PIQA_LABELS))
    labelled = [{**r, "label": label} for r, label in zip(PIQA, PIQA_LABELS)]
    for path in [tmp_path / "valid.jsonl", *hf_layouts(tmp_path / "piqa", labelled, "validation")]:
        assert read_questions(TaskSpec("piqa", path)) == piqa, path
    # A split other than the default, named after the path.
    assert parse_tasks(f"arc_easy={tmp_path / 'arc' / 'saved'}@train") == [
        TaskSpec("arc_easy", tmp_path / "arc" / "saved", "train")]
    assert read_questions(parse_tasks(f"arc_easy={tmp_path / 'arc' / 'saved'}@train")[0]) == arc[:1]


# --- scoring against lm-evaluation-harness -----------------------------------------------------------------

def local_copy(task: str, config: str, data_file, split: str) -> str:
    """lm-eval's own task YAML (its prompt, choices, preprocessing and metrics) with only the data moved
    to a local jsonl file."""
    from lm_eval import tasks

    return (f"include: {Path(tasks.__file__).parent / config}\ntask: {task}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {data_file}\ntraining_split: null\n"
            f"validation_split: {split if split == 'validation' else 'null'}\n"
            f"test_split: {split if split == 'test' else 'null'}\n")


def synthetic_tasks(rng, docs):
    """Questions whose choices differ in length and wording, so acc and acc_norm can disagree."""
    arc, hellaswag = [], []
    for i in range(24):
        n = int(rng.integers(3, 6))
        texts = [" ".join(rng.choice(WORDS, int(rng.integers(1, 9)))) for _ in range(n)]
        labels = [str(k + 1) for k in range(n)] if i % 2 else list("ABCDE"[:n])
        arc.append({"question": docs[i][:int(rng.integers(20, 120))], "answerKey": labels[int(rng.integers(n))],
                    "choices": {"text": texts, "label": labels}})
        endings = [" ".join(rng.choice(WORDS, int(rng.integers(2, 12)))) + "." for _ in range(4)]
        hellaswag.append({"activity_label": docs[40 + i][:12], "ctx_a": docs[40 + i][12:80] + " [title] x",
                          "ctx_b": docs[40 + i][80:100], "endings": endings, "label": int(rng.integers(4))})
    return arc, hellaswag


def test_acc_and_acc_norm_equal_lm_evals(corpus, tmp_path):
    """The same questions through lm-eval (its own arc_easy and hellaswag task configs, its tokenization
    of requests, its metrics) and through ours give exactly the same acc and acc_norm."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from blueberry.evals.harness import BlueberryLM

    arc, hellaswag = synthetic_tasks(np.random.default_rng(1), corpus["docs"])
    arc_file, hellaswag_file = write_jsonl(tmp_path / "arc.jsonl", arc), write_jsonl(tmp_path / "hs.jsonl", hellaswag)
    (tmp_path / "arc.yaml").write_text(local_copy("local_arc", "arc/arc_easy.yaml", arc_file, "test"))
    (tmp_path / "hellaswag.yaml").write_text(local_copy("local_hellaswag", "hellaswag/hellaswag.yaml", hellaswag_file,
                                                        "validation"))

    lm = BlueberryLM.create_from_arg_string(f"run=t,runs_dir={corpus['root'] / 'runs'}", {"batch_size": 4})
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)  # our two tasks, not its thousands
    run = corpus["run"]
    for task, name, path in (("local_arc", "arc_easy", arc_file), ("local_hellaswag", "hellaswag", hellaswag_file)):
        # One task per call: lm-eval batches all tasks' requests together, we score a task at a time.
        output = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, num_fewshot=0,
                                         bootstrap_iters=0)
        harness = output["results"][task]
        questions = read_questions(TaskSpec(name, path))
        assert output["n-samples"][task]["effective"] == len(questions) == 24
        ours = evaluate_tasks(run.model, run.tokenizer, {name: questions}, batch_size=4)
        assert (ours[f"{name}/acc"], ours[f"{name}/acc_norm"]) == (harness["acc,none"], harness["acc_norm,none"])


def test_harness_rolling_log_likelihood_and_greedy_generation(corpus):
    """A text that fits one window: lm-eval's rolling log-likelihood is that of the text after EOS.
    Generation stops before the first `until` string, and is otherwise the greedy continuation."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from blueberry.evals.harness import BlueberryLM

    run = corpus["run"]
    scorer = LMScorer(run.model, run.tokenizer)
    lm = BlueberryLM(scorer)
    texts = [corpus["docs"][0][:100], corpus["docs"][1][:60]]
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0) for text in texts])
    assert rolling == pytest.approx([ll for ll, _ in scorer.loglikelihood([("", text) for text in texts])], rel=1e-6)

    free = scorer.generate_until("Story the river", max_new_tokens=16)
    stop = free[len(free) // 2:len(free) // 2 + 2]
    assert len(free) >= 4 and stop
    cut = lm.generate_until([Instance("generate_until", {}, ("Story the river", {"until": [stop], "max_gen_toks": 16}),
                                      0)])
    assert cut == [free[:free.index(stop)]]


def test_batching_and_request_order_do_not_change_log_likelihoods(corpus):
    run = corpus["run"]
    requests = [("Story the river", " opens slowly."), ("", "Story"), ("Story a café ", "near the bridge"),
                (corpus["docs"][0] * 3, " always")]  # the last one cut from the left to the model's context
    one = LMScorer(run.model, run.tokenizer, batch_size=1).loglikelihood(requests)
    many = LMScorer(run.model, run.tokenizer, batch_size=3).loglikelihood(requests[::-1])[::-1]
    assert [g for _, g in one] == [g for _, g in many]
    assert np.allclose([ll for ll, _ in one], [ll for ll, _ in many], rtol=1e-5, atol=1e-5)


def test_multiple_choice_follows_lm_evals_definitions(corpus):
    """acc: the largest summed log-likelihood of " " + choice; acc_norm: per character of the choice."""
    run = corpus["run"]
    scorer = LMScorer(run.model, run.tokenizer)
    query, choices = "Story the river opens", ("slowly.", "near the quiet bridge.", "always")
    ll = np.array([x for x, _ in scorer.loglikelihood([(query, " " + c) for c in choices])])
    lengths = np.array([len(c) for c in choices], dtype=float)
    for label in range(3):
        result = multiple_choice(scorer, [MultipleChoice(query, choices, label)])
        assert result.acc == float(np.argmax(ll) == label)
        assert result.acc_norm == float(np.argmax(ll / lengths) == label)
        assert result.chance == pytest.approx(1 / 3)


# --- bits per byte -----------------------------------------------------------------------------------------

def test_token_byte_lengths_count_utf8_bytes(corpus):
    tokenizer = corpus["tokenizer"]
    lengths = token_byte_lengths(tokenizer)
    for text in ("naïve café über Zürich", "東京 ✓ déjà façade", "ab€cd 😀 \n\t end"):
        assert lengths[tokenizer.encode_batch([text])[0]].sum() == len(text.encode("utf-8"))
    assert lengths[tokenizer.eos_id] == 0


def test_bits_per_byte_equals_a_naive_float64_computation(corpus):
    run, data, tokenizer = corpus["run"], corpus["data"], corpus["tokenizer"]
    reference = copy.deepcopy(run.model).double()
    nats, text = 0.0, []
    for batch in data.val_batches(4, 6 * SEQ_LEN):
        logp = torch.log_softmax(reference(batch[:, :-1]).logits.double(), dim=-1)
        for row, targets in zip(logp, batch[:, 1:]):
            keep = targets != tokenizer.eos_id
            nats -= row[keep].gather(-1, targets[keep, None]).sum().item()
            text.append(tokenizer.decode(targets[keep].tolist()))
    decoded = "".join(text)
    assert "\ufffd" not in decoded  # every target row holds whole characters, so its text has their bytes
    expected = nats / (math.log(2) * len(decoded.encode("utf-8")))
    assert evaluate_tasks(run.model, tokenizer, {"bpb": data}, limit=6)["bpb"] == pytest.approx(expected, rel=1e-5)


# --- the built-in cloze task ------------------------------------------------------------------------------

def test_validation_texts_are_the_held_out_documents(corpus):
    cfg = corpus["config"]
    held_out = [d for i, d in enumerate(corpus["docs"]) if is_validation_document(i, cfg.seed, cfg.val_fraction)]
    texts = validation_texts(corpus["data"], corpus["tokenizer"])
    assert len(held_out) - 1 <= len(texts) <= len(held_out)  # the last may be cut off by the split's end
    assert texts == held_out[:len(texts)]


def test_cloze_is_deterministic_and_takes_its_answer_from_the_same_document(corpus):
    texts = validation_texts(corpus["data"], corpus["tokenizer"])
    questions = cloze_questions(texts, questions=60)
    assert questions == cloze_questions(texts, questions=60)
    assert questions != cloze_questions(texts, questions=60, seed=1)
    assert len(questions) == 60 and len({q.label for q in questions}) == 4
    for q in questions:
        assert len(set(q.choices)) == 4 and all(len(c.split()) == 8 for c in q.choices)
        source = [d for d, text in enumerate(texts) if text.startswith(q.query)]
        assert len(source) == 1
        rest = texts[source[0]][len(q.query):]
        assert rest[:1].isspace() and rest.lstrip().startswith(q.choices[q.label])
        for k, choice in enumerate(q.choices):
            if k != q.label:
                assert any(choice in text for d, text in enumerate(texts) if d != source[0])


# --- CORE, the training hook ---------------------------------------------------------------------------------

def test_core_centres_accuracy_at_chance():
    assert centered(0.25, 0.25) == 0 and centered(1.0, 0.25) == 1
    assert centered(0.5, 0.25) == pytest.approx(1 / 3)
    results = [ChoiceResult(acc=0.4, acc_norm=0.5, chance=0.25, questions=100),
               ChoiceResult(acc=0.6, acc_norm=0.75, chance=0.5, questions=100)]
    assert core_score(results) == pytest.approx((1 / 3 + 0.5) / 2)


def test_core_uses_the_mean_chance_of_tasks_with_varying_choice_counts(corpus):
    run = corpus["run"]
    questions = [MultipleChoice("Story the", tuple(WORDS[:n]), 0) for n in (2, 3, 5)]
    metrics = evaluate_tasks(run.model, run.tokenizer, {"mixed": questions})
    chance = (1 / 2 + 1 / 3 + 1 / 5) / 3
    assert metrics["core"] == pytest.approx((metrics["mixed/acc_norm"] - chance) / (1 - chance))


def test_downstream_eval_hook_reports_to_the_tracker_on_its_cadence(corpus):
    tasks = {"cloze": cloze_questions(validation_texts(corpus["data"], corpus["tokenizer"]), questions=8),
             "bpb": corpus["data"]}
    tracker = History()
    hook = DownstreamEval(tasks, corpus["tokenizer"], report=tracker, limit=2)
    task = LMTask(ModelConfig(vocab_size=384, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                              seq_len=SEQ_LEN))
    train_cfg = TrainConfig(train_tokens=5 * 2 * SEQ_LEN, batch_size=2, eval_every=0, eval_tokens=2 * SEQ_LEN,
                            optimizer="adamw", device="cpu")
    train(task, train_cfg, corpus["data"], Hooks().add(tracker).add(hook, every=2))
    downstream = [e for e in tracker.evals if "core" in e.metrics]
    assert [e.step for e in downstream] == [2, 4, 5] == [e.step for e in hook.history]
    assert set(downstream[0].metrics) == {"cloze/acc", "cloze/acc_norm", "bpb", "core"}



def test_downstream_eval_at_the_loops_evaluations_scores_the_same_steps(corpus):
    # every=0, as a sweep's trials use it: scored right after each of the loop's evaluations, the last one
    # included, so each report to Tune carries the loss and the downstream metrics of one and the same step.
    tasks = {"cloze": cloze_questions(validation_texts(corpus["data"], corpus["tokenizer"]), questions=8)}
    evaluations = History()
    hook = DownstreamEval(tasks, corpus["tokenizer"], report=Hook(), every=0, limit=2)
    task = LMTask(ModelConfig(vocab_size=384, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                              seq_len=SEQ_LEN))
    train_cfg = TrainConfig(train_tokens=5 * 2 * SEQ_LEN, batch_size=2, eval_every=2, eval_tokens=2 * SEQ_LEN,
                            optimizer="adamw", device="cpu")
    train(task, train_cfg, corpus["data"], Hooks([evaluations, hook]))
    assert [e.step for e in evaluations.evals] == [2, 4, 5] == [e.step for e in hook.history]
    assert all(set(e.metrics) == {"cloze/acc", "cloze/acc_norm", "core"} for e in hook.history)


# --- the command ------------------------------------------------------------------------------------------

def test_eval_command_scores_a_run_and_writes_json(corpus, tmp_path, capsys):
    arc = write_jsonl(tmp_path / "ARC-Easy-Test.jsonl", ARC_AI2)
    out = tmp_path / "eval.json"
    assert eval_cli.main(["--run", "t", "--runs-dir", str(corpus["root"] / "runs"), "--tasks",
                          f"arc_easy={arc},cloze,bpb", "--data", str(corpus["root"] / "data"), "--limit", "40",
                          "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "arc_easy" in table and "cloze" in table and "bpb" in table and "core" in table
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"arc_easy/acc", "arc_easy/acc_norm", "cloze/acc", "cloze/acc_norm", "bpb",
                                      "core"}
    val_sequences = corpus["data"].manifest.splits["val"].sequences
    assert result["counts"] == {"arc_easy": 2, "cloze": 40, "bpb": min(40, val_sequences)}


def bad_files(tmp_path):
    write_jsonl(tmp_path / "no_endings.jsonl", [{k: v for k, v in HELLASWAG[0].items() if k != "endings"}])
    (tmp_path / "broken.jsonl").write_text(json.dumps(HELLASWAG[0]) + "\n{not json\n")
    write_jsonl(tmp_path / "valid.jsonl", PIQA)
    write_jsonl(tmp_path / "arc_bad_key.jsonl", [{**ARC_AI2[0], "answerKey": "Z"}])
    datasets.Dataset.from_list([arc_hf(ARC_AI2[0])]).remove_columns("answerKey").to_parquet(str(tmp_path / "a.parquet"))
    (tmp_path / "notes.txt").write_text("hello")
    return [
        ("hellaswag=missing.jsonl", "missing.jsonl does not exist (expected HellaSwag records"),
        ("hellaswag=no_endings.jsonl", "no_endings.jsonl line 1 does not fit task hellaswag (no field 'endings')"),
        ("hellaswag=broken.jsonl", "broken.jsonl line 2 is not JSON"),
        ("piqa=valid.jsonl", "valid.jsonl holds no labels and"),
        ("arc_easy=arc_bad_key.jsonl", "arc_bad_key.jsonl line 1 does not fit task arc_easy"),
        ("arc_easy=a.parquet", "a.parquet record 1 does not fit task arc_easy (no field 'answerKey')"),
        ("arc_easy=notes.txt", "notes.txt is neither .jsonl, .json, .parquet nor .arrow"),
        ("winogrande=x.jsonl", "unknown task 'winogrande'"),
        ("hellaswag", "task hellaswag needs its file"),
        ("cloze=x", "task cloze is built in and takes no file"),
    ]


def test_bad_task_files_are_one_line_errors(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = bad_files(tmp_path)
    capsys.readouterr()
    for tasks, message in cases:
        code = eval_cli.main(["--run", "t", "--runs-dir", str(corpus["root"] / "runs"), "--tasks", tasks])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and err.startswith("blueberry-eval: error: "), (tasks, err)
        assert message in err, (tasks, err)


def test_bpb_refuses_data_of_another_tokenizer(corpus, tmp_path, capsys):
    other = tmp_path / "other"
    byte_level_bpe(corpus["docs"], 320).save(str(tmp_path / "other.json"))
    prepare(PrepareConfig(source=f"local:{corpus['root'] / 'docs.jsonl'}", tokenizer=str(tmp_path / "other.json"),
                          seq_len=SEQ_LEN, val_fraction=0.2), other, progress=False)
    code = eval_cli.main(["--run", "t", "--runs-dir", str(corpus["root"] / "runs"), "--tasks", "bpb", "--data",
                          str(other)])
    assert code == 2 and "not the run's tokenizer" in capsys.readouterr().err
