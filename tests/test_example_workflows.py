"""Example workflows match the current node schemas (no browser needed; test_browser.py loads them for real)."""

import copy
import json

import pytest

from example_workflows_build import EXAMPLES, build_all
from workflow_ui import check_against_schemas


@pytest.fixture(scope="module")
def built(comfy_nodes):
    return build_all(comfy_nodes)


def test_committed_workflows_are_what_the_specs_build_now(built):
    committed = {p.stem: json.loads(p.read_text()) for p in EXAMPLES.glob("*.json")}
    assert set(committed) == set(built), "run: .venv/bin/python tests/example_workflows_build.py"
    for name, workflow in built.items():
        assert committed[name] == workflow, f"{name}.json is stale: run .venv/bin/python tests/example_workflows_build.py"


def test_every_workflow_fits_the_current_schemas(comfy_nodes):
    for path in EXAMPLES.glob("*.json"):
        assert check_against_schemas(json.loads(path.read_text()), comfy_nodes) == [], path.name


def test_the_check_catches_a_removed_input_and_shifted_widgets(comfy_nodes, built):
    workflow = copy.deepcopy(built["lightx2v_demo_tiny_t2v"])
    sampler = next(n for n in workflow["nodes"] if n["type"] == "LightX2VFourStepSampler")
    sampler["inputs"][0]["name"] = "unet"
    sampler["widgets_values"].pop()
    problems = check_against_schemas(workflow, comfy_nodes)
    assert any("input 'unet' no longer exists" in p for p in problems)
    assert any("widget values" in p for p in problems)
