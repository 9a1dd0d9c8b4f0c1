"""The console in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium)
against a running origin and two regions of real cache nodes: the page shows both regions, a
push's progress moving, a stopped node turning unreachable, and charts with data points.
Screenshots are saved under the test's tmp dir (and copied to $EDGEDEPOT_SCREENSHOTS when set,
which is how docs/screenshots/ was made)."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from syncer.demo.sample_repo import SampleAptRepo
from tests.plugin.console import DISTRO_SYNC, ConsoleProcess
from tests.plugin.support import NodeProcess

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# As root in a closed network: no sandbox, and nothing that calls Google's services.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")
WAIT = 120.0
SITE_ADDRESS = "127.0.0.2"  # one site, told apart from the nodes (all on 127.0.0.1)
T = TypeVar("T")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            pytest.skip(f"{path} is not installed (make test installs chromium and "
                        "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options,
                              service=Service(CHROMEDRIVER, log_output=str(tmp_path / "driver.log")))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def regions(origin: NodeProcess, tmp_path: Path) -> Iterator[dict[str, NodeProcess]]:
    nodes: dict[str, NodeProcess] = {}
    try:
        for name in ("north-parent", "south-parent"):
            nodes[name] = NodeProcess(["--role", "cache", "--store", str(tmp_path / name),
                                       "--upstream", origin.url], tmp_path / f"{name}.log").start()
        nodes["north-child"] = NodeProcess(
            ["--role", "cache", "--store", str(tmp_path / "north-child"), "--upstream",
             nodes["north-parent"].url], tmp_path / "north-child.log").start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def write_inventory(path: Path, origin: NodeProcess, nodes: dict[str, NodeProcess],
                    top_package: str) -> None:
    sites = "".join(f'[sites.{r}-{i:02d}]\nregion = "{r}"\nprofile = "compute"\n'
                    + (f'addresses = ["{SITE_ADDRESS}"]\n' if (r, i) == ("north", 0) else "")
                    + "\n"
                    for r in ("north", "south") for i in range(12))
    path.write_text(f"""origin = "{origin.url}"

[regions.north]
parent = "{nodes['north-parent'].url}"
children = ["{nodes['north-child'].url}"]
bandwidth = "600k"

[regions.south]
parent = "{nodes['south-parent'].url}"
bandwidth = "300k"

[profiles.compute]
apt = {{ repo = "main", suite = "stable", packages = ["{top_package}"] }}
pip = {{ index = "local", requirements = ["edge-agent"] }}

{sites}""")


def wait(driver: Any, what: str, check: Callable[[Any], T], timeout: float = WAIT) -> T:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # the page redraws its tables every round: elements may go stale between calls
        return WebDriverWait(driver, timeout, poll_frequency=0.3,
                             ignored_exceptions=(StaleElementReferenceException,)).until(check)
    except TimeoutException:
        shot = Path(tempfile.gettempdir()) / "console-timeout.png"
        driver.save_screenshot(str(shot))
        raise AssertionError(f"the page never showed {what} (screenshot {shot})") from None


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    target = os.environ.get("EDGEDEPOT_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def site_downloads(node: NodeProcess, limit: int) -> int:
    """A site at SITE_ADDRESS fetching pool files from `node` (real HTTP from its own
    address, as the node sees it); the bytes it got."""
    host, port = node.url.removeprefix("http://").split(":")
    got = 0

    def get(path: str) -> bytes:
        conn = http.client.HTTPConnection(host, int(port), timeout=60,
                                          source_address=(SITE_ADDRESS, 0))
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (path, resp.status)
            return body
        finally:
            conn.close()

    packages = get("/apt/main/dists/stable/main/binary-amd64/Packages").decode()
    files = [line.split()[1] for line in packages.splitlines() if line.startswith("Filename:")]
    for name in files[:limit]:
        got += len(get(f"/apt/main/{name}"))
    return got


def region_progress(driver: Any, region: str) -> tuple[int, int] | None:
    got = driver.execute_script(
        "const r = document.querySelector('#regions tr[data-region=\"' + arguments[0] + '\"]');"
        "return r ? [r.dataset.bytesDone, r.dataset.bytesTotal] : null;", region)
    return None if got is None else (int(got[0]), int(got[1]))


def text_of(driver: Any, css: str) -> str:
    return str(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css))


def test_console_in_chromium(browser: Any, origin: NodeProcess,
                             regions: dict[str, NodeProcess], sample_apt: SampleAptRepo,
                             tmp_path: Path) -> None:
    inventory = tmp_path / "fleet.toml"
    write_inventory(inventory, origin, regions, sample_apt.top_package)
    with ConsoleProcess(inventory, tmp_path / "console.log", interval=1.0) as console:
        browser.get(console.url + "/")
        wait(browser, "both regions", lambda d: region_progress(d, "north") is not None
             and region_progress(d, "south") is not None)
        assert "3 / 3 up" in text_of(browser, "#card-nodes")

        push = subprocess.run([DISTRO_SYNC, "push", str(inventory), "--no-wait"],
                              capture_output=True, text=True, timeout=300)
        assert push.returncode == 0, push.stdout + push.stderr

        def moving(d: Any) -> tuple[int, int] | None:
            p = region_progress(d, "south")
            return p if p is not None and 0 < p[0] < p[1] else None

        first = wait(browser, "the push under way in region south", moving)
        assert first is not None  # (`until` returns only a true value)

        def moved_on(d: Any) -> tuple[int, int] | None:
            p = moving(d)
            return p if p is not None and p[0] > first[0] else None

        second = wait(browser, "the push's progress moving", moved_on)
        assert second is not None
        assert second[1] == first[1]
        assert "of 8." in text_of(browser, '#regions tr[data-region="south"]')

        def points(d: Any) -> int:
            n = d.execute_script(
                "const c = document.getElementById('chart-throughput')._chart;"
                "return c ? c.data[1].filter(v => v > 0).length : 0;")
            return int(n) if int(n) >= 2 else 0

        wait(browser, "a chart with data points", points)
        wait(browser, "plan progress drawn", lambda d: d.execute_script(
            "const c = document.getElementById('chart-plan')._chart;"
            "return c && c.data[1].some(v => v > 0 && v < 1);"))
        screenshot(browser, tmp_path, "console-push")

        browser.find_element("css selector", '#regions tr[data-region="north"]').click()
        wait(browser, "the region's own chart", lambda d: d.execute_script(
            "const c = document.getElementById('chart-region')._chart;"
            "return c && c.data[0].length > 1;"))
        screenshot(browser, tmp_path, "console-region")

        assert site_downloads(regions["north-child"], 8) > 0
        wait(browser, "bytes served to sites", lambda d: "saved on the WAN" in
             text_of(d, "#card-savings") and "0 B served" not in text_of(d, "#card-savings"))

        stopped = regions["south-parent"]
        url = stopped.url
        stopped.stop()
        browser.find_element("css selector", '#tabs button[data-tab="nodes"]').click()
        browser.execute_script(  # all regions again (clicking north filtered the tab)
            "const s = document.getElementById('nodes-region'); s.value = '';"
            "s.dispatchEvent(new Event('input'));")
        row = f'#nodes tr[data-node="{url}"][data-state="unreachable"]'
        wait(browser, f"{url} unreachable", lambda d: "unreachable" in text_of(d, row))
        wait(browser, "the nodes card counting it", lambda d: "1 unreachable" in
             text_of(d, "#card-nodes"))
        screenshot(browser, tmp_path, "console-nodes")

        browser.find_element("css selector", '#tabs button[data-tab="sites"]').click()
        browser.execute_script(
            "const s = document.getElementById('sites-region'); s.value = '';"
            "s.dispatchEvent(new Event('input'));")
        wait(browser, "a page of 24 sites", lambda d: "24 in all" in text_of(d, "#sites-pager"))
        wait(browser, "the site that downloaded", lambda d: "installing" in
             text_of(d, '#sites tr[data-site="north-00"]'))
        browser.find_element("css selector", '#sites tr[data-site="north-00"] td').click()
        wait(browser, "the site's details", lambda d: SITE_ADDRESS in text_of(d, "#site-detail"))
        screenshot(browser, tmp_path, "console-sites")

        for name in ("north-parent", "north-child"):  # the node status page, same look
            browser.get(regions[name].url + "/")
            wait(browser, "the node status page", lambda d: "hit ratio" in text_of(d, "main"))
        wait(browser, "the node's throughput chart", lambda d: d.execute_script(
            "const c = document.getElementById('chart-throughput')._chart;"
            "return c && c.data[0].length >= 2;"))
        screenshot(browser, tmp_path, "node-status")
