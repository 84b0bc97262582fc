import subprocess
import sys
from pathlib import Path


def test_the_generated_types_match_the_openapi_document():
    script = Path(__file__).parents[1] / "scripts/gen_types.py"
    run = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
