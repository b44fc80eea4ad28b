"""The training loop: plain PyTorch, generic over model kinds, with hooks for everything else.

`train(task, train_cfg, data, hooks, parallel)` builds the task's model and the optimizer, lets the
hooks restore a checkpoint, trains to the budget (or the target loss, or divergence), evaluates
periodically and at the end, and returns a `RunResult`. The task owns the model and the loss; the
loop owns the steps. It imports neither Ray nor MLflow: tracking, Tune reporting, checkpointing and
progress bars are hooks.

Timing follows the speedrun rule: active training time counts optimizer steps only. Model setup,
the untimed `torch.compile` warm-up and validation are measured separately.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import torch

from blueberry.core.config import TrainConfig
from blueberry.core.events import EvalInfo, RunResult, StepInfo
from blueberry.core.hardware import autocast, peak_flops, resolve_device
from blueberry.core.hooks import Hook, Hooks
from blueberry.core.optim import build_optimizer, lr_multiplier
from blueberry.core.parallel import SINGLE_PROCESS, DataParallel
from blueberry.core.state import TrainState
from blueberry.core.task import Task


def train(task: Task, train_cfg: TrainConfig, data: Any, hooks: Hook | Iterable[Hook] = (),
          parallel: DataParallel = SINGLE_PROCESS) -> RunResult:
    """Train `task`'s model on `data` as `train_cfg` says; hooks observe (and may checkpoint).

    With `parallel` describing several data-parallel processes, call it on every rank with the same
    task, config and data: `train_cfg.batch_size` is per rank, and the budget is global."""
    hooks = hooks if isinstance(hooks, Hooks) else Hooks([hooks] if isinstance(hooks, Hook) else hooks)
    if own := task.hooks():  # the task's own (an EMA of the weights) first: checkpoints see their work
        hooks = Hooks([*own, hooks])
    setup_start = time.perf_counter()
    task.check_data(data)
    device = resolve_device(train_cfg.device)
    total_steps = train_cfg.total_steps(task.units_per_sample, parallel.world_size)

    torch.manual_seed(train_cfg.seed)
    model = task.build_model()
    model = parallel.prepare(model, device, task.blocks(model))  # on the device, or (FSDP) sharded across ranks
    # After `prepare`: FSDP replaces the parameters with sharded ones, which are what the optimizer steps.
    optimizer = build_optimizer(model, train_cfg, device, task.hidden_matrices(model), parallel)
    stream = data.train_stream(train_cfg.batch_size, train_cfg.seed, rank=parallel.rank,
                               world_size=parallel.world_size)
    state = TrainState(task, train_cfg, model, optimizer, stream, device, parallel, task.describe_data(data))
    try:
        return _run(task, train_cfg, data, hooks, parallel, state, total_steps, setup_start)
    except BaseException as error:  # Ctrl-C and kills included: hooks close what they opened, then it goes on up
        hooks.on_abort(error, state)
        raise


def _run(task: Task, train_cfg: TrainConfig, data: Any, hooks: Hooks, parallel: DataParallel, state: TrainState,
         total_steps: int, setup_start: float) -> RunResult:
    """`train` from the hooks' start to their end, on the state `train` built."""
    model, optimizer, stream, device = state.model, state.optimizer, state.stream, state.device
    tokens_per_step = state.tokens_per_step
    hooks.on_start(state)

    step_model = parallel.wrap(model, device)
    step_model = torch.compile(step_model) if train_cfg.compile else step_model
    precision = autocast(device, train_cfg.precision)
    if train_cfg.compile:
        _compile_warmup(task, step_model, stream, train_cfg, device)
    setup_time_s = time.perf_counter() - setup_start
    flops = task.flops_per_unit()
    peak = peak_flops(device)

    def mfu(tokens_per_s: float) -> float | None:
        return flops * tokens_per_s / peak if peak else None

    def run_eval() -> EvalInfo:
        start = time.perf_counter()
        metrics = task.evaluate(model, data, train_cfg, device, parallel.evaluation)
        state.eval_time_s += time.perf_counter() - start
        info = EvalInfo(step=state.step, tokens=state.tokens, metrics=metrics)
        hooks.on_eval(info, state)
        return info

    diverged = False
    last_eval: EvalInfo | None = None
    model.train()
    while state.step < total_steps:
        started = time.perf_counter()
        multiplier = lr_multiplier(state.step, total_steps, train_cfg)
        optimizer.set_lr_multiplier(multiplier)
        loss_sum = torch.zeros((), device=device)
        for _ in range(train_cfg.grad_accum_steps):
            batch = stream.next().to(device, non_blocking=True)
            with precision:
                loss = task.loss(step_model, batch)
            ((loss.value + loss.aux) / train_cfg.grad_accum_steps).backward()
            loss_sum += loss.value.detach()
        if train_cfg.grad_clip:
            parallel.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        # The mean over ranks, so every rank takes the same divergence and target decisions. .item()
        # synchronises with the GPU once a step, which also makes the wall clock honest.
        step_loss = parallel.mean(loss_sum / train_cfg.grad_accum_steps).item()
        state.active_time_s += time.perf_counter() - started
        state.step += 1
        state.tokens += tokens_per_step
        state.record_loss(step_loss, train_cfg.loss_smoothing)
        tokens_per_s = state.tokens / state.active_time_s
        hooks.on_step(StepInfo(step=state.step, total_steps=total_steps, tokens=state.tokens, loss=step_loss,
                               smoothed_loss=state.smoothed_loss, lr_multiplier=multiplier,
                               tokens_per_s=tokens_per_s, active_time_s=state.active_time_s,
                               mfu=mfu(tokens_per_s)), state)

        if not math.isfinite(step_loss) or step_loss > train_cfg.divergence_factor * state.first_loss:
            diverged = True
            break
        target = train_cfg.target_train_loss
        if target is not None and state.target_tokens is None and state.smoothed_loss <= target:
            state.target_tokens, state.target_time_s = state.tokens, state.active_time_s
            break
        periodic = train_cfg.eval_every and state.step % train_cfg.eval_every == 0
        milestone = any(state.tokens - tokens_per_step < t <= state.tokens for t in train_cfg.eval_at_tokens)
        if (periodic or milestone) and state.step < total_steps:
            last_eval = run_eval()

    if not diverged and (last_eval is None or last_eval.step != state.step):
        last_eval = run_eval()
    tokens_per_s = state.tokens / state.active_time_s if state.active_time_s else 0.0
    result = RunResult(
        steps=state.step, tokens=state.tokens, train_loss=state.smoothed_loss,
        val=None if diverged else last_eval, active_time_s=state.active_time_s, eval_time_s=state.eval_time_s,
        setup_time_s=setup_time_s, tokens_per_s=tokens_per_s, mfu=mfu(tokens_per_s), diverged=diverged,
        reached_target=state.target_tokens is not None, target_tokens=state.target_tokens,
        target_time_s=state.target_time_s, params=task.param_counts(),
    )
    hooks.on_end(result, state)
    return result


def _compile_warmup(task: Task, step_model: torch.nn.Module, stream: Any, cfg: TrainConfig,
                    device: torch.device) -> None:
    """Run forward and backward a few times so compilation happens before the clock starts.

    No optimizer step is taken and the stream does not advance, so training afterwards is exactly
    what it would have been: the gradients are cleared, and what a loss draws at random (a diffusion
    model's noise) or a forward updates in place (a VQ-VAE's codebook, its buffers) is put back.
    """
    batch = stream.peek().to(device)
    buffers = [(b, b.detach().to("cpu", copy=True)) for b in step_model.buffers()]  # off the GPU: no memory peak
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(cfg.compile_warmup_steps):
            with autocast(device, cfg.precision):
                loss = task.loss(step_model, batch)
            (loss.value + loss.aux).backward()
    with torch.no_grad():
        for buffer, saved in buffers:
            buffer.copy_(saved)
    for p in step_model.parameters():
        p.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
