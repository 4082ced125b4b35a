"""Headless Chromium for the page tests, driven through chromedriver's W3C WebDriver API.

Plain HTTP to chromedriver (no selenium dependency). Tests skip where chromium or
chromedriver is missing; `.ci/run` installs both.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port  # re-exported: `from browser import free_port`

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]  # fmt: skip

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver not installed"
)


@contextmanager
def review_server(workspace: Path, run: str, port: int, *args: str) -> Iterator[dict[str, str]]:
    """`tunegate review serve` in its own process, as a reviewer starts it.

    Yields the sign-in link printed for each reviewer (`--reviewer NAME`) and, under `"output"`,
    everything it printed before serving; the process is stopped on exit.
    """
    import sys

    server = subprocess.Popen(
        [sys.executable, "-m", "tunegate.cli", "review", "serve", "-w", str(workspace),
         "--run", run, "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        printed, links = [], {}
        expected = args.count("--reviewer") or (0 if "--tokens" in args else 1)
        for line in server.stdout:  # the page links come before the server starts
            printed.append(line)
            if "sign-in link for " in line:
                name, link = line.split("sign-in link for ", 1)[1].split(": ", 1)
                links[name] = link.strip()
            if len(links) == expected and any("Ctrl-C" in p for p in printed):
                break
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield {**links, "output": "".join(printed)}
    finally:
        server.terminate()
        server.communicate(timeout=30)


def wait_http(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class WebDriver:
    """The few W3C WebDriver commands the tests need."""

    def __init__(self, url: str, profile: Path, width: int = 1280, height: int = 2400,
                 extra_args: tuple[str, ...] = ()):  # fmt: skip
        self.url = url
        args = [*ARGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                *extra_args]  # fmt: skip
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})[
            "sessionId"
        ]

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.load(resp)["value"]

    def cmd(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css: str, text: str) -> None:
        element = self.find(css)
        self.cmd("POST", f"/element/{element}/clear", {})
        self.cmd("POST", f"/element/{element}/value", {"text": text})

    def click(self, css: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/click", {})

    def click_through(self, css: str, timeout_s: float = 30.0) -> None:
        """Click a link or form button and wait for the page it leads to.

        A click can return before a POST-redirect-GET navigation starts; reading the page then
        sees the old document or a stale element. A flag set on the old window tells them apart.
        """
        self.script("window.__tunegate_old_page = true; return null")
        self.click(css)
        deadline = time.monotonic() + timeout_s
        while self.script("return window.__tunegate_old_page === true "
                          "|| document.readyState !== 'complete'"):  # fmt: skip
            if time.monotonic() > deadline:
                raise TimeoutError(f"no new page {timeout_s:.0f} s after clicking {css}")
            time.sleep(0.05)

    def text(self, css: str) -> str:
        return self.cmd("GET", f"/element/{self.find(css)}/text")

    def texts(self, css: str) -> list[str]:
        """Visible text of every element the selector matches."""
        return self.script(f"return [...document.querySelectorAll({css!r})].map(e => e.innerText)")

    def script(self, js: str) -> Any:
        """Run `js` (a function body: `return ...`) in the page."""
        return self.cmd("POST", "/execute/sync", {"script": js, "args": []})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))
        return path

    def quit(self) -> None:
        self.cmd("DELETE", "")


@contextmanager
def chromium(profile: Path, *extra_args: str) -> Iterator[WebDriver]:
    """A headless Chromium session behind a chromedriver of its own (`extra_args`: flags)."""
    port = free_port()
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    browser = None
    try:
        wait_http(f"http://127.0.0.1:{port}/status")
        browser = WebDriver(f"http://127.0.0.1:{port}", profile, extra_args=extra_args)
        yield browser
    finally:
        if browser is not None:
            browser.quit()
        driver.terminate()
        driver.wait(timeout=30)


def is_blank(png: Path) -> bool:
    """True when a screenshot is (nearly) one colour: an empty or failed page."""
    from PIL import Image

    with Image.open(png) as img:
        colours = img.convert("RGB").resize((64, 120)).getcolors(64 * 120)
    return colours is not None and len(colours) <= 20  # None: more colours than pixels
