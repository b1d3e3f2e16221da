"""The `launch` dict a launched step takes: checked into LaunchOptions, each unknown key and bad
value named before any work starts."""

from __future__ import annotations

import pytest

from dinoflow.errors import DinoflowError
from dinoflow.launch.options import LAUNCH_KEYS, PENDING_TIMEOUT_S, LaunchOptions, check_launch
from dinoflow.launch.shared import SHARED_DIR
from dinoflow.launch.trainjob import DEFAULT_RUNTIME, DEFAULT_RUNTIME_KIND


def test_every_key_reaches_its_option():
    launch = {
        "num_nodes": 4,
        "gpus_per_node": 8,
        "accelerator_type": "amd.com/gpu",
        "image": "reg/img@sha256:" + "0" * 64,
        "trainjob_runtime": "rt",
        "trainjob_runtime_kind": "ClusterTrainingRuntime",
        "shared_dir": "/mnt/elsewhere",
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "node_selector": {"pool": "h100"},
        "cpu_per_node": "48",
        "memory_per_node": "400Gi",
        "shm_per_node": "100Gi",
        "queue_name": "team",
        "pending_timeout_s": 60,
    }
    assert set(launch) == set(LAUNCH_KEYS)
    opts = LaunchOptions.from_launch(launch)
    got = (
        opts.num_nodes,
        opts.gpus_per_node,
        opts.gpu_resource,
        opts.image,
        opts.runtime,
        opts.runtime_kind,
        opts.shared_dir,
        list(opts.tolerations),
        dict(opts.node_selector),
        opts.cpu_per_node,
        opts.memory_per_node,
        opts.shm_per_node,
        opts.queue_name,
        opts.pending_timeout_s,
    )
    assert got == tuple(launch.values()) and opts.mode() == "trainjob"
    assert check_launch(launch) == launch


def test_an_empty_dict_takes_the_defaults():
    opts = LaunchOptions.from_launch({})
    assert (opts.num_nodes, opts.gpus_per_node, opts.mode()) == (1, 0, "in-process")
    assert (opts.runtime, opts.runtime_kind, opts.shared_dir) == (DEFAULT_RUNTIME, DEFAULT_RUNTIME_KIND, SHARED_DIR)
    assert opts.pending_timeout_s == PENDING_TIMEOUT_S and opts.gpu_resource == "nvidia.com/gpu"


def test_a_whole_float_is_a_count():
    """A KFP struct carries numbers as doubles: 2.0 is two nodes, 2.5 is refused."""
    assert LaunchOptions.from_launch({"num_nodes": 2.0}).num_nodes == 2
    with pytest.raises(DinoflowError, match=r"launch.num_nodes: Input should be a valid integer, got a number"):
        LaunchOptions.from_launch({"num_nodes": 2.5})


@pytest.mark.parametrize(
    "launch, message",
    [
        ({"num_node": 2}, r"launch.num_node: unknown key .*\(the keys: num_nodes, gpus_per_node, accelerator_type"),
        ({"num_nodes": 0}, r"launch.num_nodes: Input should be greater than or equal to 1; got 0"),
        ({"gpus_per_node": -1}, r"launch.gpus_per_node: Input should be greater than or equal to 0; got -1"),
        ({"num_nodes": True}, r"launch.num_nodes: must be a whole number; got True"),
        ({"gpus_per_node": "8"}, r"launch.gpus_per_node: must be a whole number; got '8'"),
        ({"image": 3}, r"launch.image: Input should be a valid string; got 3"),
        ({"tolerations": {"key": "gpu"}}, r"launch.tolerations: Input should be a valid list"),
        ({"node_selector": {"pool": 1}}, r"launch.node_selector.pool: Input should be a valid string; got 1"),
        ({"pending_timeout_s": float("inf")}, r"launch.pending_timeout_s: Input should be a finite number"),
    ],
)
def test_bad_keys_and_values_are_named(launch, message):
    with pytest.raises(DinoflowError, match=message):
        LaunchOptions.from_launch(launch)


def test_every_problem_is_named_at_once_and_a_non_mapping_is_refused():
    with pytest.raises(DinoflowError) as e:
        check_launch({"num_nodes": 0, "gpus": 2, "image": None})
    assert all(k in str(e.value) for k in ("launch.num_nodes", "launch.gpus: unknown key", "launch.image"))
    with pytest.raises(DinoflowError, match="launch options must be a mapping of num_nodes, .*; got a list"):
        LaunchOptions.from_launch([["num_nodes", 2]])
