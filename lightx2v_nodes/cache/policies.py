"""Skip rules: TeaCache, MagCache (and its calibration), and an EasyCache-style adaptive rule.

A policy only decides; the runner (runner.py) owns the residuals and applies them. Each conditioning pass
(cond, uncond) has its own state object. Per step the runner calls `decide(state, step)`, which returns
True to skip the blocks and must update the state whether or not skipping is allowed (`step.can_skip`
is False in warm-up, on the last step, outside the start/end window, or with no residual cached yet);
after a computed step it calls `computed(state, step, out)` with the tokens after all blocks.
"""

from __future__ import annotations

import dataclasses

import torch

from .tables import interpolate_ratios


@dataclasses.dataclass
class StepInput:
    index: int  # step of the sampling run, 0-based
    total: int  # steps in the run
    kind: str  # "cond" or "uncond"
    x: torch.Tensor  # tokens entering the first block [b, L, dim]
    e: torch.Tensor  # timestep embedding [b, dim]
    e0: torch.Tensor  # time projection [b, 6, dim]
    can_skip: bool


class PassState:
    """Mutable per-pass state; `note` is what verbose logging prints for the last decision."""

    def __init__(self):
        self.note = ""


def _relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    return ((current - previous).abs().mean() / previous.abs().mean()).item()


def polynomial(coefficients, value: float) -> float:
    """Horner evaluation, coefficients highest power first."""
    result = 0.0
    for c in coefficients:
        result = result * value + c
    return result


class TeaCache:
    """acc += poly(rel L1 change of e or e0); skip while acc < threshold; a computed step resets acc."""

    name = "teacache"

    def __init__(self, coefficients, mode: str = "e0", threshold: float = 0.26, warmup_steps: int = 5):
        if mode not in ("e", "e0"):
            raise ValueError(f"TeaCache mode must be 'e' or 'e0', not {mode!r}")
        self.coefficients, self.mode, self.threshold, self.warmup_steps = tuple(coefficients), mode, threshold, warmup_steps

    def new_state(self, kind: str) -> PassState:
        state = PassState()
        state.previous, state.accumulated = None, 0.0
        return state

    def decide(self, state, step: StepInput) -> bool:
        current = (step.e0 if self.mode == "e0" else step.e).float()
        skip = False
        if state.previous is None or step.index < self.warmup_steps or not step.can_skip:
            state.accumulated = 0.0
            state.note = "warm-up/forced"
        else:
            rel = _relative_l1(current, state.previous)
            state.accumulated += polynomial(self.coefficients, rel)
            skip = state.accumulated < self.threshold
            state.note = f"rel {rel:.5f} acc {state.accumulated:.4f}"
            if not skip:
                state.accumulated = 0.0
        # The reference embedding moves on every step, skipped or not.
        state.previous = current
        return skip

    def computed(self, state, step: StepInput, out: torch.Tensor) -> None:
        pass

    def describe(self) -> str:
        return f"TeaCache {self.mode}, threshold {self.threshold:g}"


class MagCache:
    """From step >= retention*steps: acc_ratio *= ratio[step]; acc_err += |1 - acc_ratio|; skip while
    acc_err < threshold and at most K consecutive skips; otherwise reset and compute."""

    name = "magcache"

    def __init__(self, ratios: dict[str, list[float]], threshold: float, k: int, retention: float):
        # ratios: per pass kind ("cond"/"uncond"; a missing kind uses "cond"), any length (resampled per run).
        self.ratios, self.threshold, self.k, self.retention = ratios, threshold, k, retention
        self._resampled: dict[tuple[str, int], list[float]] = {}

    def ratio(self, kind: str, index: int, total: int) -> float:
        key = (kind, total)
        if key not in self._resampled:
            self._resampled[key] = interpolate_ratios(self.ratios.get(kind) or self.ratios["cond"], total)
        return self._resampled[key][index]

    def new_state(self, kind: str) -> PassState:
        state = PassState()
        self._reset(state)
        return state

    @staticmethod
    def _reset(state) -> None:
        state.ratio, state.error, state.skipped_in_row = 1.0, 0.0, 0

    def decide(self, state, step: StepInput) -> bool:
        if step.index < int(self.retention * step.total) or not step.can_skip:
            self._reset(state)
            state.note = "retention/forced"
            return False
        state.ratio *= self.ratio(step.kind, step.index, step.total)
        state.error += abs(1.0 - state.ratio)
        state.skipped_in_row += 1
        skip = state.error < self.threshold and state.skipped_in_row <= self.k
        state.note = f"ratio {state.ratio:.5f} err {state.error:.4f} run {state.skipped_in_row}"
        if not skip:
            self._reset(state)
        return skip

    def computed(self, state, step: StepInput, out: torch.Tensor) -> None:
        pass

    def describe(self) -> str:
        return f"MagCache, threshold {self.threshold:g}, K {self.k}, retention {self.retention:g}"


class MagCacheCalibration:
    """Never skips; records mean(|r_t| / |r_{t-1}|) over tokens of the block residual r, per pass and step."""

    name = "magcache-calibrate"
    threshold = 0.0

    def __init__(self):
        self.recorded: dict[str, dict[int, float]] = {}

    def new_state(self, kind: str) -> PassState:
        state = PassState()
        state.previous_norm = None
        return state

    def decide(self, state, step: StepInput) -> bool:
        state.note = "calibrating"
        return False

    def computed(self, state, step: StepInput, out: torch.Tensor) -> None:
        norm = (out.float() - step.x.float()).norm(dim=-1)
        ratio = 1.0 if state.previous_norm is None else (norm / state.previous_norm).mean().item()
        self.recorded.setdefault(step.kind, {})[step.index] = ratio
        state.previous_norm = norm

    def ratios(self) -> dict[str, list[float]]:
        """Recorded ratios per pass kind, in step order."""
        return {kind: [by_step[i] for i in sorted(by_step)] for kind, by_step in self.recorded.items()}

    def describe(self) -> str:
        return "MagCache calibration (no skipping)"


class AdaptiveCache:
    """EasyCache-style rule on the block input/output tokens, with no per-model numbers.

    k = |out_t - out_prev| / |x_t - x_prev| between the last two computed steps; on each later step the
    predicted relative output change k * |x_t - x_prev| / |out_prev| is accumulated (x_prev, out_prev:
    the last computed step) and the blocks are skipped while the sum stays below the threshold.
    Means are over every `subsample`-th token, as EasyCache subsamples its latents.
    """

    name = "adaptive"

    def __init__(self, threshold: float = 0.2, subsample: int = 8):
        self.threshold, self.subsample = threshold, subsample

    def new_state(self, kind: str) -> PassState:
        state = PassState()
        state.x_prev = state.out_prev = state.out_prev_norm = state.rate = state.input_change = None
        state.accumulated = 0.0
        return state

    def _sub(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, :: self.subsample].float()

    def decide(self, state, step: StepInput) -> bool:
        state.input_change = None
        if state.x_prev is not None:
            state.input_change = (self._sub(step.x) - state.x_prev).abs().mean().item()
        if not step.can_skip or state.rate is None:
            state.accumulated = 0.0
            state.note = "warm-up/forced"
            return False
        state.accumulated += state.rate * state.input_change / state.out_prev_norm
        skip = state.accumulated < self.threshold
        state.note = f"input change {state.input_change:.5f} rate {state.rate:.4f} acc {state.accumulated:.4f}"
        if not skip:
            state.accumulated = 0.0
        return skip

    def computed(self, state, step: StepInput, out: torch.Tensor) -> None:
        out_sub = self._sub(out)
        if state.out_prev is not None and state.input_change:
            state.rate = (out_sub - state.out_prev).abs().mean().item() / state.input_change
        state.x_prev, state.out_prev = self._sub(step.x), out_sub
        state.out_prev_norm = out_sub.abs().mean().item()

    def describe(self) -> str:
        return f"adaptive, threshold {self.threshold:g}"
