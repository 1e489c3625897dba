"""The accepted range of every number the data and metric commands take, in one place (the
checks that apply them, such as check_int, are animegen.settings')."""

from __future__ import annotations

import math

from animegen.data.images import MAX_PIXELS

MIN_RESOLUTION = 4  # the models count their layers as log2(resolution // 4)
MIN_SYNTH_RESOLUTION = 8  # a smaller drawn face is a few blots
MAX_IMAGES = 10**7  # data synth --count and fid/kid --num
MAX_DATASET_BYTES = 64 * 2**30  # data synth holds all its images in memory
MAX_MIN_SIZE = math.isqrt(MAX_PIXELS)  # the shorter side of the largest image decode_rgb accepts
MAX_WORKERS = 256
MAX_BATCH_SIZE = 1024  # Inception runs at 299 x 299: larger batches only run out of memory

