"""atheris harness of the ``envelope`` target (tests/fuzz/targets.py; docs/fuzzing.md)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.harness import main

if __name__ == "__main__":
    main("envelope")
