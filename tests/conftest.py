import sys
from pathlib import Path

# Test helpers live beside the tests as plain modules (support_*.py, model_factory.py).
sys.path.insert(0, str(Path(__file__).parent))
