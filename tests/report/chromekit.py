"""A headless Chromium driven through the DevTools protocol over a pipe, with the standard
library only: open a file, list every request the page makes, evaluate an expression (the
harness's, never the page's: the page holds no script), take a screenshot."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_browser() -> str | None:
    """``$VISATTN_CHROMIUM`` when it names a program, else the first of ``NAMES`` on the PATH."""
    chosen = os.environ.get("VISATTN_CHROMIUM")
    if chosen and shutil.which(chosen):
        return shutil.which(chosen)
    return next((p for n in NAMES if (p := shutil.which(n))), None)


def _raised(fd: int) -> int:
    """``fd`` moved to a number of at least 10."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Chromium:
    """One headless browser; ``with Chromium(path) as b: b.open(file)``."""

    def __init__(self, executable: str, timeout: float = 20.0) -> None:
        self.timeout, self.events, self.next_id, self.buffer = timeout, [], 0, b""
        self.profile = tempfile.mkdtemp(prefix="visattn-chromium-")
        to_child, self.write_fd = os.pipe()
        self.read_fd, from_child = os.pipe()
        # moved above 4, so that putting one end on 3 or 4 in the child cannot overwrite the other
        to_child, from_child = (_raised(fd) for fd in (to_child, from_child))
        args = [
            executable, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={self.profile}", "about:blank",
        ]  # fmt: skip
        # the protocol pipe is the child's file descriptors 3 (commands) and 4 (replies)
        launch = (f"import os, sys; os.dup2({to_child}, 3); os.dup2({from_child}, 4); "
                  "os.execvp(sys.argv[1], sys.argv[1:])")  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-c", launch, *args], pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_child)
        os.close(from_child)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.write_fd)
        os.close(self.read_fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise ConnectionError("Chromium closed the protocol pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        """Send one command and return its result; events met meanwhile are kept."""
        self.next_id += 1
        command: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self.write_fd, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        for message in self.events:
            if message.get("method") == event:
                return message
        while True:
            message = self._read_message(deadline)
            self.events.append(message)
            if message.get("method") == event:
                return message

    def open(self, path: Path, *, width: int = 1280, scripts: bool = False) -> str:
        """Load ``path`` in a new tab with page scripts off; returns the tab's session."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Network.enable"):
            self.send(method, session=session)
        self.send("Emulation.setScriptExecutionDisabled", {"value": not scripts}, session=session)
        metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        self.wait_for("Page.loadEventFired")
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def requested_urls(self) -> list[str]:
        return [
            m["params"]["request"]["url"]
            for m in self.events
            if m.get("method") == "Network.requestWillBeSent"
        ]

    def screenshot(self, session: str, height: int, *, scale: float = 0.5) -> bytes:
        clip = {"x": 0, "y": 0, "width": 1280, "height": height, "scale": scale}
        params = {"format": "png", "clip": clip, "captureBeyondViewport": True}
        shot = self.send("Page.captureScreenshot", params, session=session)
        return base64.b64decode(shot["data"])
