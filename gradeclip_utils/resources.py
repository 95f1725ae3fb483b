"""Where the package finds its files: the only module that names the repository and the data folders.

``DATA_DIR`` is the folder named by the ``GRADECLIP_DATA`` environment variable when it is set (for a
package installed outside its checkout), else ``data/`` of the checkout; the embedded synthetic model,
the sample scenes and the photographs lie under it.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the checkout the package lives in (the folder above ``gradeclip_utils/``)
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("GRADECLIP_DATA", REPO_ROOT / "data"))
#: the embedded synthetic CLIP (``load_model("synthetic")`` resolves to ``local-dir:`` this folder)
SYNTHETIC_DIR = DATA_DIR / "synthetic_clip"
#: the embedded synthetic classifier (``load_model("synthetic-classifier")``)
SYNTHETIC_CLASSIFIER_DIR = DATA_DIR / "synthetic_classifier"
#: the synthetic sample scenes
SAMPLES_DIR = DATA_DIR / "samples"
#: the bundled photographs (licences in LICENSES.md beside them)
PHOTOS_DIR = DATA_DIR / "photos"
