"""The documentation site: it builds offline with warnings as errors, every internal link resolves, and
headless Chromium renders the home page, a notebook page with its figures, and the API reference.

What runs:

1. ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (the ``make docs`` build, from an
   empty output folder so that every warning is reported). Skipped, with a message, when Sphinx or
   myst-nb is not installed (``bash scripts/setup.sh dev,docs`` installs them; ``make test`` does).
2. The site is served by ``http.server`` on a free localhost port, in a thread.
3. Every page reachable from the home page is crawled: every internal ``href``/``src`` (pages, images,
   scripts, stylesheets) must answer 200, and every ``#fragment`` must exist in its target page.
4. Chromium (``--headless --no-sandbox --disable-gpu --disable-background-networking``, a fresh
   ``--user-data-dir``, host resolution limited to localhost so nothing leaves the machine) loads the
   pages with ``--dump-dom``: titles, content, the notebook's figures and rendered math are checked,
   and no request made by the browser may 404.
5. Screenshots of the home page, the notebook page (its top and its first figure) and the API page
   are saved under ``docs/_build/screenshots/``.

Only the browser checks (4, 5) are skipped where Chromium is not installed (CI installs Debian's
``chromium`` package before ``make test``).
"""

from __future__ import annotations

import functools
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip(
    "sphinx",
    reason="Sphinx is not installed: the docs site was not built (install the docs extra: "
    "`bash scripts/setup.sh dev,docs`, which `make test` does)",
)
pytest.importorskip(
    "myst_nb",
    reason="myst-nb is not installed: the docs site was not built (install the docs extra: "
    "`bash scripts/setup.sh dev,docs`, which `make test` does)",
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BUILD = DOCS / "_build"
HTML = BUILD / "html"
SHOTS = BUILD / "screenshots"
NOTEBOOKS = ROOT / "notebooks"

PAGES = [
    "index",
    "install",
    "quickstart",
    "concepts",
    "coming_from",
    "faq",
    "real_models",
    "remote_teacher",
    "notebooks",
    "exercises",
    "teaching",
    "architecture",
    "glossary",
    "cli",
    "api/index",
    "performance",
    "references",
    "changelog",
]
SHOT_ROUTE = "/__figure_shot__"  # a test-only wrapper page (never written to the site), see _Handler
LAYOUT_ROUTE = "/__layout__"  # the same: measures pages in a browser, see _layout_page


# ---------------------------------------------------------------------------------------------------
# build and serve
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site() -> Path:
    """Build the site once for this module (fresh environment: every warning is reported)."""
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS), str(HTML)]
    shutil.rmtree(HTML, ignore_errors=True)  # from scratch, like `make docs` and CI
    start = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        pytest.fail(f"`{' '.join(cmd)}` failed (exit {proc.returncode}) after {seconds:.0f} s:\n{tail}")
    print(f"\n[docs] built {HTML} in {seconds:.1f} s")
    return HTML


class _Handler(SimpleHTTPRequestHandler):
    """Static files of the built site, a log of (path, status), and the screenshot wrapper page."""

    requests: list[tuple[str, int]]

    def log_message(self, *args):  # quiet
        pass

    def log_request(self, code="-", size="-"):
        try:
            self.requests.append((self.path, int(code)))
        except (TypeError, ValueError):
            pass

    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        body = None
        if self.path.startswith(SHOT_ROUTE):
            page = query.get("page", ["index.html"])[0]
            body = _figure_shot_page(page, query.get("selector", ["div.cell_output img"])[0]).encode()
        elif self.path.startswith(LAYOUT_ROUTE):
            body = _layout_page(
                query.get("pages", [""])[0].split(","), int(query.get("width", ["0"])[0])
            ).encode()
        if body is not None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


def _figure_shot_page(page: str, selector: str) -> str:
    """A page that shows ``page`` in a full-window iframe, scrolled to the first element that matches
    ``selector`` (by default its first notebook figure).

    Headless Chromium's ``--screenshot`` captures the top of a page only; this wrapper waits for the
    page (and MathJax, which changes heights) and then scrolls instantly, so the screenshot shows a figure.
    """
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>screenshot</title>
<style>html, body {{ margin: 0; padding: 0; overflow: hidden; }}
iframe {{ border: 0; width: 100vw; height: 100vh; display: block; }}</style></head>
<body><iframe id="page" src="/{page}"></iframe>
<script>
const frame = document.getElementById("page");
frame.addEventListener("load", () => {{
  const win = frame.contentWindow;
  const mathjax = win.MathJax && win.MathJax.startup && win.MathJax.startup.promise;
  (mathjax || Promise.resolve()).then(() => new Promise(done => setTimeout(done, 300))).then(() => {{
    const img = win.document.querySelector({json.dumps(selector)});
    if (img) win.scrollTo({{top: img.getBoundingClientRect().top + win.scrollY - 120, behavior: "instant"}});
    document.title = img ? "scrolled to figure" : "no figure";
  }});
}});
</script></body></html>"""


def _layout_page(pages: list[str], width: int = 0) -> str:
    """A page that loads each of ``pages`` in turn in an iframe ``width`` px wide (0: the window's width;
    headless Chromium's window is at least 500 px wide, so a phone is emulated by the iframe) and
    measures, once MathJax is
    done: the width of the content column, every visible code/output block (``pre``) and whether its
    text is wider than the block (``scrollWidth > clientWidth``: the reader would have to scroll
    sideways), every visible image of the content (rendered and natural size, alternative text),
    whether the page itself is wider than the window, and the images of the β explorer. The result is
    JSON in ``<pre id="layout">``, read from ``--dump-dom``."""
    frame_width = f"{width}px" if width else "100vw"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>layout</title>
<style>html, body {{ margin: 0; padding: 0; }}
iframe {{ border: 0; width: {frame_width}; height: 100vh; display: block; }}</style></head>
<body><iframe id="page"></iframe><pre id="layout"></pre>
<script>
const pages = {json.dumps(pages)}, results = [], frame = document.getElementById("page");
let index = 0;
function next() {{
  if (index < pages.length) {{ frame.src = "/" + pages[index]; return; }}
  document.getElementById("layout").textContent = JSON.stringify(results);
  document.title = "measured";
}}
function box(el) {{
  const r = el.getBoundingClientRect();
  return [Math.round(r.width), Math.round(r.height)];
}}
frame.addEventListener("load", () => {{
  const win = frame.contentWindow, doc = win.document;
  const mathjax = win.MathJax && win.MathJax.startup && win.MathJax.startup.promise;
  (mathjax || Promise.resolve()).then(() => new Promise(done => setTimeout(done, 50))).then(() => {{
    const article = doc.querySelector("article") || doc.body;
    const visible = el => el.offsetParent !== null;
    const blocks = [...article.querySelectorAll("pre")].filter(visible);
    const images = [...article.querySelectorAll("img")].filter(visible);
    results.push({{
      page: pages[index],
      column: article.clientWidth,
      page_overflow: doc.documentElement.scrollWidth > doc.documentElement.clientWidth + 1,
      blocks: blocks.length,
      overflowing: blocks.filter(p => p.scrollWidth > p.clientWidth + 1)
                         .map(p => [p.scrollWidth, p.clientWidth, p.textContent.slice(0, 80)]),
      images: images.map(im => ({{
        size: box(im), natural: [im.naturalWidth, im.naturalHeight], alt: im.getAttribute("alt") || "",
        figure: !!im.closest("div.cell_output"), slider: !!im.closest("div.odistill-slider"),
      }})),
    }});
    index += 1;
    next();
  }});
}});
next();
</script></body></html>"""


@pytest.fixture(scope="module")
def server(site):
    """(base URL, request log) of an http.server serving the built site on a free localhost port."""
    log: list[tuple[str, int]] = []
    handler = functools.partial(type("Handler", (_Handler,), {"requests": log}), directory=str(site))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", log
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------------------------------------------
# HTML helpers
# ---------------------------------------------------------------------------------------------------


class _Links(html.parser.HTMLParser):
    """Collects link targets (href/src of a, link, img, script, iframe, source) and element ids."""

    ATTRS = {"a": "href", "link": "href", "img": "src", "script": "src", "iframe": "src", "source": "src"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        name = self.ATTRS.get(tag)
        if name and attrs.get(name):
            self.links.append((tag, attrs[name]))
        if tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def _parse(text: str) -> _Links:
    parser = _Links()
    parser.feed(text)
    return parser


def _get(url: str, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read() if method == "GET" else b""
    except urllib.error.HTTPError as error:
        return error.code, b""


def _notebook_01() -> Path:
    found = sorted(NOTEBOOKS.glob("01_*.ipynb"))
    assert found, "notebooks/01_*.ipynb not found"
    return found[0]


def _png_outputs(path: Path) -> int:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return sum(
        "image/png" in out.get("data", {})
        for c in cells
        if c["cell_type"] == "code"
        for out in c.get("outputs", [])
    )


def _page_of(notebook: Path) -> str:
    return f"notebooks/{notebook.relative_to(NOTEBOOKS).with_suffix('.html').as_posix()}"


# ---------------------------------------------------------------------------------------------------
# the build
# ---------------------------------------------------------------------------------------------------


def test_site_builds_with_every_page(site):
    for page in PAGES:
        assert (site / f"{page}.html").is_file(), f"{page}.html missing from the built site"
    from odistill.classroom.grading import TEACHER_ONLY

    teacher_only = set(TEACHER_ONLY)
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")) + sorted(NOTEBOOKS.glob("exercises/**/*.ipynb")):
        if notebook.name not in teacher_only:
            assert (site / _page_of(notebook)).is_file(), f"no page for {notebook.relative_to(ROOT)}"


def test_the_site_shows_the_learners_exercises_without_solutions(site):
    """The exercise pages are the released versions: no solution, no hidden test, no solutions page."""
    pages = sorted((site / "notebooks" / "exercises").glob("ex*.html"))
    assert len(pages) == len(list(NOTEBOOKS.glob("exercises/ex*.ipynb"))) >= 5
    for page in pages:
        text = page.read_text()
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text, page.name
        assert "NotImplementedError" in text, f"{page.name}: the answer cell should be the learner's stub"
    ex1 = (site / "notebooks" / "exercises" / "ex1_reverse_kl.html").read_text()
    assert "log_p_s.exp() * (log_p_s - log_p_t)" not in ex1  # the reference solution
    for name in ("solutions", "notebook_exercise_solutions"):  # the teacher-only notebooks
        assert not (site / "notebooks" / "exercises" / f"{name}.html").exists(), name


def test_notebook_pages_show_their_stored_figures(site):
    notebook = _notebook_01()
    assert _png_outputs(notebook) > 0, (
        f"{notebook.relative_to(ROOT)} has no stored figure outputs; the docs render committed outputs "
        "(run `make notebooks` and commit the executed notebook)"
    )
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        pngs = _png_outputs(path)
        page = (site / _page_of(path)).read_text(encoding="utf-8")
        images = [src for tag, src in _parse(page).links if tag == "img" and src.endswith(".png")]
        assert len(images) >= pngs, f"{path.name}: {pngs} stored figures but {len(images)} <img> on its page"
        for src in images:
            assert (site / _page_of(path)).parent.joinpath(src).resolve().is_file(), (
                f"{path.name}: {src} missing"
            )


def test_the_home_page_code_runs_as_written(capsys):
    """Every ```python block of docs/index.md, run in order in one namespace; the printed describe()
    line is the one its comment shows."""
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/index.md", "exec"), namespace)  # noqa: S102 - the page's own code
    printed = capsys.readouterr().out
    shown = re.search(r"print\(config\.describe\(\)\)\s+# (.*)", text).group(1).strip()
    assert shown in printed.splitlines()
    assert len(namespace["result"].history) == 20


def test_the_performance_page_shows_each_table_once_and_captions_its_plot(site):
    text = (site / "performance.html").read_text(encoding="utf-8")
    assert text.count("JSD values &amp; gradients vs float64 reference") == 1  # the headline, not twice
    alts = re.findall(r'<img[^>]*alt="([^"]*)"', text)
    assert alts and all(len(a) > 40 and not a.endswith(".png") for a in alts), alts


def test_the_config_api_entry_describes_every_field(site):
    from dataclasses import fields

    from odistill import DistillConfig

    text = (site / "api" / "config.html").read_text(encoding="utf-8")
    missing = [f.name for f in fields(DistillConfig) if f"{f.name}</span></code> =" not in text]
    assert not missing, f"fields without a description on the DistillConfig entry: {missing}"
    # PRESETS is described, not dumped as 20 lines of reprs; docstrings are not split at their colon
    # (napoleon reads "words: more words" on a property or a variable as "type: description")
    assert "DistillConfig(lmbda=" not in text
    for anchor, start in (
        ("DistillConfig.effective_beta", "The GKD β"),
        ("PRESETS", "The named configurations"),
    ):
        entry = text[text.index(f'id="odistill.train.config.{anchor}"') :][:3000]
        assert start in entry and "Type:" not in entry, anchor


def test_no_api_docstring_is_split_at_its_colon(site):
    """napoleon reads a variable's or a property's first line "words: more words" as "type: description";
    a type that is a phrase is such a split sentence (write the summary without that colon)."""
    field = re.compile(
        r'<dt class="field-odd">Type<span class="colon">:</span></dt>\s*<dd class="field-odd"><p>(.*?)</p>',
        re.S,
    )
    split = []
    for page in sorted((site / "api").glob("*.html")):
        for found in field.finditer(page.read_text(encoding="utf-8")):
            words = re.sub(r"<[^>]+>", "", found.group(1)).split()
            if len(words) > 3:
                split.append(f"{page.name}: {' '.join(words)}")
    assert not split, "docstrings split at their colon:\n" + "\n".join(split)


def test_the_notebooks_page_has_the_overview_with_runtimes(site):
    text = (site / "notebooks.html").read_text(encoding="utf-8")
    assert "runtime (tiny, 2 CPU cores)" in text
    for notebook in sorted(NOTEBOOKS.glob("0*.ipynb")):
        assert f'href="notebooks/{notebook.stem}.html"' in text, notebook.name


def test_the_beta_explorer_works_offline(site):
    """Notebook 01's slider is plain HTML over stored figures: one image visible, the others hidden, a
    range input that switches them, alternative texts that say which β each shows."""
    text = (site / "notebooks" / "01_forward_vs_reverse_kl.html").read_text(encoding="utf-8")
    box = re.search(r'<div id="odistill-slider-[0-9a-f]+" class="odistill-slider">(.*?)</div>', text, re.S)
    assert box, "no β explorer on the page"
    images = re.findall(r"<img ([^>]*)>", box.group(1))
    assert len(images) >= 5 and all('src="data:image/png;base64,' in im for im in images)
    assert sum("display:none" not in im for im in images) == 1  # the initial figure, never an empty box
    assert 'type="range"' in box.group(1) and "oninput=" in box.group(1)
    assert all("β = " in re.search(r'alt="([^"]*)"', im).group(1) for im in images)


def test_notebook_figures_have_alternative_texts(site):
    """Every stored figure of a notebook page says what it shows (cell metadata ``mystnb.image.alt``),
    instead of the hash file name myst-nb would give it."""
    for path in sorted(NOTEBOOKS.glob("0*.ipynb")):
        text = (site / _page_of(path)).read_text(encoding="utf-8")
        figures = re.findall(r'<img[^>]*src="[^"]*_images/[^"]+\.png"[^>]*>', text)
        assert len(figures) >= _png_outputs(path), path.name
        for tag in figures:
            alt = re.search(r'alt="([^"]*)"', tag)
            assert alt and len(alt.group(1)) > 40 and ".png" not in alt.group(1), f"{path.name}: {tag[:200]}"


def test_notebook_pages_link_a_download_colab_and_the_source(site):
    """Each notebook page starts with a download link to the file it renders (copied next to it; an
    exercise's is the learner's version), and, except exercises, Open in Colab and source links built
    from ``[project.urls] Repository`` of pyproject.toml."""
    import tomllib

    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    owner_repo = repository.removeprefix("https://github.com/")
    notebooks = sorted(NOTEBOOKS.glob("0*.ipynb")) + sorted(NOTEBOOKS.glob("exercises/ex*.ipynb"))
    for path in notebooks:
        page = site / _page_of(path)
        text = page.read_text(encoding="utf-8")
        box = re.search(r'<div class="odistill-notebook-links">(.*?)</div>', text, re.S)
        assert box, f"{page.name}: no notebook links"
        hrefs = dict(
            (label, href) for href, label in re.findall(r'href="([^"]+)"[^>]*>([^<]+)</a>', box.group(1))
        )
        download = hrefs.get(f"Download {path.name}")
        assert download == path.name and (page.parent / download).is_file(), (page.name, hrefs)
        rel = path.relative_to(NOTEBOOKS).as_posix()
        colab = f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{rel}"
        if rel.startswith("exercises/"):
            assert "Open in Colab" not in hrefs  # the repository holds the sources, with the solutions
            downloaded = (page.parent / download).read_text(encoding="utf-8")
            assert "BEGIN SOLUTION" not in downloaded and "HIDDEN TESTS" not in downloaded, path.name
        else:
            assert hrefs.get("Open in Colab") == colab, hrefs
            assert hrefs.get("Source on GitHub") == f"{repository}/blob/main/notebooks/{rel}", hrefs


def test_every_page_has_a_favicon_and_a_link_to_the_repository(site):
    import tomllib

    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    for name in ("index.html", "api/config.html", _page_of(_notebook_01())):
        page = site / name
        text = page.read_text(encoding="utf-8")
        icon = re.search(r'<link rel="(?:shortcut )?icon" href="([^"]+)"', text)
        assert icon and (page.parent / icon.group(1)).resolve().is_file(), name
        assert f'href="{repository}"' in text, f"{name}: no link to the repository"


def test_every_public_module_has_an_api_page():
    """A new module of the package needs a page in docs/api/ (copy one of the others, add it to
    api/index.md)."""
    documented = {p.stem for p in (DOCS / "api").glob("*.md")} - {"index", "config_fields"}
    modules = set()
    for part in ("core", "train", "bench", "classroom"):  # the command line has the generated CLI page
        folder = ROOT / "odistill" / part
        modules |= {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
        modules |= {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
    modules.add("serve")  # the teacher server's two modules share one page
    missing = sorted(modules - documented)
    assert not missing, (
        f"modules without an API page: {missing} (add docs/api/<module>.md and list it in docs/api/index.md)"
    )
    index = (DOCS / "api" / "index.md").read_text(encoding="utf-8")
    unlisted = sorted(name for name in documented if f"\n{name}\n" not in index)
    assert not unlisted, f"API pages not in the toctree of docs/api/index.md: {unlisted}"


def test_cli_reference_is_generated_from_the_parser(site):
    from odistill.cli import build_parser

    parser = build_parser()
    page = (site / "cli.html").read_text(encoding="utf-8")
    commands = next(
        a.choices for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)
    )
    assert commands, "the parser has no subcommands"
    for name, sub in commands.items():
        assert f"odistill {name}" in page, f"`odistill {name}` missing from cli.html"
        for action in sub._actions:
            for option in action.option_strings:
                assert option in page, f"option {option} of `odistill {name}` missing from cli.html"


def test_every_internal_link_resolves(server):
    base, _ = server
    host = urllib.parse.urlsplit(base).netloc
    pages: dict[str, _Links] = {}
    queue = [f"{base}/index.html"]
    targets: dict[str, set[str]] = {}  # url without fragment -> pages linking to it
    fragments: list[tuple[str, str, str]] = []  # (page, target url, fragment)
    while queue:
        url = queue.pop()
        if url in pages:
            continue
        status, body = _get(url)
        assert status == 200, f"{url} answered {status}"
        pages[url] = parsed = _parse(body.decode("utf-8", "replace"))
        for tag, link in parsed.links:
            absolute = urllib.parse.urljoin(url, link)
            parts = urllib.parse.urlsplit(absolute)
            if parts.scheme not in ("http", "https") or parts.netloc != host:
                continue  # external (not requested: no network) or mailto:, javascript:, data:
            target = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
            targets.setdefault(target, set()).add(url)
            if parts.fragment and tag == "a":
                fragments.append((url, target, urllib.parse.unquote(parts.fragment)))
            if tag == "a" and parts.path.endswith(".html") and target not in pages:
                queue.append(target)

    broken = []
    for target, sources in sorted(targets.items()):
        if target in pages:
            continue
        status, _ = _get(target, method="HEAD")
        if status != 200:
            broken.append(f"{target} ({status}), linked from {sorted(sources)[0]}")
    assert not broken, "broken internal links:\n" + "\n".join(broken)

    missing = sorted(
        {
            f"{page} -> {target}#{frag}"
            for page, target, frag in fragments
            if target in pages and frag not in pages[target].ids
        }
    )
    assert not missing, "links to anchors that do not exist:\n" + "\n".join(missing)

    crawled = {urllib.parse.urlsplit(u).path for u in pages}
    for page in PAGES:
        assert f"/{page}.html" in crawled, f"{page}.html is not reachable from the home page"
    assert f"/{_page_of(_notebook_01())}" in crawled, "notebook 01's page is not reachable from the home page"


# ---------------------------------------------------------------------------------------------------
# the browser
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    pytest.skip(
        "chromium is not installed, so the docs site was not checked in a browser "
        "(Debian: apt-get install chromium; .ci/run installs it)"
    )


def _browse(
    chromium: str,
    url: str,
    *extra: str,
    timeout: int = 120,
    size: tuple[int, int] = (1280, 1000),
    budget_ms: int = 5000,
) -> str:
    profile = tempfile.mkdtemp(prefix="odistill-chromium-")
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        # CDN scripts (widgets) must fail fast instead of reaching the network: localhost only.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--window-size={size[0]},{size[1]}",
        f"--virtual-time-budget={budget_ms}",
        *extra,
        url,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish loading {url} within {timeout} s")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, f"chromium failed on {url} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stdout


def _no_browser_404(log, since: int):
    bad = [(path, code) for path, code in log[since:] if code >= 400]
    assert not bad, f"the browser's requests failed: {bad}"


def _content_pages(site: Path) -> list[str]:
    """Every page a reader reads (not the generated index, search or highlighted-source pages)."""
    skip = ("_modules/", "genindex", "search", "py-modindex", "_static/", "_images/")
    return sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if not p.relative_to(site).as_posix().startswith(skip)
    )


_LAYOUTS: dict[int, list[dict]] = {}


def _layout(server, chromium, site, width: int) -> list[dict]:
    """The measurements of :func:`_layout_page` for every content page, in a window ``width`` px wide."""
    if width not in _LAYOUTS:
        base, log = server
        since = len(log)
        pages = _content_pages(site)
        url = f"{base}{LAYOUT_ROUTE}?width={width}&pages={urllib.parse.quote(','.join(pages))}"
        dom = _browse(
            chromium, url, "--dump-dom", size=(max(width, 800), 900), budget_ms=180_000, timeout=600
        )
        found = re.search(r'<pre id="layout">(.*?)</pre>', dom, re.S)
        assert found and found.group(1).strip(), f"the layout page measured nothing:\n{dom[-2000:]}"
        _LAYOUTS[width] = json.loads(html.unescape(found.group(1)))
        assert [m["page"] for m in _LAYOUTS[width]] == pages
        _no_browser_404(log, since)
    return _LAYOUTS[width]


def test_home_page_renders(server, chromium):
    base, log = server
    since = len(log)
    dom = _browse(chromium, f"{base}/index.html", "--dump-dom")
    page = _parse(dom)
    assert "odistill" in page.title
    for text in (
        "On-policy distillation of language models",
        "The 60-second tour",
        "Concepts",
        "API reference",
    ):
        assert text in dom, f"{text!r} not on the rendered home page"
    assert any(link.endswith("notebooks.html") for _, link in page.links), (
        "home page has no link to the notebooks"
    )
    _no_browser_404(log, since)


def test_notebook_page_renders_with_figures_and_math(server, chromium):
    base, log = server
    notebook = _notebook_01()
    since = len(log)
    dom = _browse(chromium, f"{base}/{_page_of(notebook)}", "--dump-dom")
    page = _parse(dom)
    assert "Forward vs reverse KL" in page.title, page.title
    images = [src for tag, src in page.links if tag == "img" and "_images/" in src and src.endswith(".png")]
    assert images, "no figure (<img> of a stored plot) on notebook 01's page"
    fetched = {path for path, code in log[since:] if code == 200}
    assert any(p.split("?")[0].endswith(Path(src).name) for src in images for p in fetched), (
        "the browser did not load the notebook's figures"
    )
    assert "<mjx-container" in dom, (
        "MathJax did not typeset the notebook's math (served from _static/mathjax)"
    )
    _no_browser_404(log, since)


def test_api_page_renders(server, chromium):
    base, log = server
    since = len(log)
    dom = _browse(chromium, f"{base}/api/index.html", "--dump-dom")
    assert "API reference" in _parse(dom).title
    for name in ("forward_kl", "generalized_jsd", "DistillConfig", "distill"):
        assert name in dom, f"{name} not in the API overview"
    dom = _browse(chromium, f"{base}/api/divergences.html", "--dump-dom")
    page = _parse(dom)
    for anchor in (
        "odistill.core.divergences.forward_kl",
        "odistill.core.divergences.reverse_kl",
        "odistill.core.divergences.generalized_jsd",
    ):
        assert anchor in page.ids, f"autodoc entry {anchor} missing"
    assert "KL(p_T ‖ p_S)" in dom and "Σ" in dom, "the docstrings' unicode summaries are not on the page"
    # the formulas are math (``.. math::`` in the docstrings), typeset by MathJax
    assert dom.count("<mjx-container") >= 8, "the divergences' formulas were not typeset as math"
    _no_browser_404(log, since)


def test_code_blocks_and_figures_fit_the_column_at_1366_px(server, chromium, site):
    """At a laptop's 1366 px: under 5 % of the code and output blocks are wider than the content column
    (none, since long lines wrap), no page scrolls sideways, and no figure is shrunk below 200 px height."""
    layout = _layout(server, chromium, site, 1366)
    blocks = sum(m["blocks"] for m in layout)
    overflowing = [f"{m['page']}: {o}" for m in layout for o in m["overflowing"]]
    assert blocks > 200, blocks
    assert len(overflowing) < 0.05 * blocks, (
        f"{len(overflowing)} of {blocks} code/output blocks are wider than the column:\n"
        + "\n".join(overflowing)
    )
    assert not [m["page"] for m in layout if m["page_overflow"]]
    plots = [(m["page"], im) for m in layout for im in m["images"] if im["natural"][1] >= 200]
    stored = sum(_png_outputs(path) for path in NOTEBOOKS.glob("0*.ipynb"))
    assert sum(im["figure"] and not im["slider"] for _, im in plots) >= stored
    short = [f"{page}: {im['size']} (natural {im['natural']})" for page, im in plots if im["size"][1] < 200]
    assert not short, "figures shown less than 200 px tall at 1366 px:\n" + "\n".join(short)


def test_pages_and_figures_fit_a_phone_at_390_px(server, chromium, site):
    """On a 390 px phone no page scrolls sideways as a whole; a figure keeps a readable size (up to 600 px
    wide) in a box that scrolls sideways, instead of shrinking to the 360 px column."""
    layout = _layout(server, chromium, site, 390)
    assert not [m["page"] for m in layout if m["page_overflow"]], "pages wider than a 390 px phone"
    assert all(m["column"] <= 390 for m in layout)
    figures = [
        (m["page"], im) for m in layout for im in m["images"] if im["figure"] and im["natural"][1] >= 200
    ]
    assert figures
    shrunk = [
        f"{page}: {im['size']} (natural {im['natural']})"
        for page, im in figures
        if im["size"][0] < min(im["natural"][0], 600) - 1
    ]
    assert not shrunk, "figures shrunk to the phone's column:\n" + "\n".join(shrunk)


def test_the_offline_beta_explorer_shows_a_figure_in_the_browser(server, chromium, site):
    """Without network (CDNs unreachable), notebook 01's β explorer shows one decoded figure, full size."""
    layout = _layout(server, chromium, site, 1366)
    page = next(m for m in layout if m["page"] == _page_of(_notebook_01()))
    shown = [im for im in page["images"] if im["slider"]]  # hidden frames are not "visible"
    assert len(shown) == 1, shown
    assert shown[0]["natural"][0] > 300 and shown[0]["size"][1] >= 200, shown[0]
    assert "β = " in shown[0]["alt"]


def test_screenshots(server, chromium):
    base, log = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    notebook_page = _page_of(_notebook_01())
    shot = f"{base}{SHOT_ROUTE}?page={urllib.parse.quote(notebook_page)}"
    laptop, phone = (1366, 900), (390, 844)
    shots = {
        "home.png": (f"{base}/index.html", laptop),
        "notebook.png": (f"{base}/{notebook_page}", laptop),
        "notebook-figure.png": (shot, laptop),
        "beta-explorer-offline.png": (f"{shot}&selector={urllib.parse.quote('div.odistill-slider')}", laptop),
        "api.png": (f"{base}/api/divergences.html", laptop),
        "config-api.png": (f"{base}/api/config.html", laptop),
        "home-phone.png": (f"{base}/index.html", phone),
        "notebook-figure-phone.png": (shot, phone),
    }
    since = len(log)
    for name, (url, size) in shots.items():
        path = SHOTS / name
        path.unlink(missing_ok=True)
        _browse(chromium, url, f"--screenshot={path}", size=size)
        assert path.is_file(), f"chromium wrote no screenshot {path}"
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, (
            f"{path} is not a real screenshot"
        )
    _no_browser_404(log, since)
    print(f"\n[docs] screenshots in {SHOTS}: {', '.join(shots)}")
