"""IID and Dirichlet (label-skewed) client partitions."""

import json
from collections import Counter
from pathlib import Path

import pytest

from utils.federated.partition import dirichlet_partition, iid_partition
from utils.tasks.registry import Example

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


def _labelled(n: int, labels: int) -> list[Example]:
    return [Example(question=f"question {i}", target=str(i % labels)) for i in range(n)]


def _assert_disjoint_cover(shards, examples):
    flat = [e.question for shard in shards for e in shard]
    assert len(flat) == len(set(flat)), "an example went to two clients"
    assert sorted(flat) == sorted(e.question for e in examples), "examples were lost or invented"


def _mean_max_label_fraction(shards) -> float:
    """Share of examples carrying their client's most common answer.

    Weighted by client size so that a client rebalanced down to a single example
    cannot fake skew on its own.
    """
    majority = sum(Counter(e.target for e in shard).most_common(1)[0][1] for shard in shards)
    return majority / sum(len(shard) for shard in shards)


@pytest.mark.parametrize(("n", "clients"), [(10, 3), (50, 3), (7, 7), (100, 8), (1, 1)])
def test_iid_is_balanced_disjoint_and_covering(n, clients):
    examples = _labelled(n, 4)
    shards = iid_partition(examples, clients, seed=0)
    assert len(shards) == clients
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    _assert_disjoint_cover(shards, examples)


def test_iid_is_seeded():
    examples = _labelled(60, 4)
    assert iid_partition(examples, 3, seed=1) == iid_partition(examples, 3, seed=1)
    assert iid_partition(examples, 3, seed=1) != iid_partition(examples, 3, seed=2)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 100.0])
@pytest.mark.parametrize(("n", "labels", "clients"), [(50, 5, 3), (100, 4, 10), (12, 2, 12), (30, 30, 5)])
def test_dirichlet_is_disjoint_covering_and_non_empty(alpha, n, labels, clients):
    examples = _labelled(n, labels)
    shards = dirichlet_partition(examples, clients, alpha, seed=3)
    assert len(shards) == clients
    assert all(shards), [len(s) for s in shards]
    _assert_disjoint_cover(shards, examples)


def test_dirichlet_is_seeded():
    examples = _labelled(80, 4)
    assert dirichlet_partition(examples, 4, 0.5, seed=1) == dirichlet_partition(examples, 4, 0.5, seed=1)
    assert dirichlet_partition(examples, 4, 0.5, seed=1) != dirichlet_partition(examples, 4, 0.5, seed=2)


def test_small_alpha_skews_labels_more_than_iid():
    examples = _labelled(240, 4)
    seeds = range(10)
    iid = sum(_mean_max_label_fraction(iid_partition(examples, 4, s)) for s in seeds) / len(seeds)
    skewed = sum(_mean_max_label_fraction(dirichlet_partition(examples, 4, 0.1, s)) for s in seeds) / len(seeds)
    mild = sum(_mean_max_label_fraction(dirichlet_partition(examples, 4, 100.0, s)) for s in seeds) / len(seeds)
    assert iid < 0.4  # four balanced labels: about a quarter each
    assert skewed > iid + 0.15
    assert mild < skewed - 0.15


def test_small_alpha_skews_real_object_counting_answers():
    raw = json.loads((DATA_ROOT / "bbh" / "object_counting.json").read_text())["examples"]
    examples = [Example(question=r["input"], target=r["target"]) for r in raw]
    seeds = range(5)
    iid = sum(_mean_max_label_fraction(iid_partition(examples, 5, s)) for s in seeds) / len(seeds)
    skewed = sum(_mean_max_label_fraction(dirichlet_partition(examples, 5, 0.1, s)) for s in seeds) / len(seeds)
    assert skewed > iid + 0.1


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
@pytest.mark.parametrize("clients", [0, 6])
def test_bad_client_counts_raise(partition, clients):
    examples = _labelled(5, 2)
    with pytest.raises(ValueError, match="client"):
        if partition == "iid":
            iid_partition(examples, clients, seed=0)
        else:
            dirichlet_partition(examples, clients, 1.0, seed=0)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_bad_alpha_raises(alpha):
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(_labelled(10, 2), 2, alpha, seed=0)
