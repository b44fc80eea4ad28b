"""Decoding: the KV cache gives the logits of a full forward over the same tokens, for batched prompts
of different lengths (left-padded), both MLP kinds; greedy decoding is step-by-step argmax; sampling
keeps exactly the top-k / top-p sets (against a naive computation), is reproducible by seed; EOS and
the token limit stop each row; and `blueberry-generate` streams a trained run's text with its tokenizer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blueberry.errors import UserError
from blueberry.models.lm.config import ModelConfig
from blueberry.models.lm.generate import Generator, Sampling, sample
from blueberry.models.lm.model import Blueberry, KVCache

PROMPTS = [[5, 17, 3, 44, 9], [8, 1, 2, 60, 33, 21, 70, 4, 12, 90, 11], [31, 7, 7, 50, 2, 66, 3, 19]]


def small_model(mlp: str = "relu2", seed: int = 0) -> Blueberry:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=97, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=128, mlp=mlp, seq_len=48)
    model = Blueberry(cfg).eval()
    with torch.no_grad():  # larger than the init's 0.02, so the logits differ enough to test with
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(10)
    return model


@pytest.mark.parametrize("mlp", ["relu2", "swiglu"])
def test_cached_decoding_gives_the_full_forwards_logits_for_prompts_of_different_lengths(mlp):
    model = small_model(mlp)
    continuation = [[13, 88, 2, 40, 6, 71], [3, 3, 95, 14, 0, 52], [60, 9, 27, 81, 5, 44]]
    longest = max(map(len, PROMPTS))
    pad = torch.tensor([longest - len(p) for p in PROMPTS])
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in PROMPTS])
    cache = KVCache(model.cfg, len(PROMPTS), longest + 6, pad)
    with torch.no_grad():
        steps = [model(ids, cache=cache).logits]  # prefill
        for t in range(5):
            steps.append(model(torch.tensor([[c[t]] for c in continuation]), cache=cache).logits)
        cached = torch.cat(steps, dim=1)  # (B, longest + 5, V)
        for row, (prompt, more) in enumerate(zip(PROMPTS, continuation)):
            full = model(torch.tensor([prompt + more[:5]])).logits[0]
            torch.testing.assert_close(cached[row, pad[row]:], full, rtol=0, atol=1e-5)


def test_greedy_decoding_is_step_by_step_argmax():
    model = small_model()
    out = Generator(model).generate(PROMPTS, max_new_tokens=12, sampling=Sampling(temperature=0))
    for prompt, new in zip(PROMPTS, out):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(12):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert new == ids[len(prompt):]


def test_each_row_stops_at_its_eos_and_the_rest_decode_on():
    model = small_model()
    greedy = Generator(model).generate(PROMPTS, max_new_tokens=10, sampling=Sampling(temperature=0))
    eos = greedy[1][3]  # row 1's fourth token
    stopped = Generator(model, eos_id=eos).generate(PROMPTS, max_new_tokens=10, sampling=Sampling(temperature=0))
    for full, cut in zip(greedy, stopped):
        expected = full[:full.index(eos) + 1] if eos in full else full
        assert cut == expected  # up to and including its EOS; rows without one run to the limit
    assert len(stopped[1]) == 4


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = small_model()
    engine = Generator(model)
    warm = Sampling(temperature=1.0)
    assert engine.generate(PROMPTS, 10, warm, seed=3) == engine.generate(PROMPTS, 10, warm, seed=3)
    assert engine.generate(PROMPTS, 10, warm, seed=3) != engine.generate(PROMPTS, 10, warm, seed=4)
    greedy = engine.generate(PROMPTS, 10, Sampling(temperature=0))
    assert engine.generate(PROMPTS, 10, Sampling(temperature=1.5, top_k=1), seed=1) == greedy
    assert engine.generate(PROMPTS, 10, Sampling(temperature=1.5, top_p=1e-6), seed=1) == greedy


def naive_top_p(probs: list[float], p: float) -> set[int]:
    """The smallest set of most likely tokens whose total probability reaches p."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, total = set(), 0.0
    for i in order:
        kept.add(i)
        total += probs[i]
        if total >= p:
            break
    return kept


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.6), (0, 0.9), (4, 0.8)])
def test_top_k_and_top_p_sample_exactly_the_allowed_tokens(top_k, top_p):
    logits = torch.tensor([[2.0, 0.5, 1.2, -1.0, 3.0, 0.0, 1.9, -0.3]], dtype=torch.float64)
    allowed = set(range(8))
    scaled = logits[0].float()
    if top_k:
        allowed = set(scaled.topk(top_k).indices.tolist())
        scaled = torch.tensor([v if i in allowed else float("-inf") for i, v in enumerate(scaled.tolist())])
    allowed &= naive_top_p(scaled.softmax(-1).tolist(), top_p)
    generator = torch.Generator().manual_seed(0)
    draws = sample(logits.repeat(4000, 1), Sampling(1.0, top_k, top_p), generator)
    seen = set(draws.tolist())
    assert seen == allowed
    # Within the kept set, frequencies follow the renormalised probabilities.
    probs = torch.zeros(8, dtype=torch.float64)
    probs[list(allowed)] = logits[0, list(allowed)].softmax(-1)
    frequency = torch.bincount(draws, minlength=8).double() / len(draws)
    assert torch.allclose(frequency, probs, atol=0.03)


def test_limits_and_bad_settings():
    model = small_model()
    engine = Generator(model)
    assert all(len(new) == 7 for new in engine.generate(PROMPTS, 7, Sampling(temperature=0)))
    long_prompt = list(range(1, 60))  # longer than the context: its last tokens are kept
    (new,) = engine.generate([long_prompt], 8, Sampling(temperature=0))
    (same,) = engine.generate([long_prompt[-40:]], 8, Sampling(temperature=0))
    assert new == same
    with pytest.raises(UserError, match="no room for a prompt"):
        engine.generate(PROMPTS, 48)
    for bad in (dict(temperature=-1), dict(top_k=-2), dict(top_p=0), dict(top_p=1.5)):
        with pytest.raises(UserError):
            Sampling(**bad)


@pytest.mark.slow
def test_blueberry_generate_streams_a_trained_runs_text(quick_run_dir, capsys):
    """On a run trained by `blueberry-train`: greedy output equals the engine's, decoded with the run's
    tokenizer; several prompts print under headers; bad flags give one line and exit 2."""
    runs_dir, name = quick_run_dir
    command = [sys.executable, "-m", "blueberry.cli.generate", "--run", name, "--runs-dir", str(runs_dir)]
    greedy = subprocess.run([*command, "--prompt", "Once upon a time", "--temperature", "0",
                             "--max-new-tokens", "20"], capture_output=True, text=True, timeout=120)
    assert greedy.returncode == 0, greedy.stderr
    from blueberry.inference.run import open_run

    run = open_run(name, runs_dir)
    ids = run.tokenizer.encode_batch(["Once upon a time"])
    (new,) = Generator(run.model, run.tokenizer.eos_id).generate(ids, 20, Sampling(temperature=0))
    new = new[:-1] if new and new[-1] == run.tokenizer.eos_id else new
    assert greedy.stdout == "Once upon a time" + run.tokenizer.decode(new) + "\n"

    from blueberry.cli.generate import main as generate

    # --compile decodes the same greedy text with the compiled engine (the step compiled whole).
    compiled = [*command[3:], "--prompt", "Once upon a time", "--temperature", "0", "--max-new-tokens", "20",
                "--compile"]
    assert generate(compiled) == 0
    assert capsys.readouterr().out == greedy.stdout

    assert generate(["--run", name, "--runs-dir", str(runs_dir), "--prompt", "The", "--prompt", "A",
                     "--num-samples", "2", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- prompt") == 4 and "--- prompt 2, sample 2 ---" in out

    for bad, message in [(["--prompt", "x", "--top-p", "0"], "--top-p"),
                         (["--prompt", "x", "--top-k", "-1"], "--top-k"),
                         (["--prompt", "x", "--max-new-tokens", "100000"], "no room for a prompt"),
                         (["--prompt", "x", "--run", "nope"], "no run 'nope'")]:
        args = ["--runs-dir", str(runs_dir), *bad] + ([] if "--run" in bad else ["--run", name])
        assert generate(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_training_logs_samples_and_downstream_scores_at_evaluations(builtin_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from blueberry.cli.train import main as train_main

    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQLite store's artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert train_main(["--data", str(builtin_dir), "--train-tokens", "20480", "--batch-size", "4", "--eval-every", "10",
                       "--tracking-uri", uri, "--runs-dir", str(tmp_path / "runs"), "--run-name", "s", "--no-progress",
                       "--sample-prompt", "Once upon a time", "--sample-prompt", "The king",
                       "--sample-tokens", "6", "--eval-tasks", "cloze", "--eval-tasks-every", "10",
                       "--eval-tasks-limit", "16"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("blueberry-train").experiment_id])
    files = sorted(a.path for a in client.list_artifacts(run.info.run_id, "samples"))
    assert files == ["samples/step-00000010.txt", "samples/step-00000020.txt"]  # each evaluation, the last too
    text = Path(client.download_artifacts(run.info.run_id, files[-1], str(tmp_path))).read_text()
    assert text.startswith("step 20, 20,480 tokens, val loss ")
    assert "\n\nOnce upon a time" in text and "\n\nThe king" in text
    # --eval-tasks: the downstream scores at their own cadence, beside the validation loss.
    history = client.get_metric_history(run.info.run_id, "val/cloze/acc")
    assert [m.step for m in history] == [10, 20] and all(0 <= m.value <= 1 for m in history)
    assert train_main(["--data", str(builtin_dir), "--eval-tasks", "nope", "--no-track"]) == 2  # before training
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["s"]
