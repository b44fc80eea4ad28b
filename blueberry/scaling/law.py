"""The Chinchilla loss law L(N, D) = E + A / N^alpha + B / D^beta and what follows from it.

N is the total parameter count (embeddings included, as in Hoffmann et al. 2022), D the training
tokens, and training compute C = 6 N D. Minimising L at fixed C gives (Hoffmann et al., eq. 4)

    N_opt(C) = G (C/6)^a,   D_opt(C) = G^-1 (C/6)^b,
    G = (alpha A / (beta B))^(1 / (alpha + beta)),  a = beta / (alpha + beta),  b = alpha / (alpha + beta).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

PARAMETER_NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class Law:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray | float:
        return self.E + self.A / np.power(N, self.alpha) + self.B / np.power(D, self.beta)

    @property
    def a(self) -> float:
        """Exponent of N_opt in compute."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt in compute."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def compute_optimal(self, C: float) -> tuple[float, float]:
        """(N, D) minimising the loss at compute C = 6 N D."""
        return self.G * (C / 6) ** self.a, (C / 6) ** self.b / self.G

    def compute_optimal_tokens(self, N: float) -> float:
        """The D at which N is the compute-optimal size: the budget that N should be trained with."""
        return (N / self.G) ** (1 / self.a) / N

    def derived(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "G": self.G}

    def to_dict(self) -> dict[str, float]:
        return asdict(self)
