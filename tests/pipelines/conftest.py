import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repo root, outside the package
    sys.path.insert(0, str(ROOT))
