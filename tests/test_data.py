"""Loading real and synthetic task data and cutting the paper's splits."""

import ast
import json
import operator
import re
import sys
import time
from pathlib import Path

import pytest

from utils.tasks.data import PAPER_SPLIT, DataError, TaskData, gsm8k_target, load_examples, load_task_data
from utils.tasks.registry import resolve_task
from utils.tasks.synthetic import _CATEGORIES, _NUMBER_WORDS, generate_examples

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
BBH_DIR = DATA_ROOT / "bbh"
GSM8K_DIR = DATA_ROOT / "gsm8k"
BBH_FILES = sorted(BBH_DIR.glob("*.json"))
# The BBH subtasks with fewer than 250 examples, and how many they have.
SMALL_BBH = {"causal_judgement": 187, "penguins_in_a_table": 146, "snarks": 178}
SYNTHETIC = ["synthetic_object_counting", "synthetic_word_sorting", "synthetic_multistep_arithmetic"]


def _questions(examples):
    return [e.question for e in examples]


def _assert_disjoint(data: TaskData):
    train, val, test = (set(_questions(part)) for part in (data.train, data.val, data.test))
    assert len(train) == len(data.train) and len(val) == len(data.val) and len(test) == len(data.test)
    assert not train & val and not train & test and not val & test


def test_real_data_is_present():
    assert len(BBH_FILES) >= 3, f"expected BBH files in {BBH_DIR}"
    assert (GSM8K_DIR / "train.jsonl").is_file() and (GSM8K_DIR / "test.jsonl").is_file()


@pytest.mark.parametrize("task_name", ["BBH_object_counting", "GSM8K", *SYNTHETIC])
@pytest.mark.parametrize("sizes", [PAPER_SPLIT, (12, 20, 20), (1, 1, 1)])
def test_split_sizes_and_no_overlap(task_name, sizes):
    data = load_task_data(resolve_task(task_name), str(DATA_ROOT), sizes, seed=42)
    assert (len(data.train), len(data.val), len(data.test)) == sizes
    assert data.task.name == task_name
    _assert_disjoint(data)


def test_bbh_paper_split_uses_the_whole_file():
    data = load_task_data(resolve_task("BBH_object_counting"), str(DATA_ROOT))
    everything = set(_questions(data.train + data.val + data.test))
    on_disk = {e["input"] for e in json.loads((BBH_DIR / "object_counting.json").read_text())["examples"]}
    assert everything == on_disk


@pytest.mark.parametrize("task_name", ["BBH_word_sorting", "GSM8K", *SYNTHETIC])
@pytest.mark.parametrize("sizes", [None, (10, 10, 10)])
def test_split_does_not_depend_on_the_run_seed(task_name, sizes):
    task = resolve_task(task_name)
    assert load_task_data(task, str(DATA_ROOT), sizes, seed=42) == load_task_data(task, str(DATA_ROOT), sizes, seed=43)


def _raw_bbh(subtask):
    return [(e["input"], e["target"].strip()) for e in json.loads((BBH_DIR / f"{subtask}.json").read_text())["examples"]]


def _pairs(examples):
    return [(e.question, e.target) for e in examples]


def test_bbh_paper_split_is_the_file_order():
    raw = _raw_bbh("object_counting")
    data = load_task_data(resolve_task("BBH_object_counting"), str(DATA_ROOT), seed=43)
    assert _pairs(data.train) == raw[0:50]
    assert _pairs(data.val) == raw[50:150]
    assert _pairs(data.test) == raw[150:250]


def test_explicit_split_sizes_take_the_same_ordered_slices():
    raw = _raw_bbh("word_sorting")
    data = load_task_data(resolve_task("BBH_word_sorting"), str(DATA_ROOT), (3, 4, 5), seed=1)
    assert (_pairs(data.train), _pairs(data.val), _pairs(data.test)) == (raw[0:3], raw[3:7], raw[7:12])


@pytest.mark.parametrize(("subtask", "sizes"), [
    ("snarks", (50, 64, 64)), ("causal_judgement", (50, 68, 68)), ("penguins_in_a_table", (50, 48, 48))])
def test_small_bbh_subtask_keeps_train_50_and_halves_the_rest(subtask, sizes):
    raw = _raw_bbh(subtask)
    data = load_task_data(resolve_task(f"BBH_{subtask}"), str(DATA_ROOT))
    assert data.sizes == dict(zip(("train", "val", "test"), sizes, strict=True))
    n_train, n_val, n_test = sizes
    assert _pairs(data.val) == raw[n_train:n_train + n_val]
    assert _pairs(data.test) == raw[n_train + n_val:n_train + n_val + n_test]


def test_explicit_split_that_does_not_fit_a_small_subtask_is_an_error():
    with pytest.raises(DataError, match=r"BBH_snarks has 178 examples but --split_sizes asks for 250"):
        load_task_data(resolve_task("BBH_snarks"), str(DATA_ROOT), (50, 100, 100))


@pytest.mark.parametrize(("count", "sizes"), [(60, (50, 5, 5)), (53, (50, 1, 1))])
def test_default_split_of_a_small_file(tmp_path, count, sizes):
    examples = [{"input": f"q{i}", "target": str(i)} for i in range(count)]
    (tmp_path / "object_counting.json").write_text(json.dumps({"examples": examples}))
    data = load_task_data(resolve_task("BBH_object_counting"), str(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == sizes
    assert _questions(data.test) == [f"q{i}" for i in range(50 + sizes[1], 50 + 2 * sizes[1])]


def test_default_split_of_a_file_too_small_for_it_asks_for_split_sizes(tmp_path):
    examples = [{"input": f"q{i}", "target": str(i)} for i in range(51)]
    (tmp_path / "object_counting.json").write_text(json.dumps({"examples": examples}))
    with pytest.raises(DataError, match="only 51 examples.*--split_sizes"):
        load_task_data(resolve_task("BBH_object_counting"), str(tmp_path))


def test_explicit_sizes_slice_the_same_fixed_order():
    # The synthetic pool is put in one fixed order, then sliced like BBH.
    task = resolve_task("synthetic_object_counting")
    paper = load_task_data(task, str(DATA_ROOT), None, seed=1)
    small = load_task_data(task, str(DATA_ROOT), (3, 4, 5), seed=2)
    ordered = paper.train + paper.val + paper.test
    assert (small.train, small.val, small.test) == (ordered[0:3], ordered[3:7], ordered[7:12])


# The reference code's GSM8K split (ubc-tea/FedTextGrad, GSM8K_DSPy): the official train list shuffled by
# random.Random(0) gives train [0:50] and validation [200:300]; the official test list shuffled by its own
# random.Random(0) gives test [300:400]. The first and last question of each, and their gold answers, as read
# from ../shared/data/gsm8k by hand (json.loads per line, random.Random(0).shuffle, slice).
GSM8K_REFERENCE_ENDS = {
    "train": [("The result from the 40-item Statistics exam Marion and Ella took already came out. Ella go", "24"),
              ("Mr. Sanchez found out that 40% of his Grade 5  students got a final grade below B. How man", "36")],
    "val": [("20 birds migrate on a seasonal basis from one lake to another, searching for food. If they", "2200"),
            ("Three blue chips are in a jar which is 10% of the entire chips. If 50% of the chips are wh", "12")],
    "test": [("Maddy is buying pizza for her cousin's soccer game. There are 12 team members and 3 coache", "195"),
             ("Betsy and Donovan made a meal together. Betsy's part took 18 minutes longer than Donovan's", "58")],
}


def _ends(examples):
    return [(examples[0].question[:90], examples[0].target), (examples[-1].question[:90], examples[-1].target)]


@pytest.mark.parametrize("seed", [42, 7])
def test_gsm8k_paper_split_is_the_reference_codes(seed):
    data = load_task_data(resolve_task("GSM8K"), str(DATA_ROOT), seed=seed)
    assert data.sizes == {"train": 50, "val": 100, "test": 100}
    assert {"train": _ends(data.train), "val": _ends(data.val), "test": _ends(data.test)} == GSM8K_REFERENCE_ENDS


def test_gsm8k_split_sizes_take_prefixes_of_the_reference_slices():
    paper = load_task_data(resolve_task("GSM8K"), str(DATA_ROOT))
    small = load_task_data(resolve_task("GSM8K"), str(DATA_ROOT), (3, 4, 5))
    assert (small.train, small.val, small.test) == (paper.train[:3], paper.val[:4], paper.test[:5])
    # Past the reference's ends: train runs on towards validation's start, test on past 400.
    large = load_task_data(resolve_task("GSM8K"), str(DATA_ROOT), (200, 100, 150))
    assert large.train[:50] == paper.train and large.test[:100] == paper.test
    _assert_disjoint(large)
    whole = load_task_data(resolve_task("GSM8K"), str(DATA_ROOT), (1, 7273, 1019))  # to the files' last rows
    assert (len(whole.val), len(whole.test)) == (7273, 1019)


def test_gsm8k_train_larger_than_200_goes_on_after_the_validation_slice():
    # The shuffled train list: [0:200] train, [200:200+V] validation, then train again from 200+V on.
    paper = load_task_data(resolve_task("GSM8K"), str(DATA_ROOT), (200, 100, 100))
    larger = load_task_data(resolve_task("GSM8K"), str(DATA_ROOT), (400, 20, 20))
    assert larger.train[:200] == paper.train and larger.val == paper.val[:20]
    _assert_disjoint(larger)
    after = load_task_data(resolve_task("GSM8K"), str(DATA_ROOT), (201, 100, 10))
    # Its 201st training example is the shuffled list's [300], the first one after validation [200:300].
    assert after.train[200] not in paper.val and after.train[:200] == paper.train
    with pytest.raises(DataError, match=r"train and validation together"):
        load_task_data(resolve_task("GSM8K"), str(DATA_ROOT), (7400, 100, 10))


def test_gsm8k_train_val_from_official_train_and_test_from_official_test():
    train_q = {json.loads(line)["question"] for line in (GSM8K_DIR / "train.jsonl").open()}
    test_q = {json.loads(line)["question"] for line in (GSM8K_DIR / "test.jsonl").open()}
    data = load_task_data(resolve_task("GSM8K_DSPy"), str(DATA_ROOT))
    assert set(_questions(data.train + data.val)) <= train_q
    assert set(_questions(data.test)) <= test_q
    for example in data.train + data.val + data.test:
        assert re.fullmatch(r"-?\d+", example.target), example.target


def test_gsm8k_loads_from_root_and_from_its_folder():
    task = resolve_task("GSM8K")
    pool, test = load_examples(task, str(DATA_ROOT))
    pool_direct, test_direct = load_examples(task, str(GSM8K_DIR))
    assert pool == pool_direct and test == test_direct
    assert (len(pool), len(test)) == (7473, 1319)
    assert pool[0].target == "72"  # "#### 72" of the first training problem


@pytest.mark.parametrize("path", BBH_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("via", ["root", "bbh_folder"])
def test_every_real_bbh_file_loads(path, via):
    task = resolve_task(f"BBH_{path.stem}")
    data_dir = DATA_ROOT if via == "root" else BBH_DIR
    pool, official_test = load_examples(task, str(data_dir))
    raw = json.loads(path.read_text())["examples"]
    assert official_test is None
    assert len(pool) == len(raw) == SMALL_BBH.get(path.stem, 250)
    assert [(e.question, e.target) for e in pool] == [(r["input"], r["target"].strip()) for r in raw]
    data = load_task_data(task, str(data_dir))
    expected = (50, (len(raw) - 50) // 2, (len(raw) - 50) // 2) if path.stem in SMALL_BBH else PAPER_SPLIT
    assert (len(data.train), len(data.val), len(data.test)) == expected


def test_gsm8k_target_drops_thousands_commas(tmp_path):
    rows = [
        {"question": "q1", "answer": "work\n#### 1,234"},
        {"question": "q2", "answer": "#### -7 "},
    ]
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pool, test = load_examples(resolve_task("GSM8K"), str(tmp_path))
    assert [e.target for e in pool] == ["1234", "-7"]
    assert test == pool


@pytest.mark.parametrize(("answer", "target"), [("#### 007", "7"), ("#### +3", "3"), ("#### 2.5", None),
                                                ("#### twelve", None)])
def test_gsm8k_targets_are_whole_numbers_read_by_int(answer, target):
    assert gsm8k_target(answer) == target


def _offline_hub(monkeypatch, tmp_path):
    """Make the hub fail fast and make sure no cached copy can answer."""
    cache = tmp_path / "hf_cache"
    for var, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(cache),
        "HF_DATASETS_CACHE": str(cache / "datasets"),
        "HF_HUB_CACHE": str(cache / "hub"),
    }.items():
        monkeypatch.setenv(var, value)
    # datasets reads these variables at import time; patch its copies if another test imported it first.
    if "datasets" in sys.modules:
        monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr("datasets.config.HF_DATASETS_OFFLINE", True, raising=False)
        monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", cache / "datasets", raising=False)
    if "huggingface_hub" in sys.modules:
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)


@pytest.mark.parametrize(
    ("task_name", "missing"),
    [("BBH_object_counting", "object_counting.json"), ("GSM8K", "train.jsonl")],
)
def test_error_names_both_sources_when_dir_and_hub_fail(monkeypatch, tmp_path, task_name, missing):
    _offline_hub(monkeypatch, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        load_examples(resolve_task(task_name), str(empty))
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "--data_dir" in message and str(empty) in message and missing in message
    assert "Hugging Face hub" in message and "network" in message
    assert task_name in message
    assert "\n" not in message and "Traceback" not in message


def test_error_without_data_dir_goes_to_hub(monkeypatch, tmp_path):
    _offline_hub(monkeypatch, tmp_path)
    with pytest.raises(DataError) as info:
        load_examples(resolve_task("BBH_snarks"), None)
    message = str(info.value)
    assert "no --data_dir given" in message and "Hugging Face hub failed" in message


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ('{"examples": [ {"input": "x", ', "not valid JSON"),
        ("", "empty"),
        ('["a list"]', '"examples" list'),
        ('{"examples": []}', "empty"),
        ('{"examples": [{"input": "x"}]}', '"target"'),
        ('{"examples": ["just text"]}', '"input"'),
    ],
)
def test_malformed_bbh_file_names_the_file(tmp_path, content, complaint):
    path = tmp_path / "object_counting.json"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        load_examples(resolve_task("BBH_object_counting"), str(tmp_path))
    message = str(info.value)
    assert str(path) in message and complaint in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("train_text", "complaint"),
    [
        ('{"question": "q", "answer": "#### 1"}\n{broken\n', "line 2 is not valid JSON"),
        ('{"question": "q"}\n', '"answer"'),
        ('{"question": "q", "answer": "no final number"}\n', "####"),
        ("\n\n", "empty"),
    ],
)
def test_malformed_gsm8k_file_names_the_file(tmp_path, train_text, complaint):
    (tmp_path / "gsm8k").mkdir()
    train = tmp_path / "gsm8k" / "train.jsonl"
    train.write_text(train_text)
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "t", "answer": "#### 2"}\n')
    with pytest.raises(DataError) as info:
        load_examples(resolve_task("GSM8K"), str(tmp_path))
    message = str(info.value)
    assert str(train) in message and complaint in message


def test_gsm8k_with_only_a_train_file_says_what_is_missing(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    with pytest.raises(DataError, match="test.jsonl"):
        load_examples(resolve_task("GSM8K"), str(tmp_path))


@pytest.mark.parametrize(
    ("task_name", "sizes", "available"),
    [
        ("BBH_object_counting", (100, 100, 100), "250"),
        ("GSM8K", (50, 100, 1020), "1319"),
        ("GSM8K", (50, 7274, 10), "7473"),
    ],
)
def test_split_larger_than_data(task_name, sizes, available):
    with pytest.raises(DataError) as info:
        load_task_data(resolve_task(task_name), str(DATA_ROOT), sizes)
    message = str(info.value)
    assert available in message and "--split_sizes" in message


@pytest.mark.parametrize("sizes", [(0, 10, 10), (10, -1, 10), (10, 10), (1.5, 2, 2)])
def test_invalid_split_sizes(sizes):
    with pytest.raises(DataError, match="--split_sizes"):
        load_task_data(resolve_task("synthetic_word_sorting"), None, sizes)


# ------------------------------------------------------------------ synthetic


@pytest.mark.parametrize("task_name", SYNTHETIC)
def test_synthetic_is_deterministic_and_offline(task_name):
    assert generate_examples(task_name, 30, seed=3) == generate_examples(task_name, 30, seed=3)
    assert generate_examples(task_name, 30, seed=3) != generate_examples(task_name, 30, seed=4)
    examples = generate_examples(task_name, 300, seed=0)
    assert len({e.question for e in examples}) == 300
    # A data dir that does not exist proves no disk (and no hub) access is needed.
    data = load_task_data(resolve_task(task_name), "/nonexistent/dir", (5, 6, 7), seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (5, 6, 7)
    pool, official = load_examples(resolve_task(task_name), "/nonexistent/dir")
    assert pool and official is None


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _safe_eval(node):
    if isinstance(node, ast.Expression):
        return _safe_eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_safe_eval(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_safe_eval(node.left), _safe_eval(node.right))
    raise ValueError(f"unexpected syntax {ast.dump(node)}")


def test_synthetic_arithmetic_answers_are_correct():
    examples = generate_examples("synthetic_multistep_arithmetic", 200, seed=11)
    for example in examples:
        assert re.fullmatch(r"\(\(.+\) [-+*] \(.+\)\) =", example.question), example.question
        expression = example.question.removesuffix("=").strip()
        assert _safe_eval(ast.parse(expression, mode="eval")) == int(example.target), example.question


def test_synthetic_word_sorting_answers_are_sorted():
    prefix = "Sort the following words alphabetically: List: "
    already_sorted = 0
    for example in generate_examples("synthetic_word_sorting", 200, seed=5):
        assert example.question.startswith(prefix)
        listed = example.question.removeprefix(prefix).split()
        target = example.target.split()
        assert target == sorted(target) and sorted(listed) == target
        assert len(set(listed)) == len(listed)
        already_sorted += listed == target
    assert already_sorted < 20  # lists are presented shuffled


def _recount(question: str) -> int:
    match = re.fullmatch(r"I have (.+)\. How many (.+) do I have\?", question)
    assert match, question
    listing, asked = match.groups()
    items = re.split(r", and |, | and ", listing)
    names = {}
    for category, pairs in _CATEGORIES.items():
        for singular, plural in pairs:
            names[singular] = names[plural] = category
    total = 0
    for item in items:
        amount, name = item.split(" ", 1)
        count = 1 if amount in ("a", "an") else _NUMBER_WORDS.index(amount)
        assert name in names, item
        total += count if names[name] == asked else 0
    return total


def test_synthetic_object_counting_answers_are_correct():
    examples = generate_examples("synthetic_object_counting", 200, seed=9)
    for example in examples:
        assert _recount(example.question) == int(example.target), example.question
    assert len({e.target for e in examples}) >= 8  # answers vary
