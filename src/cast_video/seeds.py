"""The package's seeds, named in one place.

A run is a function of its config's `seed`: every random stream of training (sampler order,
augmentation, drop path, the demo's synthetic clips) is derived from it, so the defaults below are
the only seed constants in the library.
"""

DEFAULT_SEED = 0  # the default `seed` of every config (training, pre-training, data, the demo)
BENCHMARK_SEED = 0  # the random weights `cast-video benchmark` times (speed does not depend on them)
