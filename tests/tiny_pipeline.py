"""A whole-pipeline config small enough for tests, in which `distill.train.epochs=1` gives a clearly worse student.

The student starts with LayerScale 1e-5 (the DINOv2 default): at init its CLS features are almost
the same for every image (k-NN near chance: a known failure of tiny DINO runs). Six epochs of two steps move it
to the teacher's features; one epoch lies inside the two-epoch warmup (learning rate near 0), so the
student stays near chance — worse by tens of points, on any machine. The teacher is barely trained
(2 steps), so the teacher-gain floor is off and the retention floor is lowered; the challenge
against the champion is the default one.
"""

TINY_REGISTRY_PIPELINE = [
    "demo.include_digits=false",
    "demo.n_exact_dups=20",
    "demo.n_near_dups=20",
    "demo.n_junk=12",
    "demo.n_corrupt=6",
    "demo.n_eval=200",
    "demo.n_eval_copies=5",
    "curate.kmeans_levels=[20, 5]",
    "pretrain.train.max_steps=2",
    "pretrain.train.progress=false",
    "distill.student.layerscale_init=1.0e-5",
    "distill.optim.warmup_epochs=2",
    "distill.train.epochs=6",
    "distill.train.epoch_length=2",
    "distill.train.progress=false",
    "evaluate.datasets=[{name: mnist, kind: demo_mnist}]",
    "evaluate.max_train=500",
    "evaluate.max_test=100",
    "evaluate.linear_epochs=1",
    "evaluate.linear_lrs=[0.1]",
    "evaluate.linear_n_last_blocks=[1]",
    "evaluate.linear_avgpool=[false]",
    "evaluate.logreg_cs=[1.0]",
    "evaluate.logreg_max_iter=50",
    "evaluate.n_pca_images=0",
    "evaluate.progress=false",
    "register.min_teacher_gain=null",
    "register.min_retention=0.5",
    "tracking.system_metrics=false",
]


def as_params(params: dict, overrides: list[str]) -> dict:
    """params.yaml's tree with `key=value` overrides applied (values parsed as YAML, as `-S` does)."""
    import copy

    import yaml

    tree = copy.deepcopy(params)
    for ov in overrides:
        key, raw = ov.split("=", 1)
        node = tree
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(raw)
    return tree
