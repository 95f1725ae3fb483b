"""The notebooks in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

Notebook 02 (the explorers) and notebook 06 (a study with the layer slider) run top to bottom from the
Run menu; then, as a user would, the block slider is moved with the keyboard, a prompt is typed and
submitted with Enter, the method is switched, the prompt box is emptied (the error replaces the figure)
and the layer viewer's box is ticked. After each step the heat-map image must have changed, the status
line must name the new settings, and no output may show "Error displaying widget", a traceback or a
widget's plain-text repr. The explorers must then fit a 900x900 window with the file browser open and a
1280x720 screen (no sideways scrolling, the colour bar in view, the slider's track at least 120 px), the
export button must write the figure and its manifest, and the saved notebook reopened with a new kernel
must show each explorer as a static snapshot with one note and no live-looking controls. Notebook 06 is
reloaded with its kernel alive, saved, and reopened with a fresh kernel: the widgets must show their last
figures (from the saved widget state), not errors. The shipped notebooks must open unmodified.

Chromium: ``GRADECLIP_CHROMIUM``, else Debian's /usr/bin/chromium or one on PATH; Playwright drives it
(no browser download). Where either is missing the test is skipped with the reason. Screenshots of
every step (and of a failure) go to ``GRADECLIP_BROWSER_SHOTS`` or the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from gradeclip_utils.notebooks import install_lab_settings, list_notebooks

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
#: seconds allowed for running a whole notebook (QUICK sizes) in the browser
RUN_ALL_TIMEOUT = 300
#: seconds allowed for one redraw to reach the page
REDRAW_TIMEOUT = 60
WIDGET_REPR = re.compile(r"\b(VBox|HBox|IntSlider|Dropdown|Text|Image|HTML|Checkbox|Button|SelectMultiple|Combobox|"
                         r"ToggleButtons|FloatProgress|IntProgress)\(")
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
#: the notebook panel on show
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def chromium_or_skip() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("no browser: playwright is not installed (pip install -e '.[dev]')")
    for candidate in (os.environ.get("GRADECLIP_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no browser: Chromium not found (apt-get install chromium, or set GRADECLIP_CHROMIUM)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def notebook_copy(stem: str, folder: Path, figures: Path) -> str:
    """The repository's notebook with papermill's injected parameters (QUICK sizes, figures to a
    temporary folder), as the headless runner would run it."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    source = next(p for p in list_notebooks() if p.stem.startswith(stem))
    notebook = parameterize_notebook(load_notebook_node(str(source)),
                                     {"QUICK": True, "OUT_DIR": str(figures / source.stem)})
    nbformat.write(notebook, folder / source.name)
    return source.name


class Lab:
    """JupyterLab started for the test only: 127.0.0.1, a free port, a token, and temporary root,
    configuration, data, runtime, settings and workspace folders (the user's own are never read); its
    "python3" kernel is ipykernel's own, this interpreter, talking over IPC sockets."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.root.mkdir(parents=True)
        self.port, self.token = free_port(), secrets.token_hex(16)
        folders = {name: base / name for name in ("config", "data", "runtime", "settings", "workspaces",
                                                   "app-settings", "ipython")}
        for folder in folders.values():
            folder.mkdir()
        install_lab_settings(folders["app-settings"])  # what scripts/setup.sh installs into the environment
        (folders["app-settings"] / "overrides.d" / "browser-test.json").write_text(json.dumps({
            "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
            "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"}}))  # every cell in the page
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(folders["config"]), JUPYTER_DATA_DIR=str(folders["data"]),
                   JUPYTER_RUNTIME_DIR=str(folders["runtime"]), JUPYTERLAB_SETTINGS_DIR=str(folders["settings"]),
                   JUPYTERLAB_WORKSPACES_DIR=str(folders["workspaces"]), IPYTHONDIR=str(folders["ipython"]), PYTHONWARNINGS="ignore::DeprecationWarning")
        env.pop("MPLBACKEND", None)  # the kernels draw inline
        env.pop("JUPYTER_PATH", None)  # the kernel is ipykernel's own "python3": this interpreter
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                   "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={self.root}", f"--LabApp.app_settings_dir={folders['app-settings']}",
                   "--KernelManager.transport=ipc", "--ServerApp.terminals_enabled=False",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        self.log = open(base / "jupyterlab.log", "w")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.api("status")
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"JupyterLab did not start: see {base / 'jupyterlab.log'}")
                time.sleep(0.5)

    def url(self, path: str, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}{query}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    base = tmp_path_factory.mktemp("browser")
    lab = Lab(base)
    shots = Path(os.environ.get("GRADECLIP_BROWSER_SHOTS") or base / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    playwright = sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(base / "chromium-profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1100})
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(REDRAW_TIMEOUT * 1000)
        yield page, lab, shots
        context.close()
    finally:
        playwright.stop()
        lab.close()


class Steps:
    """Screenshots each step; on a failure saves one more and names the files in the error."""

    def __init__(self, page, shots: Path, name: str) -> None:
        self.page, self.shots, self.name, self.count = page, shots, name, 0

    def shot(self, label: str) -> Path:
        self.count += 1
        path = self.shots / f"{self.name}-{self.count:02d}-{label}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is not None:
            path = self.shot("failure")
            raise AssertionError(f"{error} (screenshots: {self.shots}, last {path.name})") from error


def open_notebook(page, lab: Lab, name: str) -> None:
    """Open ``name`` alone (``reset``: no other tab of an earlier test) and wait for its kernel."""
    for session in lab.api("sessions"):  # earlier tests' kernels: stopped, they cost CPU and memory
        lab.api(f"sessions/{session['id']}", method="DELETE")
    page.goto(lab.url(f"lab/tree/{name}", "&reset"))
    wait_kernel(page, lab, name)


def wait_kernel(page, lab: Lab, name: str, timeout: float = 120) -> None:
    """Wait until the notebook is shown and its kernel has started and is idle."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while not any(s["path"].endswith(name) and s["kernel"]["execution_state"] == "idle" for s in lab.api("sessions")):
        assert time.monotonic() < deadline, f"no idle kernel for {name}"
        time.sleep(0.5)
    wait_idle(page, timeout)


def wait_idle(page, timeout: float = 120) -> None:
    page.wait_for_function("""() => {
        const i = document.querySelector(`${PANEL} .jp-Notebook-ExecutionIndicator`);
        return i && i.getAttribute('data-status') === 'idle';
    }""".replace("${PANEL}", PANEL), timeout=timeout * 1000)


def run_all(page) -> None:
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells")).first.click()
    page.wait_for_function("""() => {
        const prompts = Array.from(document.querySelectorAll(`${PANEL} .jp-CodeCell .jp-InputPrompt`));
        const i = document.querySelector(`${PANEL} .jp-Notebook-ExecutionIndicator`);
        return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent))
            && i && i.getAttribute('data-status') === 'idle';
    }""".replace("${PANEL}", PANEL), timeout=RUN_ALL_TIMEOUT * 1000)


def assert_clean(page) -> None:
    """No output shows a widget error, a traceback or a widget's plain-text repr."""
    outputs = page.locator(f"{PANEL} .jp-OutputArea-output").all_inner_texts()
    text = "\n".join(outputs)
    assert outputs, "the notebook shows no output"
    assert "Error displaying widget" not in text, "a widget could not be displayed"
    assert "Traceback" not in text and not page.locator(f"{PANEL} .jp-OutputArea-output[data-mime-type*='error']").count()
    found = WIDGET_REPR.findall(text)
    assert not found, f"plain-text widget repr in the outputs: {found}"


def output_of(page, code: str):
    """The output area of the code cell whose source contains ``code``."""
    cell = page.locator(f"{PANEL} .jp-CodeCell").filter(has=page.locator(".jp-InputArea", has_text=code)).first
    return cell.locator(".jp-OutputArea").first


def image_digest(widget) -> str:
    """SHA-256 of the PNG the heat-map image shows (fetched from its blob URL), once it has loaded."""
    image = widget.locator("img.widget-image").first
    image.wait_for(state="visible")
    return image.evaluate("""async img => {
        await img.decode();
        const bytes = await (await fetch(img.src)).arrayBuffer();
        const hash = await crypto.subtle.digest('SHA-256', bytes);
        return Array.from(new Uint8Array(hash)).map(b => b.toString(16).padStart(2, '0')).join('');
    }""")


def wait_drawn(widget, expected: str) -> str:
    """Wait until the status names ``expected`` and the explorer is not busy; returns the status text."""
    widget.scroll_into_view_if_needed()
    status = widget.locator(".gradeclip-status").first
    deadline = time.monotonic() + REDRAW_TIMEOUT
    while True:
        text = status.inner_text()
        busy = widget.locator(".gradeclip-busy, .gradeclip-stale").count()
        if expected in text and "rendering" not in text and not busy:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"the status never showed {expected!r}; it shows {text!r}")
        time.sleep(0.2)


def watch_busy(widget) -> None:
    """Record (in ``window.gradeclipBusySeen``) whether the widget ever shows the busy state: the status
    saying it is rendering while the figure is marked stale."""
    widget.evaluate("""el => {
        window.gradeclipBusySeen = false;
        const check = () => {
            if (el.querySelector('img.gradeclip-stale') && /rendering/.test(el.textContent)) {
                window.gradeclipBusySeen = true;
            }
        };
        new MutationObserver(check).observe(el, {subtree: true, attributes: true, childList: true,
                                                 characterData: true});
    }""")


def shown_at_pixel_size(widget) -> bool:
    """The heat-map image is displayed at its own pixel size (text keeps its size whatever the panels)."""
    return widget.locator("img.widget-image").first.evaluate(
        "img => Math.abs(img.getBoundingClientRect().width - img.naturalWidth) <= 1")


def control(widget, kind: str, label: str):
    """The control of type ``kind`` (widget-slider, widget-text, widget-dropdown, ...) whose label is ``label``."""
    return widget.locator(f".{kind}").filter(has=widget.page.locator("label.widget-label", has_text=label)).first


def show_file_browser(page) -> None:
    """Open the file browser in the left side bar (as a user with it open sees the notebook)."""
    if not page.locator("#filebrowser").is_visible():
        page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='filebrowser']").click()
    page.locator("#filebrowser").wait_for(state="visible")


def layout_report(widget) -> dict:
    """How the explorer's output fits its output area: the sideways overflow of the output area and of its
    boxes, where the figure (its colour bar at the right edge) ends against the output area and the window,
    and the block slider's track length."""
    return widget.evaluate("""el => {
        const out = el.querySelector('.jp-OutputArea-output');
        const img = out.querySelector('img.widget-image');
        const box = img.getBoundingClientRect(), area = out.getBoundingClientRect();
        const track = out.querySelector('.widget-slider .slider-container');
        const boxes = Array.from(out.querySelectorAll('.widget-box, .widget-html, .widget-html-content'))
            .filter(b => b.offsetParent !== null);
        return {overflow: out.scrollWidth - out.clientWidth, area: area.width,
                boxOverflow: Math.max(0, ...boxes.map(b => b.scrollWidth - b.clientWidth)),
                figureRight: box.right, areaRight: area.right, window: window.innerWidth,
                figureWidth: box.width, naturalWidth: img.naturalWidth,
                track: track ? track.getBoundingClientRect().width : null};
    }""")


def assert_fits(widget, what: str, slider: bool) -> dict:
    """Nothing of the explorer is cut or scrolls sideways; the figure with its colour bar is inside the window."""
    widget.locator("img.widget-image").first.wait_for(state="visible")
    report = layout_report(widget)
    assert report["overflow"] <= 1, f"{what}: the output area scrolls sideways ({report})"
    assert report["boxOverflow"] <= 1, f"{what}: a row of controls or a table scrolls sideways ({report})"
    assert report["figureRight"] <= min(report["areaRight"], report["window"]) + 1, \
        f"{what}: the figure (and its colour bar) is cut ({report})"
    assert report["figureWidth"] <= report["naturalWidth"] + 1
    if slider:
        assert report["track"] is not None and report["track"] >= 120, f"{what}: the slider's track is short ({report})"
    return report


def snapshot_report(widget) -> dict:
    """What a saved explorer shows without a kernel: the note, the controls and inputs on show, and the
    broken-link marks ipywidgets puts on disconnected views that are visible."""
    return widget.evaluate("""el => {
        const out = el.querySelector('.jp-OutputArea-output');
        const shown = e => e.offsetParent !== null;
        const marks = Array.from(out.querySelectorAll('.jupyter-widgets-disconnected')).filter(e => {
            const mark = getComputedStyle(e, '::before');
            return shown(e) && mark.content !== 'none' && mark.display !== 'none';
        });
        const note = out.querySelector('.gradeclip-snapshot-note');
        return {note: note && shown(note) ? note.innerText : null, marks: marks.length,
                controls: Array.from(out.querySelectorAll('.gradeclip-controls')).filter(shown).length,
                inputs: Array.from(out.querySelectorAll('input, select, button, textarea')).filter(shown).length,
                figure: !!Array.from(out.querySelectorAll('img.widget-image')).find(shown)};
    }""")


def test_explorer_notebook_in_the_browser(browser_page, tmp_path):
    page, lab, shots = browser_page
    name = notebook_copy("02", lab.root, tmp_path / "figures")
    page.set_viewport_size({"width": 1600, "height": 1100})
    with Steps(page, shots, "02") as steps:
        open_notebook(page, lab, name)
        run_all(page)
        steps.shot("run-all")
        assert_clean(page)
        explorer = output_of(page, "explorer.widget")
        status = wait_drawn(explorer, "grad_eclip \u00b7 block 3 \u00b7 faithful mode \u00b7 fp32")
        assert shown_at_pixel_size(explorer)
        before = image_digest(explorer)
        prompts_before = int(re.search(r"(\d+) prompts?", status).group(1))

        # the block slider, with the keyboard
        control(explorer, "widget-slider", "block").locator(".noUi-handle").focus()
        page.keyboard.press("ArrowLeft")
        wait_drawn(explorer, "grad_eclip \u00b7 block 2 \u00b7 faithful mode")
        after_slider = image_digest(explorer)
        assert after_slider != before, "the heat maps did not change with the block"
        steps.shot("block-2")

        # a typed prompt, submitted with Enter
        box = control(explorer, "widget-text", "prompts").locator("input")
        box.click()
        box.press("End")
        box.type("; a green star")
        box.press("Enter")
        wait_drawn(explorer, f"{prompts_before + 1} prompts")
        after_prompt = image_digest(explorer)
        assert after_prompt != after_slider, "the heat maps did not change with the new prompt"
        assert "a green star" in explorer.locator("table").first.inner_text()
        assert shown_at_pixel_size(explorer)
        steps.shot("prompt")

        # the explained score: the zero-shot probability among the prompts, then back to the cosine
        score = control(explorer, "widget-dropdown", "score").locator("select")
        score.select_option(label="probability")
        wait_drawn(explorer, "score probability")
        assert image_digest(explorer) != after_prompt, "the heat maps did not change with the score"
        assert "p (probability)" in explorer.locator("table").first.inner_text()
        steps.shot("probability")
        score.select_option(label="cosine")
        wait_drawn(explorer, f"{prompts_before + 1} prompts")
        assert "score" not in explorer.locator(".gradeclip-status").first.inner_text()
        assert image_digest(explorer) == after_prompt, "the cosine's maps did not come back"

        # the method
        control(explorer, "widget-dropdown", "method").locator("select").select_option(label="rollout")
        wait_drawn(explorer, "rollout \u00b7 block: not used \u00b7 mode: not used")
        assert score.is_disabled(), "the score switch stays live for a method that ignores the score"
        assert image_digest(explorer) != after_prompt, "the heat maps did not change with the method"
        steps.shot("rollout")

        # a slow method (RISE): while it draws, the status says so and the old figure is marked stale
        watch_busy(explorer)
        before_rise = image_digest(explorer)
        control(explorer, "widget-dropdown", "method").locator("select").select_option(label="rise")
        wait_drawn(explorer, "rise \u00b7 block: not used")
        assert explorer.evaluate("() => window.gradeclipBusySeen"), "no busy state while RISE was drawing"
        assert image_digest(explorer) != before_rise
        steps.shot("rise")

        # an empty prompt box: the error replaces the figure, scores and words
        box.fill("")
        box.press("Enter")
        wait_drawn(explorer, "could not render")
        assert not explorer.locator("img.widget-image").first.is_visible()
        assert "a green star" not in explorer.inner_text()
        steps.shot("error")
        box.fill("a red circle; a blue square")
        box.press("Enter")
        wait_drawn(explorer, "2 prompts")
        assert explorer.locator("img.widget-image").first.is_visible()

        # the comparison's prompt box also draws on Enter
        comparison = output_of(page, "comparison.widget")
        wait_drawn(comparison, "methods")
        compared = image_digest(comparison)
        prompt = control(comparison, "widget-text", "prompt").locator("input")
        prompt.fill("a blue square")
        prompt.press("Enter")
        wait_drawn(comparison, "\u201ca blue square\u201d")
        assert image_digest(comparison) != compared
        steps.shot("comparison")
        assert_clean(page)

        check_window_sizes(page, steps, {"explorer": explorer, "methods": comparison,
                                         "models": output_of(page, "side_by_side.widget")})
        check_export_button(lab, steps, explorer)
        check_reopened(page, lab, steps, name)


def check_window_sizes(page, steps: Steps, widgets: dict) -> None:
    """A narrow window with the file browser open, then a laptop screen: the figures scale down to the
    output area with their colour bar, the rows of controls wrap, the explorer's slider keeps its track."""
    for width, height in ((900, 900), (1280, 720)):
        page.set_viewport_size({"width": width, "height": height})
        show_file_browser(page)
        for what, widget in widgets.items():
            widget.locator("img.widget-image").first.scroll_into_view_if_needed()
            report = assert_fits(widget, f"{what} at {width}x{height}", slider=what == "explorer")
            steps.shot(f"{width}x{height}-{what}")
            if width == 900:
                assert report["area"] < 500 and report["figureWidth"] < report["naturalWidth"]  # scaled down


def check_export_button(lab: Lab, steps: Steps, explorer) -> None:
    """The export button writes the current figure and its manifest into the folder in its box."""
    explorer.locator(".widget-button", has_text="export").scroll_into_view_if_needed()
    explorer.locator(".widget-button", has_text="export").click()
    deadline = time.monotonic() + REDRAW_TIMEOUT
    while "saved" not in explorer.inner_text():
        assert time.monotonic() < deadline, "the export button wrote nothing"
        time.sleep(0.2)
    written = sorted((lab.root / "outputs" / "explorers").glob("explorer_*"))
    assert {path.suffix for path in written} == {".png", ".pdf", ".json"}, written
    manifest = json.loads(next(p for p in written if p.suffix == ".json").read_text())
    assert manifest["prompts"] == ["a red circle", "a blue square"] and manifest["settings"]["method"] == "rise"
    steps.shot("exported")


def check_reopened(page, lab: Lab, steps: Steps, name: str) -> None:
    """Saved, the kernel shut down and the notebook reopened: each explorer is a static snapshot of its last
    figure with one note, without controls that look live and do nothing. A colleague's copy (not signed by
    this server: untrusted, so JupyterLab renders no widget) shows the display's static HTML instead: the
    figure of when the cell ran, with the same note."""
    page.locator(f"{PANEL} [data-command='docmanager:save']").first.click()
    deadline = time.monotonic() + 60
    while WIDGET_STATE not in nbformat.read(lab.root / name, as_version=4).metadata.get("widgets", {}):
        assert time.monotonic() < deadline, "the saved notebook has no widget state"
        time.sleep(0.5)
    for session in lab.api("sessions"):
        lab.api(f"sessions/{session['id']}", method="DELETE")
    page.reload()
    wait_kernel(page, lab, name)
    for code, what in (("explorer.widget", "explorer"), ("comparison.widget", "methods")):
        widget = output_of(page, code)
        widget.scroll_into_view_if_needed()
        widget.locator("img.widget-image").first.wait_for(state="visible")
        report = snapshot_report(widget)
        assert report["note"] and "run the cell to use the controls" in report["note"], (what, report)
        assert report["figure"] and report["marks"] == 0 and report["controls"] == 0, (what, report)
        assert report["inputs"] == 0, (what, report)
        widget.locator(".gradeclip-snapshot-note").first.scroll_into_view_if_needed()
        steps.shot(f"reopened-{what}")
    assert_clean(page)

    shared = nbformat.read(lab.root / name, as_version=4)
    shared.cells[0].source += "\n\nA colleague's copy."
    nbformat.write(shared, lab.root / "shared.ipynb")
    open_notebook(page, lab, "shared.ipynb")
    explorer = output_of(page, "explorer.widget")
    explorer.scroll_into_view_if_needed()
    snapshot = explorer.locator(".gradeclip-snapshot").first
    snapshot.wait_for(state="visible")
    assert "run the cell to use the controls" in snapshot.inner_text()
    assert snapshot.locator("img").first.evaluate("img => img.complete && img.naturalWidth > 100")
    assert not explorer.locator(".jupyter-widgets").count()
    steps.shot("untrusted-copy")


def test_the_shipped_notebooks_open_unmodified(browser_page, tmp_path):
    """Opened as they are committed, with a kernel started, no notebook is marked modified (JupyterLab
    rewrites a kernelspec or language_info that differs from its kernel's)."""
    from ipykernel.ipkernel import IPythonKernel

    page, lab, shots = browser_page
    folder = lab.root / "shipped"
    folder.mkdir()
    for source in list_notebooks():
        shutil.copyfile(source, folder / source.name)
    stored = nbformat.read(folder / list_notebooks()[0].name, as_version=4).metadata["language_info"]
    if stored.get("version") not in (None, IPythonKernel.language_info["version"]):
        pytest.skip(f"the notebooks store Python {stored['version']}'s language_info, the kernel is "
                    f"{IPythonKernel.language_info['version']}: JupyterLab rewrites it on open")
    page.set_viewport_size({"width": 1280, "height": 720})
    with Steps(page, shots, "shipped") as steps:
        for source in list_notebooks():
            open_notebook(page, lab, f"shipped/{source.name}")
            time.sleep(1)  # the kernel's info has arrived (the kernel is idle): what it changes is changed
            tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=source.name).first
            steps.shot(source.stem)
            assert "jp-mod-dirty" not in (tab.get_attribute("class") or ""), f"{source.name} opens modified"


def test_study_notebook_survives_a_reload_and_a_reopen(browser_page, tmp_path):
    page, lab, shots = browser_page
    name = notebook_copy("06", lab.root, tmp_path / "figures")
    page.set_viewport_size({"width": 1600, "height": 1100})
    with Steps(page, shots, "06") as steps:
        open_notebook(page, lab, name)
        run_all(page)
        steps.shot("run-all")
        assert_clean(page)
        viewer = output_of(page, "viewer.widget")
        wait_drawn(viewer, "blocks 0\u20133 (sum)")  # where the notebook's own cells left it
        before = image_digest(viewer)
        control(viewer, "widget-slider", "block").locator(".noUi-handle").focus()
        page.keyboard.press("ArrowRight")
        wait_drawn(viewer, "blocks 1\u20133 (sum)")
        summed = image_digest(viewer)
        assert summed != before, "the map did not change with the block"
        viewer.locator(".widget-checkbox input").first.click()
        wait_drawn(viewer, "grad_eclip \u00b7 block 1 \u00b7 faithful mode")
        assert image_digest(viewer) != summed
        label = viewer.locator(".widget-checkbox").first
        assert label.evaluate("el => el.scrollWidth <= el.clientWidth + 1"), "the checkbox label is cut off"
        steps.shot("block-1")
        page.set_viewport_size({"width": 900, "height": 900})  # a narrow window with the file browser open
        show_file_browser(page)
        viewer.locator("img.widget-image").first.scroll_into_view_if_needed()
        assert_fits(viewer, "layer viewer at 900x900", slider=True)
        steps.shot("narrow-900")
        page.set_viewport_size({"width": 1600, "height": 1100})

        # saved (JupyterLab also autosaves): the widget state goes into the file
        page.locator(f"{PANEL} [data-command='docmanager:save']").first.click()
        deadline = time.monotonic() + 60
        while WIDGET_STATE not in nbformat.read(lab.root / name, as_version=4).metadata.get("widgets", {}):
            assert time.monotonic() < deadline, "the saved notebook has no widget state"
            time.sleep(0.5)

        # a page reload with the kernel alive: every widget comes back live, no progress bar leaves an error
        page.reload()
        wait_kernel(page, lab, name)
        viewer = output_of(page, "viewer.widget")
        wait_drawn(viewer, "grad_eclip \u00b7 block 1 \u00b7 faithful mode")
        assert_clean(page)
        shown = image_digest(viewer)
        control(viewer, "widget-slider", "block").locator(".noUi-handle").focus()
        page.keyboard.press("ArrowRight")
        wait_drawn(viewer, "grad_eclip \u00b7 block 2 \u00b7 faithful mode")  # still live
        assert image_digest(viewer) != shown
        steps.shot("reloaded")

        # the kernel shut down and the notebook reopened: the saved widget state shows the last figures
        page.locator(f"{PANEL} [data-command='docmanager:save']").first.click()
        time.sleep(2)
        for session in lab.api("sessions"):
            lab.api(f"sessions/{session['id']}", method="DELETE")
        page.reload()
        wait_kernel(page, lab, name)
        viewer = output_of(page, "viewer.widget")
        viewer.scroll_into_view_if_needed()
        viewer.locator("img.widget-image").first.wait_for(state="visible")
        assert "block 2" in viewer.locator(".gradeclip-status").first.inner_text()
        assert_clean(page)
        steps.shot("reopened")


#: a notebook that shows the explorer on a random-weight ViT classifier (``support.classifiers``)
CLASSIFIER_CELLS = [
    "import sys\nsys.path.insert(0, {tests!r})\n"
    "import gradeclip_utils as ge\nfrom gradeclip_utils.synthetic import generate_scene\n"
    "from gradeclip_utils.widgets import Explorer\nfrom support.classifiers import timm_classifier",
    "LABELS = ['tabby, tabby cat', 'tiger cat', 'whippet', 'sports car', 'car wheel', 'goldfish', 'tench', "
    "'great white shark', 'hen', 'ostrich']\n"
    "model = ge.wrap_model(timm_classifier(image_size=(64, 64)), classes=LABELS, name='random ViT classifier')\n"
    "explorer = Explorer(model, [generate_scene(5, n_objects=2)], ['whippet'])\nexplorer.widget",
]


def test_a_classifier_in_the_explorer(browser_page, tmp_path):
    """The explorer on an image classifier, as a user meets it: a class added from the box that completes the
    class names, the probability chosen from the model's scores, and a method it cannot run chosen from the
    list (marked so), whose reason replaces the figure."""
    page, lab, shots = browser_page
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source.format(
        tests=str(Path(__file__).resolve().parents[1]))) for source in CLASSIFIER_CELLS],
        metadata=nbformat.read(list_notebooks()[0], as_version=4).metadata)  # its kernel: no kernel dialog
    nbformat.write(notebook, lab.root / "classifier.ipynb")
    page.set_viewport_size({"width": 1600, "height": 1100})
    with Steps(page, shots, "classifier") as steps:
        open_notebook(page, lab, "classifier.ipynb")
        run_all(page)
        assert_clean(page)
        explorer = output_of(page, "explorer.widget")
        wait_drawn(explorer, "score logit \u00b7 fp32 \u00b7 1 class")
        first = image_digest(explorer)
        steps.shot("one-class")

        picker = control(explorer, "widget-text", "add").locator("input")
        assert picker.get_attribute("list"), "the class box offers no completion"
        picker.fill("hen")
        picker.press("Enter")
        wait_drawn(explorer, "2 classes")
        assert image_digest(explorer) != first
        assert "whippet; hen" == control(explorer, "widget-text", "classes").locator("input").input_value()
        steps.shot("two-classes")

        score = control(explorer, "widget-dropdown", "score").locator("select")
        assert score.locator("option").all_inner_texts() == ["logit", "probability"]
        score.select_option(label="probability")
        wait_drawn(explorer, "score probability")
        assert "p (probability)" in explorer.locator("table").first.inner_text()
        steps.shot("probability")

        control(explorer, "widget-dropdown", "method").locator("select").select_option(
            label="maskclip (not for this model)")
        wait_drawn(explorer, "could not render")
        status = explorer.locator(".gradeclip-status").first.inner_text()
        assert "maskclip is not available for timm ViT classifier models" in status and "Traceback" not in status
        assert not explorer.locator("img.widget-image").first.is_visible()
        steps.shot("refused")
        assert_clean(page)
