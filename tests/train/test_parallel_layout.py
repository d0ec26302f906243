"""HSDP's layout: how many replica groups a launch gets, and the config's checks."""

from __future__ import annotations

import pytest

from fmforge.config import ConfigError, TrainConfig
from fmforge.launch import Launch, current_launch
from fmforge.train.distributed import hsdp_replicas


def test_by_default_hsdp_replicates_across_nodes_and_shards_within_one(monkeypatch):
    # What torchrun sets on node 1 of a 2 nodes × 8 GPUs launch.
    for name, value in {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16",
                        "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "node0"}.items():
        monkeypatch.setenv(name, value)
    launch = current_launch()
    assert launch.nodes == 2
    assert hsdp_replicas(launch, None) == 2  # two replicas of 8 shards: one per node
    assert hsdp_replicas(launch, 4) == 4  # the user's: 4 replicas of 4 shards


def test_a_replicate_degree_that_does_not_divide_the_processes_is_refused():
    with pytest.raises(ValueError, match=r"train.replicate_degree=3 does not divide the 16"):
        hsdp_replicas(Launch(rank=0, local_rank=0, world_size=16, local_world_size=8), 3)


def test_replicate_degree_belongs_to_hsdp():
    assert TrainConfig(max_steps=200, parallel="hsdp", replicate_degree=2).replicate_degree == 2
    with pytest.raises((ValueError, ConfigError), match="applies to train.parallel: hsdp, not fsdp"):
        TrainConfig(max_steps=200, parallel="fsdp", replicate_degree=2)
