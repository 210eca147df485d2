"""The real frontend in headless Chromium: every example workflow loads cleanly; the demo workflow runs.

Needs Debian's chromium (/usr/bin/chromium) and playwright from PyPI; scripts/setup.sh installs both.
"""

import json
import os
import time

import pytest

from conftest import COMFY_DIR, ROOT
from example_workflows_build import EXAMPLES
from harness import ComfyServer, http_json, make_base_dir
from lightx2v_nodes.demo import write_demo_weights

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
WORKFLOWS = sorted(EXAMPLES.glob("*.json"))
DEMO = EXAMPLES / "lightx2v_demo_tiny_t2v.json"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Chromium not installed (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = make_base_dir(tmp_path_factory.mktemp("browser-base"), ROOT)
    write_demo_weights(str(base / "models"))
    with ComfyServer(COMFY_DIR, base) as srv:
        http_json(srv.url + "/settings/Comfy.TutorialCompleted", True)  # no first-run template dialog
        yield srv


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.dialogs = []
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
        page.goto(server.url)
        page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
        yield page
        browser.close()


LOAD_AND_READ = """async (workflow) => {
  await window.app.loadGraphData(workflow);
  await new Promise(r => setTimeout(r, 300));
  const nodes = window.app.graph._nodes || window.app.graph.nodes;
  return nodes.map(n => ({id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
                         widgets: (n.widgets || []).map(w => w.value)}));
}"""


def _page_problems(page):
    text = page.inner_text("body")
    found = [m for m in page.dialogs]
    for phrase in ("Invalid workflow", "zod", "missing", "Missing"):
        if phrase in text:
            found.append(f"page shows '{phrase}': {text[max(0, text.find(phrase) - 200): text.find(phrase) + 300]}")
    return found


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_loads_in_the_frontend(page, path):
    workflow = json.loads(path.read_text())
    page.dialogs.clear()
    loaded = page.evaluate(LOAD_AND_READ, workflow)
    assert not _page_problems(page), _page_problems(page)
    by_id = {n["id"]: n for n in loaded}
    assert len(loaded) == len(workflow["nodes"])
    for node in workflow["nodes"]:
        got = by_id[node["id"]]
        assert got["registered"], f"node type {node['type']} unknown to the frontend"
        assert got["widgets"] == node["widgets_values"], (node["type"], got["widgets"], node["widgets_values"])
    page.keyboard.press("Escape")


def test_demo_workflow_runs_from_the_page(page, server):
    page.dialogs.clear()
    page.evaluate(LOAD_AND_READ, json.loads(DEMO.read_text()))
    before = set(http_json(server.url + "/history"))
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    deadline = time.time() + 240
    new = set()
    while not new and time.time() < deadline:
        new = set(http_json(server.url + "/history")) - before
        time.sleep(1)
    assert new, f"the queued demo never reached the history:\n{server.log()[-3000:]}"
    status = server.wait_for(new.pop())
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "demo_workflow.png"))
    assert status["status_str"] == "success", json.dumps(status)[:3000]
    assert not _page_problems(page), _page_problems(page)
