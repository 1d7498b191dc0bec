"""`python -m models.import`: import an ONNX classifier (see `models.import_onnx`, which holds the code:
`import` is a keyword, so this module can be run but not imported by name)."""

import sys

from models.import_onnx import main

if __name__ == "__main__":
    sys.exit(main())
