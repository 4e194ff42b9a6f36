"""A real browser: JupyterLab on 127.0.0.1 driven by Playwright in Debian's chromium.

05_generate: run all cells, move the temperature slider with the keyboard, type a prompt, click Generate, see text
stream into the output and the new temperature shown. 03_pretrain: run all cells, click Start, see the live plot
update twice, click Stop, find the checkpoint. Screenshots go to $MINIGPT_TEST_ARTIFACTS (default
runs/test-artifacts)/browser/. The server and the browser are shut down whatever happens.

Lab autosaves, so it serves a temporary copy of the notebooks, and the kernels work in a copy of a finished ci run
(`MINIGPT_CONFIG` / `MINIGPT_RUN_DIR` in the server's environment reach the kernels). Skipped, with the reason,
only where chromium is not installed (`apt-get install -y chromium`; .ci/run does it as root).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import notebook_runs

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MINIGPT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
ARTIFACTS = Path(os.environ.get("MINIGPT_TEST_ARTIFACTS", ROOT / "runs" / "test-artifacts")) / "browser"

KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, method: str = "GET"):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
    return json.loads(body) if body else None


def _shutdown_kernels(url: str) -> None:
    try:
        for sess in _api(url + "api/sessions") or []:
            _api(url + f"api/sessions/{sess['id']}", method="DELETE")
        for k in _api(url + "api/kernels") or []:
            _api(url + f"api/kernels/{k['id']}", method="DELETE")
    except Exception:
        pass


def _browser_config(dest: Path) -> Path:
    """params/ci.yaml with a 4-step pretrain, so 'run all' in 03 is quick and the panel's Start does the training."""
    cfg = yaml.safe_load((ROOT / "params" / "ci.yaml").read_text(encoding="utf-8"))
    cfg["pretrain"].update(max_steps=4, warmup_steps=1, eval_interval=2, save_interval=1000, log_interval=1)
    dest.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
                    "(Playwright's own browser download does not work here)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    base = tmp_path_factory.mktemp("lab")
    run_dir = notebook_runs.prepared_run(base / "run")
    # Checkpoints of the earlier (30-step) run would outrank the panel's: the trainer prunes by step number, so a
    # fresh run's Stop checkpoint below step 30 is deleted at once (tests/test_train_panel.py, xfail, documents it).
    for old in (run_dir / "pretrain").glob("checkpoint_step_*"):
        shutil.rmtree(old)
    serve = base / "serve"
    (serve / "notebooks").mkdir(parents=True)
    for name in ("03_pretrain", "05_generate"):
        shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", serve / "notebooks")
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = _free_port()
    conf = base / "config"
    conf.mkdir()
    (conf / "jupyter_server_config.py").write_text(
        "from jupyterlab.galata import configure_jupyter_server\n"
        "configure_jupyter_server(c)\n"
        f"c.ServerApp.ip = '127.0.0.1'\nc.ServerApp.port = {port}\nc.ServerApp.port_retries = 0\n"
        f"c.ServerApp.root_dir = {str(serve)!r}\nc.ServerApp.allow_root = True\nc.ServerApp.open_browser = False\n"
        "c.LabApp.news_url = None\n"
        f"c.LabApp.user_settings_dir = {str(base / 'settings')!r}\n"
        "c.ServerApp.jpserver_extensions = {'jupyterlab_jupytext': False}\n")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(conf), "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
           "MINIGPT_CONFIG": str(_browser_config(base / "browser.yaml")), "MINIGPT_RUN_DIR": str(run_dir),
           "MINIGPT_ROOT": str(ROOT), "PYTHONUNBUFFERED": "1"}
    log = open(base / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser"], cwd=serve, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{(base / 'lab.log').read_text()[-3000:]}")
            try:
                _api(url + "api/status")
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer on {url}:\n{(base / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"url": url, "run_dir": run_dir, "log": base / "lab.log"}
    finally:
        _shutdown_kernels(url)  # through the server, then the server (its whole process group)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


@pytest.fixture
def page(browser, lab, request):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    try:
        yield pg
    finally:
        try:
            pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-last.png"), full_page=True)
        except Exception:
            pass
        context.close()
        _shutdown_kernels(lab["url"])  # the next test starts from a quiet machine


def open_and_run_all(page, lab, path: str) -> None:
    page.goto(f"{lab['url']}lab/tree/{path}?reset")  # ?reset: no tabs restored from an earlier test's workspace
    deadline = time.time() + 120
    while not page.evaluate(KERNEL_IDLE):
        dialog = page.locator(".jp-Dialog")
        if dialog.count() and "Select Kernel" in dialog.first.inner_text():
            dialog.locator(".jp-mod-accept").first.click()  # the preselected kernel is the notebook's python3
        assert time.time() < deadline, "the notebook's kernel did not start (see the screenshot)"
        page.wait_for_timeout(250)
    # fire and forget: awaiting the command's promise has no timeout and can hang
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_generate_panel(page, lab):
    from playwright.sync_api import expect

    open_and_run_all(page, lab, "notebooks/05_generate.ipynb")
    panel = page.locator(".minigpt-generation-panel")
    expect(panel).to_be_visible(timeout=240_000)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)  # the panel's cell is the last one
    panel.scroll_into_view_if_needed()

    readout = page.locator(".minigpt-temperature .widget-readout")
    before = float(readout.inner_text())
    handle = page.locator(".minigpt-temperature .noUi-handle")
    handle.focus()
    handle.press("ArrowRight")
    handle.press("ArrowRight")
    new = f"{before + 0.10:.2f}"
    expect(readout).to_have_text(new)
    status = page.locator(".minigpt-generation-panel .minigpt-status")
    # the kernel's observer saw the new value and says so in the status line
    shown = re.compile(r"temperature=" + re.escape(new.rstrip("0").rstrip(".")) + r"(0000\d*)?\b")
    expect(status).to_contain_text(shown, timeout=30_000)

    page.locator(".minigpt-prompt textarea").fill("长江、")
    page.evaluate("""() => {
      const out = document.querySelector('.minigpt-output');
      window.__seen = [];
      new MutationObserver(() => {
        const t = out.innerText;
        if (window.__seen[window.__seen.length - 1] !== t) window.__seen.push(t);
      }).observe(out, {childList: true, subtree: true, characterData: true});
    }""")
    page.locator(".minigpt-generate").click()
    expect(status).to_contain_text("tokens/s", timeout=120_000)
    expect(status).to_contain_text(shown)  # generated with the new temperature
    seen = page.evaluate("() => window.__seen")
    final = page.locator(".minigpt-output").inner_text()
    _shot(page, "05_generate.png")
    assert final.startswith("长江、") and len(final.strip()) > len("长江、"), f"no generated text: {final!r}"
    assert len(seen) >= 2, f"the output did not update while streaming: {seen!r}"
    assert seen[0].strip() == "长江、" or len(seen[0]) < len(final), f"first state was already the final text: {seen!r}"


def test_train_panel(page, lab):
    from playwright.sync_api import expect

    open_and_run_all(page, lab, "notebooks/03_pretrain.ipynb")
    start = page.locator(".minigpt-start")
    expect(start).to_be_visible(timeout=300_000)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    start.scroll_into_view_if_needed()

    steps = page.locator(".minigpt-max-steps input")
    steps.fill("100000")  # tiny model (params/ci.yaml), but more steps than we wait for: Stop ends it
    steps.press("Enter")
    steps.press("Tab")
    start.click()
    status = page.locator(".minigpt-status")
    expect(status).to_contain_text("training", timeout=60_000)

    img = page.locator(".minigpt-train-output img")
    srcs: list[str] = []
    deadline = time.time() + 240
    while len(srcs) < 3 and time.time() < deadline:  # first image, then two updates in place
        if img.count() == 1:
            src = img.get_attribute("src") or ""
            if src and (not srcs or srcs[-1] != src):
                srcs.append(src)
                if len(srcs) == 2:
                    _shot(page, "03_pretrain_training.png")
        assert img.count() <= 1, "the live plot added a second image instead of updating the first"
        page.wait_for_timeout(250)
    assert len(srcs) >= 3, f"the live plot changed {len(srcs)} times in 240 s (status: {status.inner_text()!r})"

    page.locator(".minigpt-stop").click()
    expect(status).to_contain_text("stop requested", timeout=120_000)
    text = status.inner_text()
    m = re.search(r"done: step (\d+) \(stop requested\); checkpoint (checkpoint_step_\d+)", text)
    _shot(page, "03_pretrain_stopped.png")
    assert m, f"unexpected status after Stop: {text!r}"
    assert 4 < int(m.group(1)) < 100_000
    assert (lab["run_dir"] / "pretrain" / m.group(2) / "model.safetensors").is_file()
    expect(start).to_be_enabled()
