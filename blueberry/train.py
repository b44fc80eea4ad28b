"""The training loop: plain PyTorch, with hooks for everything else.

`train(model_cfg, train_cfg, data, hooks)` builds the model and optimizer, lets the hooks restore a
checkpoint, trains to the token budget (or the target loss, or divergence), validates periodically
and at the end, and returns a `RunResult`. It imports neither Ray nor MLflow: tracking, Tune
reporting, checkpointing and progress bars are hooks.

Timing follows the speedrun rule: active training time counts optimizer steps only. Model setup,
the untimed `torch.compile` warm-up and validation are measured separately.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

import torch

from blueberry.config import ModelConfig, RunConfig, TrainConfig
from blueberry.data import TokenShards, TrainStream
from blueberry.errors import UserError
from blueberry.hardware import peak_flops, resolve_device
from blueberry.hooks import EvalInfo, Hook, Hooks, RunResult, StepInfo
from blueberry.model import Blueberry, count_params, flops_per_token
from blueberry.optim import OptimizerSet, build_optimizer, lr_multiplier
from blueberry.parallel import SINGLE_PROCESS, DataParallel


class TrainState:
    """Everything that changes during training; `state_dict()` is a complete checkpoint."""

    def __init__(self, run: RunConfig, model: Blueberry, optimizer: OptimizerSet, stream: TrainStream,
                 device: torch.device, parallel: DataParallel = SINGLE_PROCESS) -> None:
        self.run, self.model, self.optimizer, self.stream, self.device = run, model, optimizer, stream, device
        self.parallel = parallel
        self.tokens_per_step = run.train.tokens_per_step(run.model.seq_len, parallel.world_size)
        self.step = 0
        self.tokens = 0
        self.loss_ema = 0.0
        self.ema_weight = 0.0  # for the EMA's bias correction
        self.first_loss: float | None = None
        self.active_time_s = 0.0
        self.eval_time_s = 0.0
        self.target_tokens: int | None = None
        self.target_time_s: float | None = None

    @property
    def smoothed_loss(self) -> float:
        return self.loss_ema / self.ema_weight if self.ema_weight else math.nan

    def record_loss(self, loss: float, smoothing: float) -> None:
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self.loss_ema = smoothing * self.loss_ema + (1 - smoothing) * loss
        self.ema_weight = smoothing * self.ema_weight + (1 - smoothing)

    _COUNTERS = ("step", "tokens", "loss_ema", "ema_weight", "first_loss", "active_time_s", "eval_time_s",
                 "target_tokens", "target_time_s")

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.run.to_json(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data_position": self.stream.position,
            "torch_rng": torch.get_rng_state(),
            **{name: getattr(self, name) for name in self._COUNTERS},
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        if payload["config"] != self.run.to_json():
            raise UserError("the checkpoint was written by a run with a different configuration: "
                            "resume with the same settings or use a new checkpoint directory")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.stream.position = payload["data_position"]
        torch.set_rng_state(payload["torch_rng"])
        for name in self._COUNTERS:
            setattr(self, name, payload[name])


def _autocast(device: torch.device, precision: str) -> Any:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: TokenShards, cfg: TrainConfig, device: torch.device,
             parallel: DataParallel = SINGLE_PROCESS) -> tuple[float, float]:
    """Mean next-token loss and accuracy over the fixed validation rows (split across ranks, summed)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    for batch in data.val_batches(cfg.batch_size, cfg.eval_tokens, parallel.rank, parallel.world_size):
        batch = batch.to(device, non_blocking=True)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with _autocast(device, cfg.precision):
            out = model(inputs, targets)
        loss_sum += out.loss.double() * targets.numel()
        correct += (out.logits.argmax(dim=-1) == targets).sum()
        count += targets.numel()
    model.train(was_training)
    loss_sum, correct, count = parallel.sum(loss_sum), parallel.sum(correct), parallel.sum(count)
    if count.item() == 0:
        return math.nan, math.nan
    return (loss_sum / count).item(), correct.item() / count.item()


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TokenShards,
          hooks: Hook | list[Hook] | tuple[Hook, ...] = (), parallel: DataParallel = SINGLE_PROCESS) -> RunResult:
    """Train a Blueberry model on `data` as `train_cfg` says; hooks observe (and may checkpoint).

    With `parallel` describing several data-parallel processes, call it on every rank with the same
    configs and data: `train_cfg.batch_size` is per rank, and the token budget is global."""
    hooks = hooks if isinstance(hooks, Hook) else Hooks(hooks)
    setup_start = time.perf_counter()
    data.check_fits(model_cfg)
    device = resolve_device(train_cfg.device)
    total_steps = train_cfg.total_steps(model_cfg.seq_len, parallel.world_size)

    torch.manual_seed(train_cfg.seed)
    model = Blueberry(model_cfg).to(device)
    optimizer = build_optimizer(model, train_cfg, device)
    stream = data.train_stream(train_cfg.batch_size, train_cfg.seed, rank=parallel.rank,
                               world_size=parallel.world_size)
    state = TrainState(RunConfig(model_cfg, train_cfg), model, optimizer, stream, device, parallel)
    tokens_per_step = state.tokens_per_step
    hooks.on_start(state)

    step_model = parallel.wrap(model, device)
    step_model = torch.compile(step_model) if train_cfg.compile else step_model
    autocast = _autocast(device, train_cfg.precision)
    if train_cfg.compile:
        _compile_warmup(step_model, stream, train_cfg, device)
    setup_time_s = time.perf_counter() - setup_start
    flops = flops_per_token(model_cfg)
    peak = peak_flops(device)

    def mfu(tokens_per_s: float) -> float | None:
        return flops * tokens_per_s / peak if peak else None

    def run_eval() -> EvalInfo:
        start = time.perf_counter()
        loss, accuracy = evaluate(model, data, train_cfg, device, parallel)
        state.eval_time_s += time.perf_counter() - start
        info = EvalInfo(step=state.step, tokens=state.tokens, loss=loss, accuracy=accuracy,
                        perplexity=math.exp(min(loss, 700.0)))
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
            with autocast:
                out = step_model(batch[:, :-1], batch[:, 1:])
            ((out.loss + out.aux_loss) / train_cfg.grad_accum_steps).backward()
            loss_sum += out.loss.detach()
        if train_cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        # The mean over ranks, so every rank takes the same divergence and target decisions. .item()
        # synchronises with the GPU once a step, which also makes the wall clock honest.
        loss = parallel.mean(loss_sum / train_cfg.grad_accum_steps).item()
        state.active_time_s += time.perf_counter() - started
        state.step += 1
        state.tokens += tokens_per_step
        state.record_loss(loss, train_cfg.loss_smoothing)
        tokens_per_s = state.tokens / state.active_time_s
        hooks.on_step(StepInfo(step=state.step, total_steps=total_steps, tokens=state.tokens, loss=loss,
                               smoothed_loss=state.smoothed_loss, lr_multiplier=multiplier,
                               tokens_per_s=tokens_per_s, active_time_s=state.active_time_s,
                               mfu=mfu(tokens_per_s)), state)

        if not math.isfinite(loss) or loss > train_cfg.divergence_factor * state.first_loss:
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
    counts = count_params(model_cfg)
    tokens_per_s = state.tokens / state.active_time_s if state.active_time_s else 0.0
    result = RunResult(
        steps=state.step, tokens=state.tokens, train_loss=state.smoothed_loss,
        val=None if diverged else last_eval, active_time_s=state.active_time_s, eval_time_s=state.eval_time_s,
        setup_time_s=setup_time_s, tokens_per_s=tokens_per_s, mfu=mfu(tokens_per_s), diverged=diverged,
        reached_target=state.target_tokens is not None, target_tokens=state.target_tokens,
        target_time_s=state.target_time_s,
        params={"total": counts.total, "non_embedding": counts.non_embedding, "active": counts.active},
    )
    hooks.on_end(result, state)
    return result


def _compile_warmup(step_model: torch.nn.Module, stream: TrainStream, cfg: TrainConfig, device: torch.device) -> None:
    """Run forward and backward a few times so compilation happens before the clock starts.

    No optimizer step is taken and the stream does not advance, so training afterwards is exactly
    what it would have been; only the gradients are touched, and they are cleared.
    """
    batch = stream.peek().to(device)
    for _ in range(cfg.compile_warmup_steps):
        with _autocast(device, cfg.precision):
            out = step_model(batch[:, :-1], batch[:, 1:])
        (out.loss + out.aux_loss).backward()
    for p in step_model.parameters():
        p.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
