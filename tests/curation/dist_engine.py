"""Run by tests/curation/test_distributed.py, as one process or under torchrun: every engine step on a
synthetic pool split over the ranks; rank 0 writes every result to the JSON file given as argv[1]."""

import json
import sys

import numpy as np

from dinoflow.curation.cluster import hierarchical_kmeans
from dinoflow.curation.dedup import exact_duplicate_of, near_duplicates, relative_duplicates
from dinoflow.curation.groups import select_smallest
from dinoflow.curation.kmeans import kmeans
from dinoflow.curation.retrieve import cluster_retrieval, sample_retrieval
from dinoflow.curation.sample import balanced_sample
from dinoflow.distributed.comm import init_comm


def grouped_probes(comm, xl, c):
    from dinoflow.curation import probe

    probe.GROUPED_FROM = 500  # 600 lists: the two-level search
    return probe.probe_lists(comm, xl, c, 3)


def main(path: str) -> None:
    comm = init_comm()
    rng = np.random.default_rng(0)
    n, d = 6000, 32
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[5000:] = x[:1000] + 0.01 * rng.standard_normal((1000, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    seeds, evals = x[:40] + 0.001, x[100:110]
    hashes = np.stack([np.arange(n) % 97, np.arange(n) % 13], 1)
    lo, hi = n * comm.rank // comm.world, n * (comm.rank + 1) // comm.world
    xl, gl = x[lo:hi], np.arange(lo, hi)

    def every(a):
        return comm.all_gather_cat(np.asarray(a)).tolist()

    km = kmeans(comm, xl, gl, 50, iters=10, seed=1, max_points_per_centroid=40)
    nd = near_duplicates(comm, xl, gl, k=8, threshold=0.95, nprobe=3, ivf_threshold=1000, train_per_list=20)
    rel = relative_duplicates(comm, xl, nd.labels, evals, 0.9)
    h = hierarchical_kmeans(comm, xl, gl, [40, 6], resampling_steps=1, iters=8, seed=2, max_points_per_centroid=30)
    cr = cluster_retrieval(comm, xl, gl, seeds, n_clusters=30, iters=5, cap=50)
    out = {
        "centroids": km.centroids.tobytes().hex(),
        "labels": every(km.labels),
        "sq": every(km.sq_dist.view(np.int32)),
        "graph": [nd.graph.a.tolist(), nd.graph.b.tolist(), nd.graph.sim.tobytes().hex()],
        "nn_sim": every(nd.graph.nn_sim.view(np.int32)),
        "index": nd.index,
        "relative": [every(rel.contaminated), every(rel.eval_match), every(rel.eval_sim.view(np.int32))],
        "exact": every(exact_duplicate_of(comm, hashes[lo:hi], gl)),
        "select": every(select_smallest(comm, gl % 20, (gl * 7919 % 1000).astype(np.float64), gl, np.full(20, 5))),
        "tree": [every(lab) for lab in h.labels] + [c.tobytes().hex() for c in h.centroids],
        "balanced": every(balanced_sample(comm, h, gl, 1000, seed=3)),
        "closest": every(balanced_sample(comm, h, gl, 700, seed=3, strategy="closest")),
        "sample_retrieval": every(sample_retrieval(comm, xl, gl, seeds, 4)),
        "cluster_retrieval": every(cr.keep),
        "grouped_probes": every(grouped_probes(comm, xl, x[::10][:600])),
    }
    if comm.is_main:
        with open(path, "w") as f:
            json.dump(out, f)
    if comm.world > 1:  # as the dinoflow command does: gloo's threads can abort a rank at teardown
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
