"""The engine tests (comfy_env.COMFYUI_FREE_TESTS) pass where ComfyUI cannot be imported: they run in a pytest
subprocess whose ComfyUI folder is empty and whose imports of any ComfyUI module fail (comfyui_blocker.py)."""

import os
import pathlib
import subprocess
import sys

import pytest

from comfy_env import COMFY_DIR, COMFYUI_FREE_TESTS, ROOT

TESTS = pathlib.Path(__file__).resolve().parent
RUN_LIMIT_S = 1500  # the engine tests once more, on a possibly loaded CI machine


def without_comfyui(args, empty_dir):
    env = {**os.environ, "COMFYUI_DIR": str(empty_dir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S)


def test_comfyui_is_unimportable_there(tmp_path):
    """The run below would prove nothing if ComfyUI could still be imported in it: even with the real ComfyUI
    folder on sys.path, the blocker (imported as the `-p` option imports it) refuses it."""
    script = f"import sys, comfyui_blocker; sys.path.insert(0, {str(COMFY_DIR)!r}); import folder_paths"
    result = without_comfyui(["-c", script], tmp_path)
    assert result.returncode != 0 and "ComfyUI is absent" in result.stderr, result.stderr[-2000:]


@pytest.mark.timeout(RUN_LIMIT_S + 60)
def test_engine_tests_pass_without_comfyui(tmp_path):
    modules = [str(TESTS / name) for name in COMFYUI_FREE_TESTS if name != pathlib.Path(__file__).name]
    result = without_comfyui(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "comfyui_blocker", *modules],
                             tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]
