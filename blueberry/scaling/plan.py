"""From a fitted law to a plan a lab can fund: size, tokens, predicted loss with the interval the backtests
measured at the plan's distance beyond the law's runs, hyperparameters, GPU-hours, cost at several MFUs
(at `--price-per-gpu-hour`, else the default price of `datasets.GPU_PRICES`), wall-clock time on K GPUs
and the GPUs a deadline needs, the epochs of the named corpus it takes, the downstream accuracy it
predicts, where each number comes from, and a concrete Blueberry architecture.

Wall-clock time assumes the MFU holds at the GPU count asked for (perfect scaling); at thousands of GPUs
it usually drops, which the 30/40/50% rows bracket.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from blueberry.core.hardware import gpu_peak_flops
from blueberry.errors import UserError
from blueberry.models.lm.config import ModelConfig
from blueberry.models.lm.model import count_params
from blueberry.scaling.calibrate import Calibration
from blueberry.scaling.choice import Predictor
from blueberry.scaling.datasets import CORPORA, GPU_PRICES, Corpus
from blueberry.scaling.downstream import SigmoidFit, predict_accuracy, quantiles
from blueberry.scaling.hparams import HparamLaws, deepseek_laws
from blueberry.scaling.law import DataRange, StackedLaw, law_of, select_draws

DEFAULT_VOCAB = 49152  # the SmolLM2 tokenizer the Blueberry family uses
# Width-to-depth ratio d_model / n_layers: about 23 for nano-88m, 128 for Llama-3-8B-like models;
# interpolated as a power of N in between (and beyond).
ASPECT_ANCHORS = ((88e6, 23.0), (8e9, 128.0))
# The largest plan worth computing. Today's largest training runs are near 1e12 parameters and under
# 1e27 FLOP; these sit a thousand times and more beyond them (a Chinchilla-optimal 1e15-parameter model
# needs about 1e32 FLOP), far past anything a fitted law predicts, and keep powers of N and C finite.
MAX_PARAMS = 1e15
MAX_FLOPS = 1e33
MFU_TABLE = (0.3, 0.4, 0.5)  # the MFUs every plan is costed at, besides --mfu
PEAK_SOURCE = "dense bf16 datasheet peak (blueberry/core/hardware.py)"
# Muennighoff et al. (2023), "Scaling Data-Constrained Language Models": up to about 4 epochs of repeated
# data is nearly as good as new data; beyond, the value of repeated tokens decays towards nothing.
EPOCHS_NEARLY_FREE = 4.0


@dataclass(frozen=True)
class Target:
    """What the plan is for: exactly one of params / flops / gpu_hours (tokens only with params)."""

    params: float | None = None
    tokens: float | None = None
    flops: float | None = None
    gpu_hours: float | None = None
    gpu: str = "h100"
    mfu: float = 0.4
    price_per_gpu_hour: float | None = None
    gpus: int = 1024  # wall-clock time is given on this many GPUs
    deadline_days: float = 90.0  # and the GPU count that finishes within this many days
    dataset: str | None = None  # a corpus of `CORPORA`, to count epochs
    dataset_tokens: float | None = None  # or the tokens of another one
    estimate_gpu_hours: float | None = None  # someone's estimate of the GPU-hours, to check

    @property
    def corpus(self) -> Corpus | None:
        if self.dataset_tokens is not None:
            return Corpus(hub="", tokens=self.dataset_tokens, tokenizer="", source="--dataset-tokens")
        return CORPORA[self.dataset] if self.dataset is not None else None

    @property
    def flags(self) -> str:
        """The target as the flags that asked for it, for messages."""
        return " ".join(f"--{name.replace('_', '-')} {getattr(self, name):g}"
                        for name in ("params", "tokens", "flops", "gpu_hours") if getattr(self, name) is not None)

    def __post_init__(self) -> None:
        given = [name for name in ("params", "flops", "gpu_hours") if getattr(self, name) is not None]
        if len(given) != 1:
            raise UserError("give exactly one of --params, --flops, --gpu-hours (or --preset)")
        if self.tokens is not None and self.params is None:
            raise UserError("--tokens needs --params (or --preset): it fixes D for a given N")
        for name in ("params", "tokens", "flops", "gpu_hours", "price_per_gpu_hour"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
        if self.params is not None and self.params > MAX_PARAMS:
            raise UserError(f"--params {self.params:g} is beyond any plan: give a size up to {MAX_PARAMS:g} parameters")
        if self.flops is not None and self.flops > MAX_FLOPS:
            raise UserError(f"--flops {self.flops:g} is beyond any plan: give a compute up to {MAX_FLOPS:g} FLOP")
        if not 0 < self.mfu <= 1:
            raise UserError(f"--mfu must be in (0, 1], got {self.mfu}")
        if not (isinstance(self.gpus, int) and self.gpus >= 1):
            raise UserError(f"--gpus must be a whole number of GPUs >= 1, got {self.gpus}")
        if not (math.isfinite(self.deadline_days) and self.deadline_days > 0):
            raise UserError(f"--deadline-days must be a positive finite number, got {self.deadline_days}")
        if self.dataset is not None and self.dataset_tokens is not None:
            raise UserError("give one of --dataset and --dataset-tokens")
        if self.dataset is not None and self.dataset not in CORPORA:
            raise UserError(f"unknown --dataset {self.dataset!r}: use one of {', '.join(CORPORA)}, or give "
                            "--dataset-tokens")
        if self.estimate_gpu_hours is not None and not (math.isfinite(self.estimate_gpu_hours)
                                                         and self.estimate_gpu_hours > 0):
            raise UserError(f"--estimate-gpu-hours must be a positive finite number, got {self.estimate_gpu_hours}")
        if self.dataset_tokens is not None and not (math.isfinite(self.dataset_tokens) and self.dataset_tokens > 0):
            raise UserError(f"--dataset-tokens must be a positive finite number, got {self.dataset_tokens}")


@dataclass(frozen=True)
class Costing:
    """GPU time and money at one MFU."""

    mfu: float
    gpu_hours: float
    cost: float | None
    days: float  # wall-clock on the plan's GPU count
    gpus_for_deadline: int


@dataclass(frozen=True)
class DownstreamPrediction:
    metric: str
    source: str
    accuracy: float
    accuracy_ci: tuple[float, float]  # one model's accuracy: fit uncertainty, loss uncertainty, run scatter
    loss_range: tuple[float, float]  # the losses of the runs the curve was fitted on
    goal: float | None = None
    goal_loss: float | None = None  # the loss at which the fitted curve reaches the goal (nan: it never does)
    goal_loss_ci: tuple[float, float] | None = None
    goal_compute: float | None = None  # compute of the compute-optimal model at goal_loss (inf: never)
    goal_compute_ci: tuple[float, float] | None = None
    goal_gpu_hours: float | None = None
    goal_reachable: float | None = None  # the fraction of bootstrap draws in which the curve reaches the goal


@dataclass(frozen=True)
class Plan:
    N: float
    D: float
    C: float
    loss: float
    loss_ci: tuple[float, float] | None
    optimal_N: float  # compute-optimal size at the same compute
    optimal_D: float
    optimal_loss: float
    optimal_compute_for_same_loss: float  # the compute a compute-optimal model needs to reach `loss`
    gpu: str
    mfu: float
    gpu_hours: float
    cost: float | None
    lr: float
    batch_tokens: float
    hparams_source: str
    architecture: ModelConfig
    architecture_params: int
    law_source: str = "the law given"
    gpus: int = 1024
    deadline_days: float = 90.0
    costing: tuple[Costing, ...] = ()  # at MFU_TABLE and --mfu, by MFU
    corpus: Corpus | None = None
    corpus_name: str | None = None
    data_range: DataRange | None = None  # the runs the law was fitted on; None: not known
    extrapolation: tuple[str, ...] = ()  # what of the plan lies beyond data_range, by how much
    downstream: DownstreamPrediction | None = None
    estimate_gpu_hours: float | None = None
    choice: str | None = None  # how the law was chosen (forms and weights)
    level: float = 0.8  # of the calibrated interval
    loss_interval: tuple[float, float] | None = None  # calibrated by the backtests at the plan's distance
    distance: float | None = None  # decades beyond the law's runs (`DataRange.distance`)
    backtest_reach: float | None = None  # the farthest the backtests predicted, decades
    price_per_gpu_hour: float | None = None
    price_source: str | None = None  # "--price-per-gpu-hour", or the default's source

    @property
    def estimate_mfu(self) -> float | None:
        """The MFU at which an estimate of the GPU-hours would hold."""
        return self.mfu * self.gpu_hours / self.estimate_gpu_hours if self.estimate_gpu_hours else None

    @property
    def tokens_per_param(self) -> float:
        return self.D / self.N

    @property
    def days(self) -> float:
        """Wall-clock days on `gpus` GPUs at the plan's MFU."""
        return self.gpu_hours / self.gpus / 24

    @property
    def gpus_for_deadline(self) -> int:
        return math.ceil(self.gpu_hours / (24 * self.deadline_days))

    @property
    def epochs(self) -> float | None:
        return self.D / self.corpus.tokens if self.corpus is not None else None

    def to_dict(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("architecture", "costing", "corpus", "data_range",
                                                                     "downstream", "extrapolation")}
        out["loss_ci_source"] = "bootstrap refits: the parameters' uncertainty alone, 95%"
        out |= {"tokens_per_param": self.tokens_per_param, "days": self.days,
                "gpus_for_deadline": self.gpus_for_deadline, "epochs": self.epochs, "estimate_mfu": self.estimate_mfu,
                "costing": [asdict(c) for c in self.costing], "extrapolation": list(self.extrapolation),
                "corpus": asdict(self.corpus) if self.corpus is not None else None,
                "data_range": self.data_range.to_dict() if self.data_range is not None else None,
                "downstream": asdict(self.downstream) if self.downstream is not None else None,
                "architecture": self.architecture.__dict__}
        return out


def _target_aspect(N: float) -> float:
    (n0, r0), (n1, r1) = ASPECT_ANCHORS
    return r0 * (N / n0) ** (math.log(r1 / r0) / math.log(n1 / n0))


def _kv_heads(n_heads: int) -> int:
    """Grouped-query attention with about four query heads per KV head."""
    return max(k for k in range(1, max(1, n_heads // 4) + 1) if n_heads % k == 0)


def architecture_for(N: float, vocab_size: int = DEFAULT_VOCAB, seq_len: int = 2048,
                     tolerance: float = 0.02) -> ModelConfig:
    """A Blueberry config with `count_params(...).total` within `tolerance` of N, shaped like the family:
    squared-ReLU and 64-dim heads below 1B parameters, SwiGLU and 128-dim heads above, width-to-depth
    ratio following `ASPECT_ANCHORS`, widths in multiples of 128, d_ff tuned in multiples of 64."""
    mlp, head_dim = ("swiglu", 128) if N >= 1e9 else ("relu2", 64)
    ff_matrices = 3 if mlp == "swiglu" else 2
    aspect = _target_aspect(N)
    best: tuple[float, ModelConfig] | None = None
    for d_model in range(128, 32768 + 1, 128):
        n_heads = d_model // head_dim
        if n_heads == 0:
            continue
        base = ModelConfig(vocab_size=vocab_size, d_model=d_model, n_layers=1, n_heads=n_heads,
                           n_kv_heads=_kv_heads(n_heads), d_ff=64, mlp=mlp, seq_len=seq_len)
        fixed = count_params(base)
        per_layer_without_ff = fixed.non_embedding - d_model - ff_matrices * d_model * 64
        default_ff = 4 * d_model if mlp == "relu2" else 8 * d_model // 3
        layers = round((N - vocab_size * d_model - d_model)
                       / (per_layer_without_ff + ff_matrices * d_model * default_ff))
        if layers < 1:
            continue
        # With depth fixed, pick the d_ff (multiple of 64) that lands closest to N.
        remaining = (N - vocab_size * d_model - d_model) / layers - per_layer_without_ff
        d_ff = max(64, int(round(remaining / (ff_matrices * d_model) / 64)) * 64)
        cfg = ModelConfig(**{**base.__dict__, "n_layers": layers, "d_ff": d_ff})
        error = abs(count_params(cfg).total / N - 1)
        ff_ratio = d_ff / default_ff
        if error > tolerance or not 0.75 <= ff_ratio <= 1.33:
            continue
        score = abs(math.log(d_model / layers / aspect)) + abs(math.log(ff_ratio)) + 10 * error
        if best is None or score < best[0]:
            best = (score, cfg)
    if best is None:
        raise UserError(f"no Blueberry architecture within {tolerance:.0%} of {N:.3g} parameters "
                        f"(vocab {vocab_size}): is the target smaller than the embedding alone?")
    return best[1]


def draws_law(law, samples):
    """Bootstrap draws as a law of (draws, 1) arrays: `samples` is one already, or a dict of the (single-form)
    law's parameters, one array each."""
    if samples is None or not isinstance(samples, dict):
        return samples
    single = law.single if isinstance(law, StackedLaw) else law
    return law_of(single.form, {k: np.asarray(v, np.float64)[:, None] for k, v in samples.items()})


def _loss_draws(draws, N: float, D: float) -> np.ndarray | None:
    if draws is None:
        return None
    with np.errstate(over="ignore"):  # a far-off draw's N^alpha may overflow: its term is then 0, as it should be
        return np.asarray(draws.loss(N, D), np.float64).ravel()


def _loss_interval(draws, N: float, D: float) -> tuple[float, float] | None:
    losses = _loss_draws(draws, N, D)
    if losses is None:
        return None
    return float(np.percentile(losses, 2.5)), float(np.percentile(losses, 97.5))


def frontier_compute_for_loss(law, loss) -> np.ndarray:
    """The compute at which `law`'s compute-optimal model reaches `loss` (bisection in log C, vectorised
    over a law of arrays, `loss` broadcast against its parameters): inf where the loss is at or below what
    any compute up to 1e40 FLOP reaches (E, for a law with one) or is nan."""
    loss = np.asarray(loss, np.float64)
    shape = np.broadcast(loss, np.asarray(law.loss(1.0, 1.0))).shape
    lo, hi = np.full(shape, math.log(1e6)), np.full(shape, math.log(1e40))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        reachable = np.asarray(law.loss(*law.compute_optimal(np.exp(hi)))) < loss
        for _ in range(200):
            mid = (lo + hi) / 2
            above = np.asarray(law.loss(*law.compute_optimal(np.exp(mid)))) > loss
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return np.where(reachable, np.exp(hi), np.inf)


def _downstream(fit: SigmoidFit, labels: dict[str, str], law, draws, loss_draws: np.ndarray | None,
                N: float, D: float, goal: float | None, target: Target, peak: float) -> DownstreamPrediction:
    """Accuracy predicted for (N, D) from the loss's distribution `loss_draws` (calibrated where the
    backtests allow), and where a goal accuracy is reached, each with a 95% interval."""
    losses = loss_draws if loss_draws is not None else np.array([float(law.loss(N, D))])
    accuracy, accuracy_ci = predict_accuracy(fit, losses)
    out = dict(metric=labels["metric"], source=labels["source"], accuracy=accuracy, accuracy_ci=accuracy_ci,
               loss_range=(float(fit.loss.min()), float(fit.loss.max())))
    if goal is None:
        return DownstreamPrediction(**out)
    goal_loss = fit.sigmoid.loss_for(goal)
    goal_compute = float(frontier_compute_for_loss(law, goal_loss))
    # Bootstrap: sigmoid draw i with law draw i (cycled), both resampled from their own runs.
    sigmoids = fit.draws()
    laws = draws if draws is not None else law
    law_count = np.asarray(laws.loss(1.0, 1.0)).size
    count = max(len(sigmoids), law_count)
    losses = np.array([sigmoids[i % len(sigmoids)].loss_for(goal) for i in range(count)])
    paired = select_draws(laws, np.arange(count) % law_count) if draws is not None else law
    computes = frontier_compute_for_loss(paired, losses[:, None] if draws is not None else losses).ravel()
    reachable = np.isfinite(losses)
    loss_ci = quantiles(np.where(reachable, losses, -np.inf), 0.95) if reachable.any() else (math.nan, math.nan)
    return DownstreamPrediction(**out, goal=goal, goal_loss=goal_loss, goal_loss_ci=loss_ci, goal_compute=goal_compute,
                                goal_compute_ci=quantiles(computes, 0.95),
                                goal_gpu_hours=goal_compute / (peak * target.mfu) / 3600,
                                goal_reachable=float(reachable.mean()))


def make_plan(law, target: Target, samples=None, hparams: HparamLaws | None = None,
              vocab_size: int = DEFAULT_VOCAB, architecture: ModelConfig | None = None, *,
              law_source: str = "the law given", data_range: DataRange | None = None,
              downstream: tuple[SigmoidFit, dict[str, str]] | None = None, accuracy_goal: float | None = None,
              calibration: Calibration | None = None, residuals: np.ndarray | None = None, level: float = 0.8,
              choice: str | None = None) -> Plan:
    """The plan for `target` under `law` (any law of `blueberry.scaling.law`, a stack included).
    `samples` (bootstrap draws: a law of (draws, 1) arrays, or a dict of a single-form law's parameters)
    give the parameters' 95% interval; `calibration` with `data_range` (the runs the law was fitted on) and
    `residuals` (the fitted runs' log residuals) the calibrated interval at `level` (`Predictor.interval`:
    what the backtests measured at the plan's distance, and no narrower than the bootstrap's), and the
    extrapolation warnings; `downstream` (a fitted accuracy-loss sigmoid and its labels) the accuracy it predicts from
    the calibrated loss (the bootstrap's where uncalibrated) and, with `accuracy_goal`, the compute at
    which a compute-optimal model reaches that accuracy; `choice` says how the law was chosen."""
    peak = gpu_peak_flops(target.gpu)
    draws = draws_law(law, samples)
    beyond_range = UserError(f"{target.flags}: the law ({law.describe()}) puts this plan beyond floating-point "
                             "range; check the law's exponents")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            if target.params is not None:
                N = target.params
                D = float(target.tokens if target.tokens is not None else law.compute_optimal_tokens(N))
                C = 6 * N * D
            else:
                C = target.flops if target.flops is not None else target.gpu_hours * 3600 * peak * target.mfu
                N, D = (float(x) for x in law.compute_optimal(C))
            optimal_N, optimal_D = (float(x) for x in law.compute_optimal(C))
        except ArithmeticError:  # exponents near 0 send G = (...)^(1/(alpha+beta)) out of float range
            raise beyond_range from None
    if not C <= MAX_FLOPS:
        raise UserError(f"{target.flags} means training compute C = {C:.3g} FLOP, beyond the "
                        f"{MAX_FLOPS:g} FLOP a plan can mean: ask for less")
    if not N <= MAX_PARAMS:
        raise UserError(f"{target.flags} means a model of N = {N:.3g} parameters under this law, beyond the "
                        f"{MAX_PARAMS:g} a plan can mean: ask for less")
    if not all(math.isfinite(x) and x > 0 for x in (N, D, C, optimal_N, optimal_D)):
        raise beyond_range
    if accuracy_goal is not None and downstream is None:
        raise UserError("--accuracy-goal needs --downstream FILE (from `blueberry-scale downstream --json FILE`)")
    loss = float(law.loss(N, D))
    loss_ci = _loss_interval(draws, N, D)
    if not math.isfinite(loss) or (loss_ci is not None and not all(map(math.isfinite, loss_ci))):
        raise UserError(f"{target.flags}: the law's predicted loss ({loss:g}, bootstrap interval {loss_ci}) is not a "
                        "finite number: the fit is degenerate (check that loss falls with N and D, and the runs' "
                        "units), or choose another form with --form")
    distance = float(data_range.distance(N, D)) if data_range is not None else None
    predictor = Predictor(law, draws, calibration, data_range, law_source, choice or "", {}, residuals)
    interval = predictor.interval(N, D, level) if calibration is not None and calibration.bounded(level) else None
    calibrated = None if interval is None else (float(interval[0]), float(interval[1]))
    price, price_source = target.price_per_gpu_hour, "--price-per-gpu-hour"
    if price is None and target.gpu.lower() in GPU_PRICES:
        price, price_source = GPU_PRICES[target.gpu.lower()].dollars, GPU_PRICES[target.gpu.lower()].source
    elif price is None:
        price_source = None
    gpu_hours = C / (peak * target.mfu) / 3600

    def costing(mfu: float) -> Costing:
        hours = C / (peak * mfu) / 3600
        return Costing(mfu=mfu, gpu_hours=hours, cost=hours * price if price is not None else None,
                       days=hours / target.gpus / 24, gpus_for_deadline=math.ceil(hours / (24 * target.deadline_days)))

    if hparams is not None:
        laws, source = hparams, f"the lab's own fit ({hparams.source or 'its runs not recorded in the file'})"
    else:
        laws, source = deepseek_laws(), ("DeepSeek LLM (2024) AdamW laws, not fitted for Muon: fit the lab's own "
                                         "with `blueberry-scale hparams`")
    arch = architecture if architecture is not None else architecture_for(N, vocab_size)
    loss_draws = predictor.loss_draws(N, D)
    return Plan(
        N=N, D=D, C=C, loss=loss, loss_ci=loss_ci, optimal_N=optimal_N, optimal_D=optimal_D,
        optimal_loss=float(law.loss(optimal_N, optimal_D)),
        optimal_compute_for_same_loss=float(frontier_compute_for_loss(law, loss)),
        gpu=target.gpu, mfu=target.mfu, gpu_hours=gpu_hours, cost=gpu_hours * price if price is not None else None,
        lr=float(laws.lr(C)), batch_tokens=float(laws.batch_tokens(C)), hparams_source=source,
        architecture=arch, architecture_params=count_params(arch).total,
        law_source=law_source, gpus=target.gpus, deadline_days=target.deadline_days,
        estimate_gpu_hours=target.estimate_gpu_hours,
        costing=tuple(costing(m) for m in sorted(set(MFU_TABLE) | {target.mfu})),
        corpus=target.corpus, corpus_name=target.dataset, data_range=data_range,
        extrapolation=tuple(data_range.beyond(N, D)) if data_range is not None else (),
        downstream=(_downstream(*downstream, law, draws, loss_draws, N, D, accuracy_goal, target, peak)
                    if downstream is not None else None),
        choice=choice, level=level, loss_interval=calibrated, distance=distance,
        backtest_reach=calibration.max_distance if calibration is not None else None,
        price_per_gpu_hour=price, price_source=price_source,
    )


def _money(value: float | None) -> str:
    return f"${value:,.0f}" if value is not None else "-"


def _compute_range(low: float, high: float) -> str:
    return " to ".join("never" if not math.isfinite(v) else f"{v:.3g}" for v in (low, high))


def plan_text(plan: Plan) -> str:
    """The plan as a funding case: every number, and where each comes from."""
    a, gpu = plan.architecture, plan.gpu.upper()
    lines = [f"Plan under {plan.law_source}"]
    if plan.choice:
        lines.append(f"  law form         {plan.choice}")
    lines += [f"  size & data      N = {plan.N:.3e} parameters, D = {plan.D:.3e} tokens "
              f"({plan.tokens_per_param:.1f} tokens per parameter)",
              f"  compute          C = 6ND = {plan.C:.3e} FLOP"]
    if plan.loss_interval is not None:
        low, high = plan.loss_interval
        lines.append(f"  predicted loss   {plan.loss:.4f}  ({plan.level:.0%} interval {low:.3f} to {high:.3f}, "
                     f"{100 * (low / plan.loss - 1):+.1f}% to {100 * (high / plan.loss - 1):+.1f}%: calibrated by the "
                     f"backtests at the plan's distance, no narrower than the bootstrap's)")
    else:
        why = ("the law records no runs" if plan.data_range is None else "the law carries no backtests"
               if plan.backtest_reach is None else f"too few backtest errors for a {plan.level:.0%} interval")
        lines.append(f"  predicted loss   {plan.loss:.4f}  (no calibrated interval: {why})")
    if plan.loss_ci:
        lines.append(f"                   parameters alone (bootstrap refits, 95%): {plan.loss_ci[0]:.3f} to "
                     f"{plan.loss_ci[1]:.3f}")
    if plan.distance is not None:
        reach = (f"; the backtests predicted up to {10 ** plan.backtest_reach:.3g}x beyond their fits"
                 + (", so this interval's width is extrapolated"
                    if plan.distance > plan.backtest_reach and plan.loss_interval is not None else "")
                 if plan.backtest_reach is not None else "")
        lines.append(f"  distance         {10 ** plan.distance:.3g}x beyond the law's runs (in N, D or C, whichever "
                     f"is farthest){reach}")
    lines.append(f"  compute-optimal  at this C: N = {plan.optimal_N:.3e}, D = {plan.optimal_D:.3e}, "
                 f"loss {plan.optimal_loss:.4f}")
    excess = plan.C / plan.optimal_compute_for_same_loss
    if excess > 1.001:
        lines.append(f"                   this plan is {plan.N / plan.optimal_N:.2f}x the optimal size; a "
                     f"compute-optimal model reaches the same loss with {1 / excess:.1%} of the compute")
    lines.append(f"  hyperparameters  peak LR {plan.lr:.3g}, batch {plan.batch_tokens:.3g} tokens "
                 f"({plan.batch_tokens / a.seq_len:,.0f} sequences of {a.seq_len})")
    cost = (f" = {_money(plan.cost)} at ${plan.price_per_gpu_hour:,.2f} per {gpu}-hour" if plan.cost is not None
            else f" (no default price for {plan.gpu}: give --price-per-gpu-hour)")
    lines.append(f"  cost             {plan.gpu_hours:,.0f} {gpu}-hours at MFU {plan.mfu:.0%} "
                 f"(peak {gpu_peak_flops(plan.gpu) / 1e12:.0f} TFLOP/s){cost}")
    lines.append(f"  time             {plan.days:,.1f} days on {plan.gpus:,} {gpu}s; "
                 f"{plan.gpus_for_deadline:,} {gpu}s to finish in {plan.deadline_days:g} days")
    priced = plan.cost is not None
    lines.append(f"  {'by MFU':15}  {'MFU':>4} {gpu + '-hours':>13}" + (f" {'cost':>14}" if priced else "")
                 + f" {f'days on {plan.gpus:,}':>14} {f'GPUs for {plan.deadline_days:g} days':>18}")
    for c in plan.costing:
        mark = "  <- --mfu" if c.mfu == plan.mfu and plan.mfu not in MFU_TABLE else ""
        lines.append(f"  {'':15}  {c.mfu:4.0%} {c.gpu_hours:13,.0f}" + (f" {_money(c.cost):>14}" if priced else "")
                     + f" {c.days:14,.1f} {c.gpus_for_deadline:18,}{mark}")
    if plan.estimate_gpu_hours is not None:
        lines.append(f"  the estimate     {plan.estimate_gpu_hours:,.0f} {gpu}-hours holds at MFU "
                     f"{plan.estimate_mfu:.1%}; at {plan.mfu:.0%} the plan takes "
                     f"{plan.gpu_hours / plan.estimate_gpu_hours:.2f}x that")
    if plan.corpus is not None:
        c = plan.corpus
        held = (f"{plan.corpus_name} ({c.hub}) holds {c.tokens:.3g} tokens (tokenizer: {c.tokenizer})"
                if plan.corpus_name else f"the corpus holds {c.tokens:.3g} tokens")
        lines.append(f"  data             {held}: D is {plan.epochs:.2f} epochs of it")
        if plan.epochs > EPOCHS_NEARLY_FREE:
            lines.append(f"  WARNING          {plan.epochs:.3g} epochs: the law counts every token as new; beyond "
                         f"about {EPOCHS_NEARLY_FREE:g} epochs repeated tokens are worth less (Muennighoff et al. "
                         "2023), so the loss will be higher than predicted")
        elif plan.epochs > 1:
            lines.append(f"  note             {plan.epochs:.2f} epochs: up to about {EPOCHS_NEARLY_FREE:g}, repeating "
                         "costs little loss (Muennighoff et al. 2023)")
    else:
        lines.append("  data             name the corpus (--dataset or --dataset-tokens) to see how many epochs D is")
    if plan.data_range is None:
        lines.append("  extrapolation    unknown: the law carries no record of its runs (refit with "
                     "`blueberry-scale fit --json` to record them)")
    elif plan.extrapolation:
        lines.append(f"  EXTRAPOLATION    beyond the {plan.data_range.runs} runs the law was fitted on:")
        lines += [f"                   {line}" for line in plan.extrapolation]
    else:
        lines.append(f"  extrapolation    none: within the {plan.data_range.runs} runs the law was fitted on")
    if plan.downstream is not None:
        d = plan.downstream
        lines.append(f"  downstream       {d.metric} {d.accuracy:.3f} (95% interval {d.accuracy_ci[0]:.3f} to "
                     f"{d.accuracy_ci[1]:.3f}) at the predicted loss")
        if not d.loss_range[0] <= plan.loss <= d.loss_range[1]:
            lines.append(f"  WARNING          the predicted loss {plan.loss:.3f} is outside the evaluated runs' losses "
                         f"({d.loss_range[0]:.3f} to {d.loss_range[1]:.3f}): the accuracy curve extrapolates")
        if d.goal is not None:
            if math.isnan(d.goal_loss):
                lines.append(f"  goal             {d.metric} {d.goal:g} is beyond the fitted curve's range "
                             f"({d.goal_reachable:.0%} of bootstrap curves reach it)")
            else:
                low, high = d.goal_loss_ci
                loss_ci = f"{'never' if not math.isfinite(low) else f'{low:.3f}'} to {high:.3f}"
                lines.append(f"  goal             {d.metric} {d.goal:g} at loss {d.goal_loss:.3f} (95% interval "
                             f"{loss_ci}): a compute-optimal model gets there at C = {d.goal_compute:.3g} FLOP "
                             f"({_compute_range(*d.goal_compute_ci)}), {d.goal_gpu_hours:,.0f} {gpu}-hours at MFU "
                             f"{plan.mfu:.0%}")
    lines.append("  sources          loss: " + plan.law_source)
    lines.append("                   LR and batch: " + plan.hparams_source)
    lines.append("                   GPU-hours: C / (peak x MFU), " + PEAK_SOURCE)
    if plan.price_source is not None:
        lines.append(f"                   price: {plan.price_source}")
    if plan.corpus is not None:
        lines.append(f"                   tokens of {plan.corpus_name or 'the corpus'}: {plan.corpus.source}")
    if plan.downstream is not None:
        lines.append(f"                   downstream: sigmoid in loss (Bhagia et al. 2024) fitted to "
                     f"{plan.downstream.source}")
    lines.append(f"  architecture     d_model {a.d_model}, {a.n_layers} layers, {a.n_heads} heads ({a.n_kv_heads} KV), "
                 f"d_ff {a.d_ff}, {a.mlp}, vocab {a.vocab_size}, seq_len {a.seq_len}: "
                 f"{plan.architecture_params:,} parameters ({plan.architecture_params / plan.N - 1:+.2%})")
    return "\n".join(lines)
