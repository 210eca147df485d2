"""Rank 0's side: the worker processes, their process group, and the block runner the DiT calls.

One worker group exists at a time (torch.distributed has one default group per process). It is started on the
first block call that needs it and kept for the next ones with the same checkpoint, world size and devices;
a different one, a failure, `stop_active()` (model unload) or interpreter exit ends it. Every failure (a worker
that died, an error in a worker, a collective that ran past the timeout) ends the group and raises a
LightX2VError; the next call starts a fresh one.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import logging
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from ..errors import LightX2VError
from . import blocks, ulysses
from .environment import disable_multicast
from .loading import LoadSpec
from .plan import check_mode, plan_call, subgroups

log = logging.getLogger("lightx2v_nodes")
START_TIMEOUT = 120.0  # a dead worker is seen at once (its exit code); this bounds a slow or hung start
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class GroupSettings:
    spec: LoadSpec
    world_size: int
    worker_devices: tuple[str, ...]  # one per worker: "cpu" or "cuda:N"
    timeout: float  # seconds: each collective, and worker start (at least START_TIMEOUT: spawning and loading)


class WorkerGroup:
    def __init__(self, settings: GroupSettings):
        self.settings = settings
        self.procs: list[subprocess.Popen] = []
        self.store = None
        self.seq = 0
        self.groups: dict = {}
        self.patch_token = None  # what the workers' patch state was last synced from

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        disable_multicast()
        if dist.is_initialized():
            raise LightX2VError("torch.distributed is already initialised in this process by something else, so "
                                "LightX2V Multi-GPU cannot start its own process group here.")
        timeout = datetime.timedelta(seconds=s.timeout)
        self.store = dist.TCPStore("127.0.0.1", 0, s.world_size, is_master=True, timeout=timeout,
                                   wait_for_workers=False)
        env = disable_multicast(dict(os.environ))
        env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, env.get("PYTHONPATH", "")])
        for rank, device in enumerate(s.worker_devices, start=1):
            cmd = [sys.executable, "-m", "lightx2v_nodes.parallel.worker", "--rank", str(rank), "--world",
                   str(s.world_size), "--port", str(self.store.port), "--parent", str(os.getpid()), "--device", device,
                   "--spec", s.spec.to_json(), "--timeout", str(s.timeout)]
            self.procs.append(subprocess.Popen(cmd, cwd=_PACKAGE_ROOT, env=env, stdin=subprocess.DEVNULL))
        self._wait_for("joined", "start")
        device = torch.device("cuda" if s.worker_devices[0].startswith("cuda") else "cpu")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=self.store, rank=0,
                                world_size=s.world_size, timeout=timeout)
        self._wait_for("ready", "load the checkpoint")
        self.groups = {ranks: dist.new_group(list(ranks)) for ranks in subgroups("both", s.world_size)}
        self.groups[tuple(range(s.world_size))] = None
        log.info("LightX2V: %d worker process(es) ready (%s).", len(self.procs), ", ".join(s.worker_devices))

    def _wait_for(self, what: str, doing: str) -> None:
        limit = max(self.settings.timeout, START_TIMEOUT)
        deadline = time.monotonic() + limit
        for rank in range(1, self.settings.world_size):
            while not self.store.check([f"{what}/{rank}"]):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise LightX2VError(f"Multi-GPU worker {rank} did not {doing} within {limit:g} s. "
                                        "Raise the node's timeout for large checkpoints, or check the worker's log.")
                time.sleep(0.02)

    def worker_error(self, rank: int) -> str | None:
        try:
            if self.store is not None and self.store.check([f"error/{rank}"]):
                return self.store.get(f"error/{rank}").decode()
        except Exception:  # noqa: BLE001 - the store itself may be what failed
            pass
        return None

    def check_alive(self) -> None:
        for rank, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code is not None:
                detail = self.worker_error(rank) or f"exit code {code}"
                raise LightX2VError(f"Multi-GPU worker {rank} ({self.settings.worker_devices[rank - 1]}) stopped: "
                                    f"{detail}. The workers are restarted on the next run.")

    def stop(self) -> None:
        if self.store is not None and all(p.poll() is None for p in self.procs):
            try:
                self.command({"op": "stop"})
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
        if dist.is_initialized():
            dist.destroy_process_group()
        self.store = None

    # ---- commands --------------------------------------------------------------------------------------------

    def command(self, header: dict) -> None:
        self.seq += 1
        self.store.set(f"cmd/{self.seq}", json.dumps(header))

    def failure(self, exc: Exception) -> LightX2VError:
        """A collective failed: the worker's own error where it left one, else what the collective said."""
        details = [f"worker {r}: {e}" for r in range(1, self.settings.world_size) if (e := self.worker_error(r))]
        dead = [f"worker {r} exited ({p.poll()})" for r, p in enumerate(self.procs, start=1) if p.poll() is not None]
        reason = "; ".join(details + dead) or f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        return LightX2VError(f"Multi-GPU step failed ({reason}). The workers were stopped and start again on the next "
                             "run; if a worker hung, the node's timeout bounds the wait.")

    def stats(self, reset: bool = False, timing: bool = False) -> list[int]:
        """Peak memory in bytes per rank (CUDA allocator peak, or the process's peak RSS on the CPU)."""
        self.check_alive()
        self.command({"op": "stats", "reset": reset, "timing": timing})
        ulysses.TIMER.enabled, ulysses.TIMER.seconds = timing, 0.0
        key = f"stats/{self.seq}/"
        out = []
        for rank in range(1, self.settings.world_size):
            self.store.wait([key + str(rank)])
            out.append(int(self.store.get(key + str(rank))))
        return out


_ACTIVE: WorkerGroup | None = None


def acquire(settings: GroupSettings) -> WorkerGroup:
    """The running group for these settings, starting one (and ending another) where needed."""
    global _ACTIVE
    if _ACTIVE is not None and _ACTIVE.settings == settings:
        return _ACTIVE
    stop_active()
    group = WorkerGroup(settings)
    try:
        group.start()
    except BaseException:
        group.stop()
        raise
    _ACTIVE = group
    return group


def stop_active() -> None:
    global _ACTIVE
    group, _ACTIVE = _ACTIVE, None
    if group is not None:
        group.stop()


def active() -> WorkerGroup | None:
    return _ACTIVE


atexit.register(stop_active)


class ParallelBlocks:
    """The block runner (wan.model.BLOCK_RUNNER_KEY) of a model running on several processes.

    patch_source(dit, transformer_options) -> (token, make_state): `token` changes whenever rank 0's patch state
    does (compared with ==), make_state() -> blocks.PatchState is called only then.
    """

    def __init__(self, settings: GroupSettings, mode: str, patch_source=None):
        check_mode(mode, settings.world_size)
        self.settings, self.mode, self.patch_source = settings, mode, patch_source

    def __deepcopy__(self, memo):  # ComfyUI deep-copies model_options on every clone: one runner, one group
        return self

    def __call__(self, dit, x, e0, rope, context, context_img_len, transformer_options):
        if transformer_options.get("patches_replace", {}).get("dit"):
            raise LightX2VError("This model has block replace patches (patches_replace['dit'], e.g. from a native node) "
                                "that exist only in this process, so LightX2V Multi-GPU cannot run them on its workers. "
                                "Remove that node or the Multi-GPU node.")
        shares = plan_call(self.mode, self.settings.world_size, x.shape[0], x.shape[1], dit.num_heads)
        group = acquire(self.settings)
        try:
            group.check_alive()
            self._sync(group, dit, transformer_options, x.device)
            header = {"op": "run", "mode": self.mode, "context_img_len": context_img_len,
                      **{name: blocks.describe(t) for name, t in
                         (("x", x), ("e0", e0), ("context", context), ("rope", rope))}}
            group.command(header)
            for t in (x, e0, context, rope):
                blocks.broadcast(t, blocks.describe(t), x.device)
            share = blocks.my_share(shares, 0)
            out = blocks.run_share(dit, share, 0, group.groups, x, e0, rope, context, context_img_len)
            return blocks.gather_result(out, shares, x)
        except LightX2VError:
            stop_active()
            raise
        except RuntimeError as exc:
            error = group.failure(exc)
            stop_active()
            raise error from exc

    def _sync(self, group: WorkerGroup, dit, transformer_options, device) -> None:
        if self.patch_source is None:
            token, make_state = ("no patches", blocks.compile_settings(dit)), None
        else:
            token, make_state = self.patch_source(dit, transformer_options)
            token = (token, blocks.compile_settings(dit))
        if token == group.patch_token:
            return
        state = make_state() if make_state else blocks.PatchState({}, [], None)
        state.compile = blocks.compile_settings(dit)
        group.command(blocks.sync_header(state))
        blocks.send_patches(state, device)
        group.patch_token = token
