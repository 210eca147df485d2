"""One sampling run with a feature cache: per-pass state, cached residuals, and the DiT hook.

An instance sits in transformer_options[FEATURE_CACHE_KEY]; WanDiT.forward_tokens then calls it instead of
running its blocks: `run(x, e, e0, transformer_options, compute)`, where `compute(rows)` runs all blocks on
those batch rows. A forward may hold several conditioning passes (ComfyUI batches cond and uncond); each
pass has its own state and residual, and only the passes that must be computed go through the blocks.
A skipped pass returns exactly x + its cached residual (x_after_blocks - x_before_blocks).
"""

from __future__ import annotations

import logging

import torch

from .policies import StepInput

log = logging.getLogger("lightx2v_nodes")


class FeatureCacheRun:
    def __init__(self, policy, sigmas, start_percent: float = 0.0, end_percent: float = 1.0,
                 cache_device: str = "gpu", verbose: bool = False, label: str = ""):
        """sigmas: the run's schedule, N steps + the final sigma (as samplers receive it)."""
        self.policy = policy
        self.schedule = [float(s) for s in sigmas][:-1]
        self.total = len(self.schedule)
        self.start_percent, self.end_percent = start_percent, end_percent
        self.offload = cache_device == "cpu"
        self.verbose, self.label = verbose, label or policy.describe()
        self.states, self.residuals, self.patterns = {}, {}, {}

    def step_index(self, transformer_options: dict, key) -> int:
        """The step whose sigma the model is evaluated at (nearest, so multi-evaluation samplers map sanely)."""
        sigma = transformer_options.get("sigmas")
        if sigma is None or not self.schedule:
            return len(self.patterns.get(key, ""))
        value = float(sigma.flatten()[0]) if torch.is_tensor(sigma) else float(sigma)
        return min(range(self.total), key=lambda i: abs(self.schedule[i] - value))

    def may_skip(self, index: int) -> bool:
        """Skipping allowed by the run: threshold > 0, inside [start, end), never the last step."""
        if self.policy.threshold <= 0 or index >= self.total - 1:
            return False
        fraction = index / self.total
        return self.start_percent <= fraction < self.end_percent

    def passes(self, batch: int, transformer_options: dict):
        """(state key, pass kind, rows) for each conditioning chunk of the batch."""
        kinds = list(transformer_options.get("cond_or_uncond") or [0])
        uuids = list(transformer_options.get("uuids") or [None] * len(kinds))
        if batch % len(kinds) or len(uuids) != len(kinds):
            kinds, uuids = [0], [None]
        size = batch // len(kinds)
        for i, (kind_id, uuid) in enumerate(zip(kinds, uuids)):
            kind = "uncond" if kind_id == 1 else "cond"
            yield (kind, str(uuid) if uuid is not None else kind), kind, slice(i * size, (i + 1) * size)

    def __call__(self, x, e, e0, transformer_options, compute):
        decisions = []
        for key, kind, rows in self.passes(x.shape[0], transformer_options):
            index = self.step_index(transformer_options, key)
            if key not in self.states:
                self.states[key] = self.policy.new_state(kind)
            state = self.states[key]
            residual = self.residuals.get(key)
            can_skip = self.may_skip(index) and residual is not None and residual.shape == x[rows].shape
            step = StepInput(index, self.total, kind, x[rows], e[rows], e0[rows], can_skip)
            skip = bool(self.policy.decide(state, step)) and can_skip
            decisions.append((key, rows, step, state, skip))
            self.patterns[key] = self.patterns.get(key, "") + ("S" if skip else "C")
            if self.verbose:
                log.info("LightX2V cache [%s] step %d/%d %s: %s -> %s", self.policy.name, index + 1, self.total,
                         kind, state.note, "skip" if skip else "compute")

        to_compute = [d for d in decisions if not d[4]]
        if len(to_compute) == len(decisions):
            computed, offsets = compute(slice(None)), {d[0]: d[1] for d in decisions}
        elif to_compute:
            computed = compute(torch.cat([torch.arange(d[1].start, d[1].stop, device=x.device) for d in to_compute]))
            offsets, start = {}, 0
            for d in to_compute:
                size = d[1].stop - d[1].start
                offsets[d[0]], start = slice(start, start + size), start + size
        else:
            computed, offsets = None, {}

        chunks = []
        for key, rows, step, state, skip in decisions:
            if skip:
                chunks.append(x[rows] + self.residuals[key].to(device=x.device, non_blocking=True))
                continue
            out = computed[offsets[key]]
            residual = out - step.x
            self.residuals[key] = residual.to("cpu") if self.offload else residual
            self.policy.computed(state, step, out)
            chunks.append(out)
        if len(to_compute) == len(decisions):
            return computed
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def summary(self) -> dict:
        """Skip counts and patterns ('C' computed, 'S' skipped, one letter per model call) per pass."""
        kinds = [key[0] for key in self.patterns]
        passes = {key[0] if kinds.count(key[0]) == 1 else f"{key[0]} {key[1][:8]}": pattern
                  for key, pattern in self.patterns.items()}
        calls = sum(len(p) for p in self.patterns.values())
        skipped = sum(p.count("S") for p in self.patterns.values())
        return {"method": self.label, "steps": self.total, "calls": calls, "skipped": skipped,
                "speedup": calls / max(calls - skipped, 1), "patterns": passes}

    def log_summary(self) -> str:
        s = self.summary()
        per_pass = ", ".join(f"{name} {p.count('S')}/{len(p)}" for name, p in s["patterns"].items())
        text = (f"LightX2V Feature Cache ({s['method']}): skipped {s['skipped']}/{s['calls']} block passes "
                f"({per_pass}), ~{s['speedup']:.2f}x less block work.")
        log.info(text)
        for name, pattern in s["patterns"].items():
            log.info("LightX2V Feature Cache pattern %s: %s", name, pattern)
        return text
