"""
A real browser against the deployed site: headless Chromium (Debian's package, driven by
Playwright) logs in through nginx, makes a notebook from JupyterLab's launcher, runs
print(6*7), saves it with Ctrl+S, and the notebook on disk holds the 42.

Artifacts: artifacts/browser/ (screenshots, the saved notebook). With
UPDATE_README_SCREENSHOT=1 the final screenshot also replaces docs/screenshot-lab.png
(a test run leaves tracked files alone otherwise).
"""

import json
import os
import pwd
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from support.jupyter_http import JupyterClient

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploys the formula to this host: needs root"),
    pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium package"),
]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "browser"
README_SCREENSHOT = REPO / "docs" / "screenshot-lab.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
NOTEBOOK = "proof-42.ipynb"
UI_TIMEOUT_MS = 60_000


@pytest.fixture
def workdir(site):
    """An empty folder of root_dir for this test (made through the contents API)."""
    dep, password = site
    name = f"browser-{uuid.uuid4().hex[:8]}"
    client = JupyterClient(dep.url())
    assert client.login(password), f"API login failed ({client.last_login_status})"
    client.api("PUT", f"contents/{name}", json={"type": "directory"}).raise_for_status()
    yield name
    shutil.rmtree(Path(dep.pillar["root_dir"]) / name, ignore_errors=True)


@pytest.fixture
def page():
    """A Chromium page with a fresh profile; its last view is kept as last-page.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT,
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield page
        finally:
            page.screenshot(path=str(ARTIFACTS / "last-page.png"))  # what a failure looked like
            context.close()


def test_notebook_runs_and_saves_through_nginx(site, workdir, page):
    dep, password = site
    expect = playwright_api.expect
    expect.set_options(timeout=UI_TIMEOUT_MS)
    started = time.monotonic()

    # log in through nginx with the login form
    page.goto(dep.url("login"))
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url(re.compile(r"/lab\b"))
    expect(page.locator("#jp-main-dock-panel")).to_be_visible()
    # no news prompt: JupyterLab asks whether to fetch news in a toast that covers the
    # screen; the user's own setting (what clicking "No" stores) turns it off
    stored = page.evaluate(
        """async (url) => {
            const xsrf = decodeURIComponent(document.cookie.match(/(?:^|; )_xsrf=([^;]+)/)[1]);
            const res = await fetch(url, {method: "PUT", headers: {"X-XSRFToken": xsrf,
                "Content-Type": "application/json"}, body: JSON.stringify({raw: '{"fetchNews": "false"}'})});
            return res.status;
        }""",
        dep.url("lab/api/settings/@jupyterlab/apputils-extension:notification"),
    )
    assert stored == 204, f"storing the news setting: HTTP {stored}"

    # a new notebook from the launcher, in this test's folder; reset: the workspace that
    # the server kept from an earlier session would reopen its tabs instead of a launcher
    page.goto(dep.url(f"lab/tree/{workdir}?reset"))
    with page.expect_websocket(lambda ws: "/api/kernels/" in ws.url) as kernel_ws:
        page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    page.wait_for_url(re.compile(rf"/lab/tree/{workdir}/[^/]+\.ipynb"))
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    # a cell run before the kernel's websocket is up is silently dropped (the toolbar
    # says "idle" even before): wait for the kernel's first message, then "Idle"
    kernel_ws.value.wait_for_event("framereceived")
    kernel_status = page.locator(".jp-StatusBar-TextItem[title^='Change kernel']")  # "Python 3 (ipykernel) | Idle"
    expect(kernel_status).to_have_text(re.compile(r"\| Idle$"))

    # type into the first cell, run it
    notebook.locator(".jp-Cell .cm-content").first.click()
    page.keyboard.type("print(6*7)")
    page.keyboard.press("Shift+Enter")
    expect(notebook.locator(".jp-OutputArea-output").first).to_have_text(re.compile(r"^\s*42\s*$"))

    # save: JupyterLab 4 asks for a name on the first save of an Untitled notebook
    page.keyboard.press("Control+s")
    dialog = page.locator(".jp-Dialog")
    dialog.get_by_role("textbox").fill(NOTEBOOK)
    dialog.locator("button.jp-mod-accept").click()
    page.wait_for_url(re.compile(rf"/lab/tree/{workdir}/{re.escape(NOTEBOOK)}"))
    expect(page.locator(".lm-TabBar-tab.jp-mod-current .lm-TabBar-tabLabel")).to_have_text(NOTEBOOK)
    expect(page.locator(".lm-TabBar-tab.jp-mod-dirty")).to_have_count(0)

    expect(page.locator(".jp-toast-button", has_text=re.compile(r"^No$"))).to_have_count(0)
    shot = ARTIFACTS / f"lab-{time.strftime('%Y%m%d-%H%M%S')}.png"
    page.screenshot(path=str(shot))
    if os.environ.get("UPDATE_README_SCREENSHOT") == "1":
        shutil.copyfile(shot, README_SCREENSHOT)

    # the saved file, on disk under root_dir, as the server's user wrote it
    path = Path(dep.pillar["root_dir"]) / workdir / NOTEBOOK
    assert path.is_file(), f"{path} was not saved"
    shutil.copyfile(path, ARTIFACTS / NOTEBOOK)
    saved = json.loads(path.read_text(encoding="utf-8"))
    cell = saved["cells"][0]
    assert "".join(cell["source"]) == "print(6*7)"
    printed = "".join("".join(out.get("text", "")) for out in cell["outputs"])
    assert printed.strip() == "42", cell["outputs"]
    assert path.stat().st_uid == pwd.getpwnam(dep.pillar["user"]).pw_uid
    assert time.monotonic() - started < 120
