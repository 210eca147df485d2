"""bench/end_to_end.py --tiny: the end-to-end benchmark's whole path (random weights written, the prompt
run through ComfyUI's executor, cached re-runs timed per node) on the CPU, in its own process as on the GPU."""

import json
import os
import subprocess
import sys

from comfy_env import ROOT


def test_tiny_end_to_end_bench(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "end_to_end.py"), "--tiny", "--runs", "2", "--rows", "auto+compile,sdpa"],
        # One thread: tiny matmuls on a shared 2-core machine are far slower with OpenMP spin-waiting.
        cwd=ROOT, env={**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "end_to_end_tiny.json").read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == ["auto+compile", "sdpa"]
    for name, row in rows.items():
        assert len(row["runs_total_s"]) == 2
        # Each timed run re-ran the sampler and the decode only (the script checks that), inside the prompt's time.
        assert 0 < row["sampler_s"] + row["decode_s"] <= row["total_s"]
        assert row["frames_shape"] == [9, 64, 64, 3] and row["frames_finite"]
        assert ("LightX2VCompileDiT" in row["warmup_nodes_s"]) == name.endswith("+compile")
        assert {"LightX2VLoadWanDiT", "LightX2VFourStepSampler", "LightX2VTinyVAEDecode"} <= set(row["warmup_nodes_s"])
        assert all(m["full"] for m in row["loaded_models"])
        assert row["meets_target"] is None  # no verdict on the CPU
    assert "| auto+compile |" in done.stdout.splitlines()[-2] and "| sdpa |" in done.stdout.splitlines()[-1]


def test_tiny_wan22_bench(tmp_path):
    """bench/wan22.py --tiny: all three parts on the CPU with tiny models, the same nodes as on the GPU."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "wan22.py"), "--tiny", "--runs", "1"],
                          cwd=ROOT, env={**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "wan22_tiny.json").read_text())
    for graph in (result["a"]["ours"], result["a"]["native"], result["c"]):
        assert graph["frames_shape"] == [9, 64, 64, 3] and graph["frames_finite"]
    # The memory run streamed each expert's blocks from disk: exactly one read per block per step + the read-ahead.
    assert result["c"]["disk_gb_per_run"] == result["c"]["disk_gb_expected"]
    assert set(result["c"]["plans"]) == {"high", "low"} and result["c"]["cold"]["total_s"] > 0
    rows = {r["row"]: r for r in result["b"]}
    assert rows["sdpa"]["rel_err"] < 1e-5 and rows["sdpa"]["latent"] == [1, 48, 3, 4, 4]
    assert set(result["part_seconds"]) == {"weights", "a", "b", "c"}
    assert done.stdout.rstrip().splitlines()[-1].startswith("time per part:")
