import os

from hypothesis import settings

# Few examples by default keep the suite fast; HYPOTHESIS_PROFILE=thorough runs many more.
settings.register_profile("default", max_examples=10, deadline=None, derandomize=False)
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
