"""A worker process: `python -m lightx2v_nodes.parallel.worker` (started by group.WorkerGroup, never by hand).

A fresh interpreter that imports only the engine (no ComfyUI): it joins rank 0's process group, loads the
checkpoint as rank 0 did, then follows rank 0's commands (read from the TCPStore, so an idle worker waits on a
socket, not on a collective that would time out) until told to stop or rank 0 goes away.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import threading
import time
import traceback

from .environment import disable_multicast

disable_multicast()

import torch  # noqa: E402  (after the environment: NCCL reads it when it initialises)
import torch.distributed as dist  # noqa: E402

from . import blocks, ulysses  # noqa: E402
from .loading import LoadSpec, build_dit  # noqa: E402
from .plan import plan_call, subgroups  # noqa: E402


def _exit_with_parent(parent: int) -> None:
    """Rank 0 died (its store is gone or we were re-parented): nothing can use this process any more."""
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(1.0)


def _memory(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def serve(store, rank: int, world: int, device, dit) -> None:
    patches = blocks.WorkerPatches(dit)
    groups = {ranks: dist.new_group(list(ranks)) for ranks in subgroups("both", world)}
    groups[tuple(range(world))] = None
    seq = 0
    while True:
        seq += 1
        key = f"cmd/{seq}"
        store.wait([key], datetime.timedelta(days=3650))
        header = json.loads(store.get(key))
        op = header["op"]
        if op == "stop":
            return
        if op == "sync":
            patches.receive(header, device)
        elif op == "stats":
            ulysses.TIMER.enabled, ulysses.TIMER.seconds = header["timing"], 0.0
            if device.type == "cuda" and header["reset"]:
                torch.cuda.reset_peak_memory_stats(device)
            store.set(f"stats/{seq}/{rank}", str(_memory(device)))
        elif op == "run":
            with torch.inference_mode(), patches.installed():
                x = blocks.broadcast(None, header["x"], device)
                e0 = blocks.broadcast(None, header["e0"], device)
                context = blocks.broadcast(None, header["context"], device)
                rope = blocks.broadcast(None, header["rope"], device)
                rows, tokens, _ = header["x"][1]
                shares = plan_call(header["mode"], world, rows, tokens, dit.num_heads)
                share = blocks.my_share(shares, rank)
                if share is not None:
                    blocks.send_result(blocks.run_share(dit, share, rank, groups, x, e0, rope, context,
                                                        header["context_img_len"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    for name in ("--rank", "--world", "--port", "--parent"):
        p.add_argument(name, type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--spec", required=True)
    p.add_argument("--timeout", type=float, required=True)
    args = p.parse_args(argv)
    threading.Thread(target=_exit_with_parent, args=(args.parent,), daemon=True).start()
    timeout = datetime.timedelta(seconds=args.timeout)
    store = dist.TCPStore("127.0.0.1", args.port, args.world, is_master=False, timeout=timeout)
    try:
        device = torch.device(args.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.set_num_threads(int(os.environ.get("LIGHTX2V_WORKER_THREADS", torch.get_num_threads())))
        store.set(f"joined/{args.rank}", "1")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=args.rank,
                                world_size=args.world, timeout=timeout)
        dit = build_dit(LoadSpec.from_json(args.spec), device)
        store.set(f"ready/{args.rank}", "1")
        serve(store, args.rank, args.world, device, dit)
    except Exception as exc:  # noqa: BLE001 - reported to rank 0, which raises it as a LightX2VError
        try:
            store.set(f"error/{args.rank}", f"{type(exc).__name__}: {exc}"[:2000])
        except Exception:  # noqa: BLE001 - rank 0 is gone: nobody to tell
            pass
        traceback.print_exc()
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
