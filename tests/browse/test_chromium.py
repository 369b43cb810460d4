"""The feature browser in a real browser: Debian's headless Chromium loads the pages served by
uvicorn on 127.0.0.1 and we read the DOM it built, as a person's browser would show it."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from urllib.parse import urlencode

import pytest

from tests.browse.conftest import ATTACK, RELEASE, SAE_ID

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def server(browse_warehouse):
    import uvicorn

    from selfexplain.browse.app import create_app

    assert CHROMIUM, "chromium is not installed: `make test` installs Debian's chromium"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(browse_warehouse), host="127.0.0.1", port=port,
                            log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def dom(url: str, tmp_path) -> str:
    """The DOM Chromium built for `url` (scripts run, then serialised)."""
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-500:]
    return done.stdout


def rows(html: str) -> list[str]:
    return re.findall(r'<tr class="feature-row">(.*?)</tr>', html, re.S)


def test_pages_render_in_chromium(server, tmp_path):
    home = dom(server + "/", tmp_path)
    assert f">{SAE_ID}</a>" in home and "<h1>SAEs</h1>" in home
    table = dom(server + "/features?" + urlencode({"release": RELEASE, "sae_id": SAE_ID}),
                tmp_path)
    assert len(rows(table)) == 6
    page = dom(server + "/feature?" + urlencode({"release": RELEASE, "sae_id": SAE_ID,
                                                  "feature": 2}), tmp_path)
    assert '<span id="label">dogs and cats</span>' in page and "<svg" in page
    assert dom(server + "/evaluation", tmp_path).count("hit_top3") == 1


def test_search_and_filter_in_chromium(server, tmp_path):
    base = {"release": RELEASE, "sae_id": SAE_ID}
    found = rows(dom(server + "/features?" + urlencode({**base, "q": "cat"}), tmp_path))
    assert len(found) == 2 and all("cat" in r for r in found)
    flagged = rows(dom(server + "/features?" + urlencode({**base, "flagged": "yes"}), tmp_path))
    assert flagged and all("flagged</span>" in r for r in flagged)


def test_script_in_a_label_shows_as_text(server, tmp_path):
    page = dom(server + "/feature?" + urlencode({"release": RELEASE, "sae_id": SAE_ID,
                                                  "feature": 0}), tmp_path)
    assert "<script" not in page  # the page has no script of its own and none was injected
    assert '<span id="label">&lt;script&gt;alert(1)&lt;/script&gt;</span>' in page
    assert ATTACK.replace("<", "&lt;").replace(">", "&gt;") in page


def test_unknown_feature_is_a_404_page(server, tmp_path):
    page = dom(server + "/feature?" + urlencode({"release": RELEASE, "sae_id": SAE_ID,
                                                  "feature": 999}), tmp_path)
    assert "<h1>Not found</h1>" in page and "feature 999" in page
