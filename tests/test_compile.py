"""Whole graphs (issue #27). Each kind's training step (dense and MoE language models, the DiT, the VQ-VAE)
compiles into one graph, with no graph break and no recompile across steps, under bf16 autocast on the CPU,
and trains exactly as it does eagerly; the MoE's grouped dispatch equals the looped dispatch it replaced in
float64 (outputs, every gradient, the balancing loss); the grouped matmul equals a matmul per group; and the
compiled decode step gives the eager engine's logits and tokens, one graph per batch size, call after call.

The training-step tests compile with the `aot_eager` backend (`torch._dynamo.config.debug_backend_override`):
graph breaks and recompiles are decided by TorchDynamo's tracing and guards, which every backend shares, and
AOTAutograd still traces forward and backward through fake tensors; only Inductor's code generation, tens of
seconds of C++ compilation per graph on two cores, is left out. Inductor itself compiles the dense model in
tests/test_train.py and the decode step here.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from blueberry.bench.compile_watch import CompileWatch
from blueberry.core.config import TrainConfig, replace
from blueberry.core.hooks import History
from blueberry.core.loop import train
from blueberry.errors import UserError
from blueberry.data.images import ImageShards
from blueberry.models.dit.config import dit_tiny
from blueberry.models.dit.task import DiTTask
from blueberry.models.lm.config import BUILTIN_VOCAB_SIZE, ModelConfig
from blueberry.models.lm.generate import CompiledGenerator, Generator, Sampling
from blueberry.models.lm.grouped_mm import grouped_mm
from blueberry.models.lm.model import Blueberry, MoE, dispatch_looped
from blueberry.models.lm.task import LMTask
from blueberry.models.vqvae.config import vqvae_tiny
from blueberry.models.vqvae.task import VQVAETask

AOT_EAGER = {"debug_backend_override": ">=0:aot_eager"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tracing is Python's work, and the models are tiny: one thread, so the tests do not fight the suite's
    other processes for the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(private_cache) -> ImageShards:
    from pipelines.images.prepare import prepared_image_dir

    return ImageShards.open(prepared_image_dir("builtin", progress=False))


def small_lm(n_experts: int = 0, seq_len: int = 256) -> ModelConfig:
    return ModelConfig(vocab_size=BUILTIN_VOCAB_SIZE, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                       seq_len=seq_len, n_experts=n_experts)


def kind_case(kind: str, builtin_data, digits) -> tuple:
    """(task, data, train config) for a few bf16 steps of a small model of `kind`."""
    lm = TrainConfig(train_tokens=4 * 2 * 256, batch_size=2, eval_every=0, eval_tokens=2 * 256, device="cpu",
                     precision="bf16", compile_warmup_steps=1)
    images = replace(lm, train_tokens=4 * 16, batch_size=16, eval_tokens=16, optimizer="adamw", adamw_lr=1e-3)
    return {
        "lm": (LMTask(small_lm()), builtin_data, lm),
        "lm-moe": (LMTask(small_lm(n_experts=4)), builtin_data, lm),
        "dit": (DiTTask(replace(dit_tiny(), eval_samples=0)), digits, images),
        "vqvae": (VQVAETask(vqvae_tiny()), digits, images),
    }[kind]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lm", "lm-moe", "dit", "vqvae"])
def test_every_kinds_training_step_compiles_whole_and_trains_as_eagerly(kind, builtin_data, digits):
    task, data, cfg = kind_case(kind, builtin_data, digits)
    eager = History()
    train(task, cfg, data, [eager])
    compiled, watch = History(), CompileWatch()
    with torch._dynamo.config.patch(**AOT_EAGER):
        train(task, replace(cfg, compile=True), data, [compiled, watch])
    assert watch.as_dict() == {"graphs": 1, "graph_breaks": 0, "recompiles": 0}
    # The same steps: the warm-up left no trace (no optimizer step, the random draws and the VQ-VAE's codebook
    # put back), and the traced graph computes what the eager modules do.
    assert [s.loss for s in compiled.steps] == pytest.approx([s.loss for s in eager.steps], rel=1e-5)


def test_grouped_mm_is_a_matmul_per_group_with_its_gradients():
    ends = torch.tensor([3, 3, 9, 12], dtype=torch.int32)  # groups of 3, 0, 6 and 3 rows
    for dtype in (torch.float32, torch.float64):  # PyTorch's grouped kernel; a product per group
        x = torch.randn(12, 8, dtype=dtype, requires_grad=True)
        w = torch.randn(4, 8, 16, dtype=dtype, requires_grad=True)
        out = grouped_mm(x, w, ends)
        starts = [0, 3, 3, 9]
        expected = torch.cat([x[s:e] @ w[g] for g, (s, e) in enumerate(zip(starts, ends.tolist()))])
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
        grad = torch.randn_like(out)
        dx, dw = torch.autograd.grad(out, (x, w), grad)
        ex, ew = torch.autograd.grad(expected, (x, w), grad)
        torch.testing.assert_close(dx, ex, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
        torch.testing.assert_close(dw, ew, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
        assert dw[1].abs().max() == 0  # the empty group's matrix touches no row


@pytest.mark.parametrize("mlp,top_k", [("relu2", 2), ("swiglu", 2), ("relu2", 1), ("swiglu", 3)])
def test_moe_grouped_dispatch_equals_the_looped_dispatch_in_float64(mlp, top_k):
    cfg = ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32, seq_len=8, mlp=mlp,
                      n_experts=4, experts_top_k=top_k, moe_aux_loss_weight=1.0)
    torch.manual_seed(0)
    grouped = MoE(cfg).double()
    looped = copy.deepcopy(grouped)
    looped.dispatch = dispatch_looped
    x = torch.randn(3, 8, 16, dtype=torch.float64)
    outputs = []
    for moe in (grouped, looped):
        xi = x.clone().requires_grad_()
        out, aux = moe(xi)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().add(aux).backward()
        outputs.append((out, aux, xi.grad, [p.grad for p in moe.parameters()]))
    (out_g, aux_g, dx_g, grads_g), (out_l, aux_l, dx_l, grads_l) = outputs
    torch.testing.assert_close(out_g, out_l, rtol=0, atol=1e-12)
    torch.testing.assert_close(aux_g, aux_l, rtol=0, atol=1e-12)
    torch.testing.assert_close(dx_g, dx_l, rtol=0, atol=1e-12)
    for name, g, l in zip([n for n, _ in grouped.named_parameters()], grads_g, grads_l):
        torch.testing.assert_close(g, l, rtol=0, atol=1e-12, msg=name)
    assert all(g.abs().max() > 0 for g in grads_g)  # every expert and the router received a gradient


def looped_reference(d_model: int) -> MoE:
    """A float64 MoE (4 experts, top-2) with the looped dispatch: the reference the grouped one is held to."""
    cfg = ModelConfig(vocab_size=50, d_model=d_model, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=2 * d_model,
                      seq_len=8, n_experts=4, experts_top_k=2)
    torch.manual_seed(0)
    reference = MoE(cfg).double()
    reference.dispatch = dispatch_looped
    return reference


def test_moe_in_float32_runs_the_grouped_kernel_to_float32_precision():
    reference = looped_reference(16)
    fast = copy.deepcopy(reference).float()
    x = torch.randn(3, 8, 16, dtype=torch.float64)
    torch.testing.assert_close(fast(x.float())[0].double(), reference(x)[0], rtol=0, atol=1e-6)


def decode_model() -> Blueberry:
    torch.manual_seed(0)
    model = Blueberry(small_lm(seq_len=48)).eval()
    with torch.no_grad():  # larger than the init's 0.02, so the logits differ enough to test with
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(10)
    return model


PROMPTS = [[5, 17, 3, 44, 9], [8, 1, 2, 60, 33, 21, 70, 4, 12, 90, 11], [31, 7, 7, 50, 2, 66, 3, 19]]


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_engines_logits_with_one_graph_per_batch_size():
    from torch._dynamo.utils import counters

    model = decode_model()
    eager, compiled = Generator(model), CompiledGenerator(model, max_len=32)
    graphs = counters["stats"]["unique_graphs"]
    for prompts, new in ((PROMPTS, 12), (PROMPTS[::-1], 7)):  # the second call: other prompts, the same graph
        steps = zip(eager.stream(prompts, new, Sampling(temperature=0)),
                    compiled.stream(prompts, new, Sampling(temperature=0)), strict=True)
        for ours, theirs in steps:
            torch.testing.assert_close(theirs.logits, ours.logits, rtol=0, atol=1e-5)
            assert torch.equal(theirs.tokens, ours.tokens)
    assert counters["stats"]["unique_graphs"] - graphs == 1
    # Sampling draws the same tokens from the same logits with the same seed.
    warm = Sampling(temperature=1.0, top_k=20)
    assert compiled.generate(PROMPTS, 10, warm, seed=3) == eager.generate(PROMPTS, 10, warm, seed=3)
    assert counters["stats"]["unique_graphs"] - graphs == 1


@pytest.mark.slow
def test_the_gpu_benchmarks_dry_run_writes_its_report(tmp_path, builtin_dir):
    from blueberry.bench import gpu

    # The dry run's plan, cut to the speedrun row and a shorter decode table: the other training rows are the
    # same row for other kinds, whose compiles the tests above check. Traced as on the GPU, without Inductor's
    # C++ (the module docstring).
    plan = gpu.dry_run_plan()
    plan = replace(plan, training=plan.training[:1], decode=replace(plan.decode, new_tokens=8, repeats=1))
    with torch._dynamo.config.patch(**AOT_EAGER):
        gpu.run(plan, tmp_path, budget_s=600, only=("nano-88m", "decode"), command="test", dry_run=True)
    report = json.loads((tmp_path / gpu.JSON_NAME).read_text())
    assert report["dry_run"] and report["device"] == "cpu" and report["skipped"] == []
    (speedrun,) = report["training"]
    assert speedrun["name"] == "nano-88m" and speedrun["preset"] == "tiny" and speedrun["units_per_s"] > 0
    assert (speedrun["graphs"], speedrun["graph_breaks"], speedrun["recompiles"]) == (1, 0, 0)
    assert speedrun["mfu"] is None and speedrun["peak_memory_gb"] is None  # no peak FLOP/s or GPU memory on a CPU
    assert speedrun["speedrun_s"] == pytest.approx(gpu.SPEEDRUN_TOKENS / speedrun["units_per_s"])
    decode = report["decode"]
    assert [row["batch"] for row in decode["rows"]] == [1, 8, 64] and decode["reference"] == "ApertusForCausalLM"
    for row in decode["rows"]:
        assert set(row["tokens_per_s"]) == {"eager", "compiled", "transformers"}
        assert all(row["same_tokens"].values()), row  # float32 greedy: the three engines agree token for token
    table = (tmp_path / gpu.MARKDOWN_NAME).read_text()
    assert table == gpu.markdown(report)
    assert "| nano-88m | tiny | 8 x 256 |" in table and "| 64 |" in table


def test_the_gpu_benchmark_records_what_it_skipped_and_why(tmp_path, capsys):
    from blueberry.bench import gpu

    assert gpu.main(["--out", str(tmp_path), "--dry-run", "--budget-s", "0", "--only", "decode", "dit-cifar"]) == 0
    report = json.loads((tmp_path / gpu.JSON_NAME).read_text())
    assert report["skipped"] == [{"what": name, "why": "the time budget of 0 s was spent"}
                                 for name in ("decode", "dit-cifar")]
    assert report["training"] == [] and report["decode"] is None
    assert "skipped decode: the time budget of 0 s was spent" in capsys.readouterr().out
    assert "- dit-cifar: the time budget of 0 s was spent" in (tmp_path / gpu.MARKDOWN_NAME).read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_gpu_benchmark_without_a_gpu_asks_for_the_dry_run_and_writes_nothing(tmp_path, capsys):
    from blueberry.bench import gpu

    assert gpu.main(["--out", str(tmp_path / "out")]) == 2
    assert "--dry-run" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_paste_puts_the_report_between_the_markers_and_refuses_a_file_without_them(tmp_path, capsys):
    from blueberry.bench import gpu

    doc, table = tmp_path / "benchmarks.md", tmp_path / "gpu-bench.md"
    doc.write_text(f"# Benchmarks\n\n### GPU\n\n{gpu.PASTE_BEGIN}\nold figures\n{gpu.PASTE_END}\n\n## Decoding\n")
    table.write_text("| run | tokens/s |\n| --- | --- |\n| nano-88m | 1 |\n")
    assert gpu.main(["--paste", str(table), "--doc", str(doc)]) == 0
    assert doc.read_text() == (f"# Benchmarks\n\n### GPU\n\n{gpu.PASTE_BEGIN}\n| run | tokens/s |\n| --- | --- |\n"
                               f"| nano-88m | 1 |\n{gpu.PASTE_END}\n\n## Decoding\n")
    bare = tmp_path / "bare.md"
    bare.write_text("# nothing to replace\n")
    assert gpu.main(["--paste", str(table), "--doc", str(bare)]) == 2
    assert bare.read_text() == "# nothing to replace\n"
    assert "has no <!-- gpu-bench:begin --> ... <!-- gpu-bench:end --> block" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_compiled_decode_replays_cuda_graphs_with_the_eager_engines_logits():
    from torch._dynamo.utils import counters

    model = decode_model().cuda()
    eager, compiled = Generator(model), CompiledGenerator(model, max_len=32)
    skips = counters["inductor"]["cudagraph_skips"]
    for _ in range(2):  # the second call replays what the first recorded
        for ours, theirs in zip(eager.stream(PROMPTS, 12, Sampling(temperature=0)),
                                compiled.stream(PROMPTS, 12, Sampling(temperature=0)), strict=True):
            # fp32 (no TF32 by default); cuBLAS and Triton pick their reduction orders by shape: 1e-4 of logits up to ~10.
            torch.testing.assert_close(theirs.logits, ours.logits, rtol=0, atol=1e-4)
            assert torch.equal(theirs.tokens, ours.tokens)
    assert counters["inductor"]["cudagraph_skips"] == skips  # every step ran as a CUDA graph


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_grouped_kernel_in_bf16_computes_the_looped_moe():
    reference = looped_reference(64)
    fast = copy.deepcopy(reference).cuda().bfloat16()
    x = torch.randn(4, 8, 64, dtype=torch.float64)
    expected = reference(x)[0]
    for moe in (fast, torch.compile(fast, fullgraph=True)):
        got = moe(x.cuda().bfloat16())[0].double().cpu()
        # bf16 keeps 8 significant bits: each product and sum rounds at about 2^-9 of its size.
        torch.testing.assert_close(got, expected, rtol=0, atol=0.02 * expected.abs().max().item())


@pytest.mark.slow
def test_the_moe_benchmarks_grouped_and_looped_steps_train_alike(builtin_data):
    from blueberry.bench.moe_step import training_step

    cfg = small_lm(n_experts=4)
    train_cfg = TrainConfig(batch_size=2, device="cpu")
    batches = [batch for batch, _ in zip(iter(builtin_data.train_stream(2, 0).next, None), range(3))]
    grouped, looped = (training_step(cfg, train_cfg, compiled=False, looped=flag) for flag in (False, True))
    # The same initial weights and batches: three optimizer steps later, the same losses.
    assert [grouped(b) for b in batches] == pytest.approx([looped(b) for b in batches], rel=1e-5)


def test_the_compiled_engine_sizes_its_cache_by_powers_of_two_within_the_context():
    engine = CompiledGenerator(decode_model())  # seq_len 48
    assert [engine.cache_size(n) for n in (1, 30, 48)] == [48, 48, 48]  # 64 would exceed the context
    wide = CompiledGenerator(Blueberry(small_lm(seq_len=256)))
    assert [wide.cache_size(n) for n in (10, 64, 65, 200, 256)] == [64, 64, 128, 256, 256]
    assert CompiledGenerator(decode_model(), max_len=32).cache_size(5) == 32
    with pytest.raises(UserError, match="must hold 2 to the model's 48"):
        CompiledGenerator(decode_model(), max_len=49)
