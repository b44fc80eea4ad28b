"""Loss laws L(N, D) and what follows from them: the loss, the compute-optimal allocation at a compute
C = 6ND, and the tokens at which a size is compute-optimal.

N is the total parameter count (embeddings included, as in Hoffmann et al. 2022), D the training tokens.
Each law is a frozen dataclass of its parameters; its methods use NumPy operations only, so a law whose
parameters are arrays (one value per bootstrap draw, shaped to broadcast against N and D) evaluates every
draw at once. The forms:

- `Law` (Chinchilla, Hoffmann et al. 2022): L = E + A / N^alpha + B / D^beta. Minimising L at fixed C
  gives (their eq. 4) N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b with G = (alpha A / (beta B))^(1/(alpha+beta)),
  a = beta / (alpha + beta), b = alpha / (alpha + beta).
- `SharedExponentLaw`: the same with alpha = beta = gamma, the form over-training studies fit; then
  a = b = 1/2 and G = (A / B)^(1 / (2 gamma)).
- `KaplanLaw` (Kaplan et al. 2020, eq. 1.5): L = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D, no
  irreducible term. With r = alpha_N / alpha_D, N_opt^(r+1) = r N_c^r C / (6 D_c).
- `StackedLaw`: a weighted geometric mean of laws, exp(sum_k w_k log L_k), the prediction of a stack of
  forms; its compute-optimal allocation is found numerically, bracketed by its members' own.

`DataRange` is what a law was fitted on, so a plan can say how far beyond it it goes (`distance`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Protocol

import numpy as np

# Besiroglu et al. 2024 (Epoch AI), "Chinchilla Scaling: A replication attempt", Table 1: (estimate, s.e.).
EPOCH_CHINCHILLA = {"E": (1.8172, 0.03), "A": (482.01, 124.58), "B": (2085.43, 1293.23), "alpha": (0.3478, 0.02),
                    "beta": (0.3658, 0.02)}
PARAMETER_NAMES = ("E", "A", "B", "alpha", "beta")  # the Chinchilla law's, in the order files list them


class LossLaw(Protocol):
    """What every law offers a plan, a backtest and a plot."""

    form: ClassVar[str]

    def loss(self, N, D): ...

    def compute_optimal(self, C) -> tuple: ...

    def compute_optimal_tokens(self, N): ...

    @property
    def irreducible(self): ...

    def describe(self) -> str: ...


class _Parameters:
    """Shared by the single-form laws: their parameters by name."""

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Law(_Parameters):
    """Chinchilla's L = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, approach 3)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    form: ClassVar[str] = "chinchilla"

    def loss(self, N, D):
        return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)

    @property
    def a(self):
        """Exponent of N_opt in compute."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self):
        """Exponent of D_opt in compute."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self):
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    @property
    def irreducible(self):
        return self.E

    def compute_optimal(self, C):
        """(N, D) minimising the loss at compute C = 6 N D."""
        return self.G * (np.asarray(C) / 6) ** self.a, (np.asarray(C) / 6) ** self.b / self.G

    def compute_optimal_tokens(self, N):
        """The D at which N is the compute-optimal size: the budget that N should be trained with."""
        return (N / self.G) ** (1 / self.a) / N

    def derived(self) -> dict[str, float]:
        return {"a": float(self.a), "b": float(self.b), "G": float(self.G)}

    def describe(self) -> str:
        return f"L = {self.E:.4g} + {self.A:.4g} / N^{self.alpha:.4g} + {self.B:.4g} / D^{self.beta:.4g}"


@dataclass(frozen=True)
class SharedExponentLaw(_Parameters):
    """L = E + A / N^gamma + B / D^gamma: Chinchilla's form with one exponent for N and D."""

    E: float
    A: float
    B: float
    gamma: float
    form: ClassVar[str] = "shared"

    def loss(self, N, D):
        return self.E + self.A / np.power(N, self.gamma) + self.B / np.power(D, self.gamma)

    @property
    def G(self):
        return (self.A / self.B) ** (1 / (2 * self.gamma))

    @property
    def irreducible(self):
        return self.E

    def compute_optimal(self, C):
        half = np.sqrt(np.asarray(C) / 6)
        return self.G * half, half / self.G

    def compute_optimal_tokens(self, N):
        return N / self.G ** 2

    def derived(self) -> dict[str, float]:
        return {"a": 0.5, "b": 0.5, "G": float(self.G)}

    def describe(self) -> str:
        return f"L = {self.E:.4g} + {self.A:.4g} / N^{self.gamma:.4g} + {self.B:.4g} / D^{self.gamma:.4g}"


@dataclass(frozen=True)
class KaplanLaw(_Parameters):
    """Kaplan et al. (2020)'s L = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D."""

    N_c: float
    D_c: float
    alpha_N: float
    alpha_D: float
    form: ClassVar[str] = "kaplan"

    @property
    def r(self):
        return self.alpha_N / self.alpha_D

    def loss(self, N, D):
        # In logs: (N_c / N)^r overflows for the tiny alpha_D and huge N_c such fits can reach.
        first = self.r * (np.log(self.N_c) - np.log(N))
        second = np.log(self.D_c) - np.log(D)
        return np.exp(self.alpha_D * np.logaddexp(first, second))

    @property
    def irreducible(self):
        return 0.0 * self.alpha_D

    def compute_optimal(self, C):
        logC = np.log(np.asarray(C, np.float64))
        logN = (np.log(self.r) + self.r * np.log(self.N_c) + logC - np.log(6.0) - np.log(self.D_c)) / (self.r + 1)
        return np.exp(logN), np.exp(logC - np.log(6.0) - logN)

    def compute_optimal_tokens(self, N):
        return np.exp(np.log(self.D_c) + self.r * (np.log(N) - np.log(self.N_c)) - np.log(self.r))

    def derived(self) -> dict[str, float]:
        return {"a": float(1 / (self.r + 1)), "b": float(self.r / (self.r + 1))}

    def describe(self) -> str:
        return (f"L = [({self.N_c:.4g} / N)^({self.alpha_N:.4g}/{self.alpha_D:.4g}) + {self.D_c:.4g} / D]"
                f"^{self.alpha_D:.4g}")


LAW_TYPES = {law.form: law for law in (Law, SharedExponentLaw, KaplanLaw)}

GOLDEN = (np.sqrt(5) - 1) / 2
SEARCH_STEPS = 80  # golden-section steps: the bracket shrinks by 0.618^80, below 1e-16 of its width


@dataclass(frozen=True)
class StackedLaw:
    """exp(sum_k w_k log L_k): the stack of forms `blueberry-scale` predicts with. One member of weight 1
    is that member exactly (and its closed forms are used)."""

    laws: tuple
    weights: tuple[float, ...]
    form: ClassVar[str] = "stack"

    def __post_init__(self) -> None:
        if len(self.laws) != len(self.weights) or not self.laws:
            raise ValueError("a stacked law needs one weight per law")

    @property
    def single(self):
        """The one member when the stack is a single law, else None."""
        return self.laws[0] if len(self.laws) == 1 else None

    def loss(self, N, D):
        if self.single is not None:
            return self.single.loss(N, D)
        return np.exp(sum(w * np.log(law.loss(N, D)) for law, w in zip(self.laws, self.weights)))

    @property
    def irreducible(self):
        """The loss as N and D grow without bound: prod_k E_k^w_k, 0 when a member has no floor (Kaplan's)."""
        floors = [law.irreducible for law in self.laws]
        if any(np.any(np.asarray(f) <= 0) for f in floors):
            return 0.0
        return np.exp(sum(w * np.log(f) for f, w in zip(floors, self.weights)))

    def compute_optimal(self, C):
        """Along C = 6ND each member's log loss falls up to its own optimum and rises after it, so the
        weighted sum's optimum lies between the members' smallest and largest optimal N: golden-section
        search in log N inside that bracket, vectorised over C and over draws."""
        if self.single is not None:
            return self.single.compute_optimal(C)
        C = np.asarray(C, np.float64)
        members = np.log(np.broadcast_arrays(*(law.compute_optimal(C)[0] for law in self.laws)))
        low, high = members.min(axis=0) - 1e-9, members.max(axis=0) + 1e-9

        def value(logN):
            N = np.exp(logN)
            return np.log(self.loss(N, C / (6 * N)))

        a, b = low + (1 - GOLDEN) * (high - low), low + GOLDEN * (high - low)
        fa, fb = value(a), value(b)
        for _ in range(SEARCH_STEPS):
            left = fa < fb  # the minimum lies in [low, b]
            high = np.where(left, b, high)
            low = np.where(left, low, a)
            a, b = low + (1 - GOLDEN) * (high - low), low + GOLDEN * (high - low)
            fa, fb = value(a), value(b)
        N = np.exp((low + high) / 2)
        return N, C / (6 * N)

    def compute_optimal_tokens(self, N):
        """The D at which N is compute-optimal: bisection in log C on the stack's optimal N, bracketed by
        the compute at which each member finds N optimal."""
        if self.single is not None:
            return self.single.compute_optimal_tokens(N)
        N = np.asarray(N, np.float64)
        logC = np.log(np.broadcast_arrays(*(6 * N * law.compute_optimal_tokens(N) for law in self.laws)))
        low, high = logC.min(axis=0) - 1e-9, logC.max(axis=0) + 1e-9
        for _ in range(SEARCH_STEPS):
            middle = (low + high) / 2
            below = self.compute_optimal(np.exp(middle))[0] < N
            low, high = np.where(below, middle, low), np.where(below, high, middle)
        return np.exp((low + high) / 2) / (6 * N)

    def describe(self) -> str:
        if self.single is not None:
            return self.single.describe()
        return "log L = " + " + ".join(f"{w:.2f} log L_{law.form}" for law, w in zip(self.laws, self.weights))


def law_of(form: str, params: dict) -> object:
    """The law of form `form` with parameters `params` (floats, or arrays of draws)."""
    return LAW_TYPES[form](**params)


def select_draws(law, index: np.ndarray):
    """The draws `index` of a law of (draws, 1) arrays (a stack's members alike), in that order."""
    if isinstance(law, StackedLaw):
        return StackedLaw(tuple(select_draws(member, index) for member in law.laws), law.weights)
    return type(law)(**{f.name: np.asarray(getattr(law, f.name))[index] for f in fields(law)})


@dataclass(frozen=True)
class DataRange:
    """The runs a law was fitted on, by their extremes: a plan past any of them is an extrapolation."""

    runs: int
    N_max: float
    D_max: float
    C_max: float
    tokens_per_param_max: float

    @classmethod
    def of(cls, N: np.ndarray, D: np.ndarray) -> DataRange:
        N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
        return cls(runs=len(N), N_max=float(N.max()), D_max=float(D.max()), C_max=float((6 * N * D).max()),
                   tokens_per_param_max=float((D / N).max()))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def distance(self, N, D):
        """How far (N, D) lies beyond the runs, in decades: the largest of log10 N / N_max, log10 D / D_max
        and log10 C / C_max, and 0 inside all three. The same measure serves backtests and plans, so a
        plan's interval is the one measured at its distance."""
        N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
        beyond = np.maximum.reduce([np.log10(N / self.N_max), np.log10(D / self.D_max),
                                    np.log10(6 * N * D / self.C_max)])
        return np.maximum(beyond, 0.0)

    def beyond(self, N: float, D: float) -> list[str]:
        """What of (N, D) lies past the runs, each with its factor: empty inside the data's range."""
        out = []
        for what, value, largest in (("parameters N", N, self.N_max), ("tokens D", D, self.D_max),
                                     ("compute C", 6 * N * D, self.C_max),
                                     ("tokens per parameter", D / N, self.tokens_per_param_max)):
            if value > largest * (1 + 1e-9):
                out.append(f"{what} {value:.3g} is {value / largest:.3g}x the largest of the fit's runs "
                           f"({largest:.3g})")
        return out
