import atexit
import os
import shutil
import tempfile

from hypothesis import settings

# The suite never asks the network: the hub path is tested on local folders in the hub's layout,
# with the offline switches of `datasets` and huggingface_hub on (read when they are imported, so
# set before any test module imports them). What `datasets` and the token cache write goes to a
# temporary directory, not the user's cache.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
_CACHE = tempfile.mkdtemp(prefix="minitinybert-tests-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE, "datasets")
os.environ["HF_HOME"] = os.path.join(_CACHE, "hf-home")
os.environ.pop("MINITINYBERT_TOKEN_CACHE", None)

# Few examples by default keep the suite fast; HYPOTHESIS_PROFILE=thorough runs many more.
settings.register_profile("default", max_examples=10, deadline=None, derandomize=False)
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
