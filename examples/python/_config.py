"""Where the examples find the API: IMAGEGEN_BASE_URL and IMAGEGEN_API_KEY, else the state file `npm start`
writes (.state/stack.json, or $STATE_DIR/stack.json). The SDK is imported from sdk-python/src when it is not
installed (`pip install ./sdk-python` installs it)."""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
try:
    import imagegen  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "sdk-python/src"))

from imagegen import ImageGen  # noqa: E402


def client() -> ImageGen:
    state_path = Path(os.environ.get("STATE_DIR", ROOT / ".state")) / "stack.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    return ImageGen(
        os.environ.get("IMAGEGEN_API_KEY") or state.get("demo_api_key"),
        base_url=os.environ.get("IMAGEGEN_BASE_URL") or state.get("edge_url"),
    )


def model() -> str:
    return os.environ.get("IMAGEGEN_MODEL", "tiny-shapes")
