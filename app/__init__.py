"""firmtopics: firm-level topics and cross-firm themes from a corpus of firm sentences."""

import os

# numba picks its threading layer at its first parallel call, TBB first when a TBB library
# is loaded. OpenVINO (an embedding backend) loads its own TBB, so in a process that
# embeds with OpenVINO numba would switch to it: another layer than in every other
# process, and one that numba warns is not safe across a fork. Its choice is kept what it
# is without OpenVINO (OpenMP, else numba's own work queue).
os.environ.setdefault("NUMBA_THREADING_LAYER_PRIORITY", "omp workqueue tbb")
