"""The real local stack for the end-to-end tests: `npm start` (infra/local/start.mjs) on its own port and state
folder, as tests/e2e/stack.ts starts it for the TypeScript tests, stopped (its whole process group) afterwards."""

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Stack:
    edge_url: str
    api_key: str
    admin_token: str
    default_model: str
    state_dir: Path
    logs: list[str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stack():
    state_dir = Path(tempfile.mkdtemp(prefix="imagegen-py-e2e-"))
    bin_dir = ROOT / "node_modules/.bin"  # Node 22 (wrangler needs it) first, as npm scripts do
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STATE_DIR": str(state_dir)}
    env |= {"EDGE_PORT": str(free_port()), "SKIP_DEMO": "1", "ALLOW_PRIVATE_WEBHOOKS": "true"}
    child = subprocess.Popen(
        [str(bin_dir / "node"), "infra/local/start.mjs", "--runners", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    logs: list[str] = []
    threading.Thread(target=lambda: logs.extend(child.stdout), daemon=True).start()
    state = state_dir / "stack.json"
    deadline = time.monotonic() + 200
    try:
        while not (state.exists() and any("is up" in line for line in logs)):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the stack did not come up:\n" + "".join(logs))
            time.sleep(0.25)
        s = json.loads(state.read_text())
        yield Stack(s["edge_url"], s["demo_api_key"], s["admin_token"], s["default_model"], state_dir, logs)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGINT)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(state_dir)], check=False)
