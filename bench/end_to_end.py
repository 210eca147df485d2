"""End to end through ComfyUI's node path: 4 steps of Wan2.1 T2V 14B at 480x832x81 plus the tiny-VAE
decode, target <= 6.5 s on the H100. Text encoding is excluded (the conditioning is synthetic and cached).

Random full-size weights are written with the project's generators into a throw-away models folder: the 14B
DiT as a LightX2V fp8 per-block folder, generated block by block on the GPU (no bf16 copy of the model ever
exists; ~14 GB on disk), and a full-size TAEHV. Then this API-format prompt runs in-process through ComfyUI's
own PromptExecutor (the approach of tests/harness.py):

  LightX2V Load Wan DiT (fp8, attention) -> [LightX2V Compile DiT] -> LightX2V 4-Step Sampler (cfg 1)
  <- LightX2V Synthetic Conditioning (512 x 4096), EmptyHunyuanLatentVideo (832x480x81, latent 21x60x104)
  -> LightX2V Tiny VAE Decode (<- LightX2V Load Tiny VAE), the decode node being the output (no file written).

A row is `<attention>[+compile]`. The rows of one attention backend share one executor, whose cache keeps the
loaded model: per row one warm-up run (loading, compiling, autotuning), then --runs timed runs with a new seed
each, in which only the sampler and the decode execute again. Timed: the whole prompt (wall clock, CUDA
synchronized at both ends) and each node (from the executor's own "executing" messages, synchronized too).
Peak VRAM is torch's max allocated during the timed runs. Prints progress lines with timestamps, a table
last, and writes JSON to $OUT or bench/results/.

  python bench/end_to_end.py [--rows auto+compile,auto,sdpa+compile,sdpa] [--runs 3] [--tiny]

--tiny runs the same nodes on the CPU with a tiny DiT at 64x64x9 (compile backend aot_eager).
On the GPU machine, ComfyUI's node API needs PyAV (comfy_api imports it) and its samplers torchsde: they travel
as wheels in .whl/ (av 18.1.0, torchsde 0.2.6, trampoline 0.1.2), ComfyUI as .comfyui/.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import shutil
import statistics
import sys
import time
import uuid

import psutil
import torch
from safetensors.torch import save_file

from bench_common import ROOT, device_name, results_dir  # noqa: E402  (puts the repo on sys.path)

# bench/ holds modules with generic names (attention, cache, lora, ...): keep them from shadowing anything.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.append(os.path.join(ROOT, "tests"))  # comfy_env (bootstraps ComfyUI) and harness

from lightx2v_nodes.quant.formats import QUANTIZED_DTYPES, SCALE_SUFFIX, quantize_state_dict  # noqa: E402
from lightx2v_nodes.vae.synthetic import write_random_taehv  # noqa: E402
from lightx2v_nodes.wan import synthetic  # noqa: E402
from lightx2v_nodes.wan.attention import BACKENDS  # noqa: E402
from lightx2v_nodes.wan.checkpoint import INDEX_NAME, NON_BLOCK_NAME  # noqa: E402
from lightx2v_nodes.wan.config import WanConfig  # noqa: E402

WAN14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16)
TINY = synthetic.tiny_config("t2v", dim=256, layers=2, ffn_dim=512)
SHAPES = {"full": (832, 480, 81), "tiny": (64, 64, 9)}  # width, height, frames
TEXT_TOKENS, TEXT_DIM = 512, 4096
TARGET_S = 6.5
DIT_NAME, VAE_NAME = "wan2.1_t2v_14B_fp8_random/", "taew2_1_random.safetensors"
# Node ids of the prompt.
DIT, COMPILE, COND, LATENT, SAMPLER, TINY_VAE, DECODE = "1", "2", "3", "4", "5", "6", "7"
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.1f} s] {message}", flush=True)


def parse_rows(text: str) -> list[tuple[str, bool]]:
    rows = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        attention, _, extra = item.partition("+")
        if attention not in BACKENDS or extra not in ("", "compile"):
            raise SystemExit(f"bad row '{item}': use <attention>[+compile], attention one of {', '.join(BACKENDS)}")
        rows.append((attention, extra == "compile"))
    return rows


def row_name(attention: str, compiled: bool) -> str:
    return attention + ("+compile" if compiled else "")


# --- weights -------------------------------------------------------------------------------------------------

def file_groups(cfg: WanConfig) -> dict[str, set[str]]:
    """The parameter names of each file of a per-block folder (block_<i>.safetensors, non_block.safetensors)."""
    groups: dict[str, set[str]] = {}
    for key in synthetic.parameter_shapes(cfg):
        name = f"block_{key.split('.')[1]}.safetensors" if key.startswith("blocks.") else NON_BLOCK_NAME
        groups.setdefault(name, set()).add(key)
    return groups


def write_fp8_dit(cfg: WanConfig, folder: str, device: str, first_seed: int = 0) -> int:
    """A LightX2V fp8 per-block folder of random weights, one block at a time (converter's file layout: 8-bit
    block linears with float32 [out, 1] scales, everything else bf16). Returns the bytes written."""
    groups = file_groups(cfg)
    os.makedirs(folder, exist_ok=True)
    weight_map, written, start = {}, 0, time.perf_counter()
    for seed, (name, keys) in enumerate(groups.items(), start=first_seed):
        tensors = quantize_state_dict(synthetic.random_state_dict(cfg, seed, keys, device), "fp8")
        tensors = {k: (v if v.dtype in QUANTIZED_DTYPES or k.endswith(SCALE_SUFFIX) else v.to(torch.bfloat16)).cpu()
                   for k, v in tensors.items()}
        save_file(tensors, os.path.join(folder, name), metadata={"lightx2v_quant": "fp8"})
        weight_map.update(dict.fromkeys(tensors, name))
        written += sum(v.numel() * v.element_size() for v in tensors.values())
        if (seed - first_seed) % 10 == 9:
            say(f"  {seed - first_seed + 1}/{len(groups)} files, {written / 2**30:.1f} GiB, {time.perf_counter() - start:.1f} s")
    with open(os.path.join(folder, INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": written}, "weight_map": weight_map}, f)
    return written


def write_weights(models_dir: str, cfg: WanConfig, device: str) -> None:
    start = time.perf_counter()
    written = write_fp8_dit(cfg, os.path.join(models_dir, "diffusion_models", DIT_NAME), device)
    say(f"wrote the random fp8 DiT ({written / 2**30:.2f} GiB, {cfg.num_layers} blocks) "
        f"in {time.perf_counter() - start:.1f} s")
    write_random_taehv(os.path.join(models_dir, "vae_approx", VAE_NAME), latent_channels=16, dtype="fp16", seed=7)
    if device == "cuda":
        torch.cuda.empty_cache()


# --- the prompt and its timed execution ----------------------------------------------------------------------

def build_prompt(attention: str, compiled: bool, seed: int, shape, compile_backend: str, compile_mode: str) -> dict:
    """The API-format prompt of one row; `seed` is the sampler's (a new one makes it and the decode run again)."""
    width, height, frames = shape
    prompt = {
        DIT: {"class_type": "LightX2VLoadWanDiT", "inputs": {
            "model_name": DIT_NAME, "dtype": "auto", "attention": attention, "quantization": "fp8"}},
        COND: {"class_type": "LightX2VSyntheticConditioning", "inputs": {
            "seed": 1, "tokens": TEXT_TOKENS, "dim": TEXT_DIM}},
        LATENT: {"class_type": "EmptyHunyuanLatentVideo", "inputs": {
            "width": width, "height": height, "length": frames, "batch_size": 1}},
        SAMPLER: {"class_type": "LightX2VFourStepSampler", "inputs": {
            "model": [COMPILE if compiled else DIT, 0], "positive": [COND, 0], "latent_image": [LATENT, 0],
            "seed": seed, "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0,
            "mode": "deterministic"}},
        TINY_VAE: {"class_type": "LightX2VLoadTinyVAE", "inputs": {
            "vae_name": VAE_NAME, "dtype": "auto", "decode_mode": "chunked"}},
        DECODE: {"class_type": "LightX2VTinyVAEDecode", "inputs": {
            "samples": [SAMPLER, 0], "vae": [TINY_VAE, 0], "decode_mode": "as loaded"}},
    }
    if compiled:
        prompt[COMPILE] = {"class_type": "LightX2VCompileDiT", "inputs": {
            "model": [DIT, 0], "backend": compile_backend, "mode": compile_mode}}
    return prompt


class NodeClock:
    """Stands in for ComfyUI's PromptServer: takes the time (CUDA synchronized) at each "executing" message
    and at the end of the prompt, so each node's time runs from its start to the next one's."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.client_id = None
        self.last_node_id = None
        self.marks: list[tuple[str | None, float]] = []

    def send_sync(self, event, data, sid=None):
        if event in ("executing", "execution_success", "execution_error"):
            if self.cuda:
                torch.cuda.synchronize()
            self.marks.append((data.get("node") if event == "executing" else None, time.perf_counter()))

    def node_seconds(self) -> dict[str, float]:
        pairs = zip(self.marks, self.marks[1:])
        return {node: end - start for (node, start), (_, end) in pairs if node is not None}


class TimedExecutor:
    """One ComfyUI PromptExecutor whose output cache persists between runs (CLASSIC, as the server keeps it)."""

    def __init__(self, cuda: bool):
        import execution
        from harness import PromptRun

        self.cuda = cuda
        self.clock = NodeClock(cuda)
        self.executor = execution.PromptExecutor(self.clock, cache_type=execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0.0})
        self.result = PromptRun(self.executor, self.clock)

    def run(self, prompt: dict, output: str) -> tuple[float, dict[str, float]]:
        import asyncio

        import execution

        prompt_id = str(uuid.uuid4())
        ok, reasons, _ = asyncio.run(execution.validate_inputs(prompt_id, prompt, output, {}))
        if not ok:
            raise SystemExit(f"the prompt did not validate: {reasons}")
        self.clock.marks = []
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.executor.execute(prompt, prompt_id, {"client_id": "end-to-end-bench"}, [output])
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        error = self.result.error()
        if error or not self.executor.success:
            raise SystemExit(f"the prompt failed: {error and error['exception_message']}")
        return seconds, {prompt[node]["class_type"]: s for node, s in self.clock.node_seconds().items()}


def loaded_models() -> list[dict]:
    """What ComfyUI holds on the GPU: whether the DiT is fully loaded (a partial load would stream weights)."""
    import comfy.model_management as mm

    return [{"model": type(m.model.model).__name__, "loaded_gib": m.model.loaded_size() / 2**30,
             "size_gib": m.model.model_size() / 2**30, "full": m.model.loaded_size() >= m.model.model_size()}
            for m in mm.current_loaded_models if m.model is not None]


def run_row(bench: TimedExecutor, attention: str, compiled: bool, args, shape, target: float | None) -> dict:
    name, seed = row_name(attention, compiled), args.seed
    prompt = functools.partial(build_prompt, attention, compiled, shape=shape, compile_backend=args.compile_backend,
                               compile_mode=args.compile_mode)
    say(f"{name}: warm-up run (loading, compiling and autotuning as needed)")
    warmup_s, warmup_nodes = bench.run(prompt(seed), DECODE)
    say(f"{name}: warm-up {warmup_s:.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in warmup_nodes.items())})")
    totals, samplers, decodes, peaks = [], [], [], []
    for i in range(args.runs):
        if bench.cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds, nodes = bench.run(prompt(seed + 1 + i), DECODE)
        if set(nodes) != {"LightX2VFourStepSampler", "LightX2VTinyVAEDecode"}:
            raise SystemExit(f"expected only the sampler and the decode to run again, but these ran: {sorted(nodes)}")
        totals.append(seconds)
        samplers.append(nodes["LightX2VFourStepSampler"])
        decodes.append(nodes["LightX2VTinyVAEDecode"])
        peaks.append(torch.cuda.max_memory_allocated() / 2**30 if bench.cuda else 0.0)
        say(f"{name}: run {i + 1}/{args.runs}: {seconds:.3f} s (sampler {samplers[-1]:.3f}, decode {decodes[-1]:.3f})")
    frames = bench.result.output(DECODE)
    models = loaded_models()
    for partial in [m for m in models if not m["full"]]:
        say(f"{name}: WARNING {partial['model']} is only partly in VRAM ({partial['loaded_gib']:.2f} of "
            f"{partial['size_gib']:.2f} GiB): ComfyUI streams the rest each step")
    total, sampler, decode = (statistics.median(t) for t in (totals, samplers, decodes))
    return {
        "row": name, "attention": attention, "compile": compiled, "warmup_s": warmup_s, "warmup_nodes_s": warmup_nodes,
        "total_s": total, "sampler_s": sampler, "decode_s": decode, "step_s": sampler / 4,
        "other_s": total - sampler - decode,
        "runs_total_s": totals, "runs_sampler_s": samplers, "runs_decode_s": decodes, "peak_vram_gib": max(peaks),
        "resident_vram_gib": torch.cuda.memory_allocated() / 2**30 if bench.cuda else 0.0,
        "frames_shape": list(frames.shape), "frames_finite": bool(torch.isfinite(frames).all()),
        "loaded_models": models, "host_rss_gib": psutil.Process().memory_info().rss / 2**30,
        "meets_target": None if target is None else total <= target,
    }


def release_models(cuda: bool) -> None:
    """Between attention backends: drop the previous backend's model so each row's VRAM is its own."""
    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()
    if cuda:
        torch.cuda.empty_cache()


def table(results: list[dict], runs: int) -> str:
    lines = [f"| row | warm-up s | total s (median of {runs}) | sampler s | s/step | decode s | other s | "
             f"peak VRAM GiB | <= {TARGET_S} s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['row']} | {r['warmup_s']:.1f} | {r['total_s']:.3f} | {r['sampler_s']:.3f} | "
                     f"{r['step_s']:.3f} | {r['decode_s']:.3f} | {r['other_s']:.3f} | {r['peak_vram_gib']:.2f} | "
                     f"{ {True: 'yes', False: 'no', None: '-'}[r['meets_target']]} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="auto+compile",
                        help="comma-separated <attention>[+compile], e.g. auto+compile,auto,sdpa+compile,sdpa")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per row (after one warm-up run)")
    parser.add_argument("--compile-backend", default=None,
                        help="LightX2V Compile DiT backend (default inductor; aot_eager with --tiny)")
    parser.add_argument("--compile-mode", default="default", help="LightX2V Compile DiT mode")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep-models", action="store_true", help="keep the temporary models folder (path printed)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny DiT at 64x64x9, same nodes")
    args = parser.parse_args(argv)
    args.compile_backend = args.compile_backend or ("aot_eager" if args.tiny else "inductor")
    rows = parse_rows(args.rows)
    cuda = not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("the full-size run needs a CUDA GPU; use --tiny on a CPU")
    # ComfyUI's own lines ("loaded completely ..., full load: True") with times; the pack's already have a handler.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("lightx2v_nodes").propagate = False

    from comfy_env import bootstrap

    base_dir, pack_link = bootstrap()
    import comfy.cli_args

    comfy.cli_args.args.cpu = args.tiny  # --tiny stays on the CPU even where a GPU is present
    say(f"ComfyUI bootstrapped (torch {torch.__version__}, {device_name(device)}), models in {base_dir / 'models'}")
    shape = SHAPES["tiny" if args.tiny else "full"]
    target = None if args.tiny else TARGET_S  # no verdict for CPU times
    summary = {
        "benchmark": "end_to_end", "device": device_name(device), "torch": torch.__version__,
        "model": "tiny T2V" if args.tiny else "Wan2.1 T2V 14B", "quantization": "fp8 (LightX2V per-block file)",
        "shape_wxhxf": list(shape), "steps": 4, "cfg": 1.0, "text_tokens": TEXT_TOKENS, "runs": args.runs,
        "compile_backend": args.compile_backend, "compile_mode": args.compile_mode, "target_s": TARGET_S, "rows": [],
    }
    path = os.path.join(results_dir(), "end_to_end_tiny.json" if args.tiny else "end_to_end.json")
    try:
        write_weights(str(base_dir / "models"), TINY if args.tiny else WAN14B, device.type)
        from harness import load_all_nodes

        load_all_nodes(pack_link)
        say("ComfyUI's nodes and this pack loaded")
        for attention in dict.fromkeys(a for a, _ in rows):  # one executor (one loaded model) per backend
            bench = TimedExecutor(cuda)
            for compiled in [c for a, c in rows if a == attention]:
                summary["rows"].append(run_row(bench, attention, compiled, args, shape, target))
                with open(path, "w", encoding="utf-8") as f:  # after every row: a timeout keeps what finished
                    json.dump(summary, f, indent=1)
            del bench
            release_models(cuda)
    finally:
        if args.keep_models:
            say(f"kept {base_dir}")
        else:
            shutil.rmtree(base_dir, ignore_errors=True)
    say(f"wrote {path}")
    width, height, frames = shape
    print(f"\nEnd to end, {summary['model']} {width}x{height}x{frames}, 4 steps + tiny-VAE decode, through ComfyUI's "
          f"executor on {summary['device']} (text encoding excluded):\n")
    print(table(summary["rows"], args.runs))


if __name__ == "__main__":
    main()
