"""firmtopics: firm-level topics and cross-firm themes from a corpus of firm sentences."""

import os

# numba picks its threading layer at its first parallel call, TBB first when a TBB library
# is loaded. OpenVINO (an embedding backend) loads its own TBB, so in a process that
# embeds with OpenVINO numba would switch to it: another layer than in every other
# process, and one that numba warns is not safe across a fork. Its choice is kept what it
# is without OpenVINO (OpenMP, else numba's own work queue).
os.environ.setdefault("NUMBA_THREADING_LAYER_PRIORITY", "omp workqueue tbb")

# pynndescent compiles at import the kernels it declares with their types, about 30 s on
# a machine that has not compiled them yet, though UMAP calls most of them only for 4,096
# points and more; they are compiled at their first call instead (app/typed_kernels.py).
from app import typed_kernels  # noqa: E402

typed_kernels.install()
