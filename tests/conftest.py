import os
import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

sys.path.insert(0, os.path.dirname(__file__))
# one share of the cores per pytest-xdist worker (`-n 2` on a 2-core machine: one thread each), so that
# workers never oversubscribe the cores (OpenMP threads spin-wait when they do)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads(), (os.cpu_count() or 1) // _WORKERS)))

# `ci` (chosen when $CI is set): reproducible draws, no example database, failures print a reproduction blob.
# `dev` (default): random draws, failing examples kept in .hypothesis/ and replayed first.
# `mutation`: like ci but no shrinking (a deliberately broken build fails fast).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.register_profile("mutation", derandomize=True, database=None, print_blob=True,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield
