"""bench.data: the embedded data sets' splits and normalisation, hub-shaped parquet files through
the same code path (fixtures written in tmp_path), the offline error, the .npz cache, minibatches.

The normalisation is checked by inverting it: x·std_c + mean_c, times the scale, must give back
the raw integer pixel values, and the three splits together must be exactly the raw examples
(as a multiset), which also proves that no example is in two splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import platform
import string
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import data
from bench.data import (
    DATA_DIR_ENV,
    DatasetUnavailableError,
    Splits,
    batches,
    load_arrays,
    load_splits,
    save_splits,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def mnist5k() -> Splits:
    return load_arrays("mnist5k", seed=0)


def invert(splits: Splits, part: str) -> np.ndarray:
    """The raw values of split ``part``: (x·std_c + mean_c)·scale, as float64 [N, ...]."""
    norm = splits.normalisation
    x = getattr(splits, f"x_{part}").astype(np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2) if len(norm["mean"]) > 1 else (1,)
    return (x * np.reshape(norm["std"], shape) + np.reshape(norm["mean"], shape)) * norm["scale"]


def as_integers(values: np.ndarray, atol: float = 1e-3) -> np.ndarray:
    rounded = np.rint(values)
    assert np.abs(values - rounded).max() < atol, "inverse normalisation is not integral"
    return rounded.astype(np.int64)


def rows(x: np.ndarray, y: np.ndarray) -> Counter:
    """Multiset of (label, example bytes)."""
    x = np.ascontiguousarray(x.reshape(len(x), -1).astype(np.int64))
    return Counter((int(label), row.tobytes()) for label, row in zip(y, x, strict=True))


# --------------------------------------------------------------------------- mnist5k
def test_mnist5k_shapes_dtypes_and_counts(mnist5k):
    assert (mnist5k.name, mnist5k.num_classes, mnist5k.input_shape) == ("mnist5k", 10, (1, 28, 28))
    assert mnist5k.x_train.shape == (3500, 1, 28, 28) and mnist5k.y_train.shape == (3500,)
    assert mnist5k.x_valid.shape == (500, 1, 28, 28) and mnist5k.x_test.shape == (1000, 1, 28, 28)
    for part in ("train", "valid", "test"):
        assert getattr(mnist5k, f"x_{part}").dtype == np.float32
        assert getattr(mnist5k, f"y_{part}").dtype == np.int64
    assert mnist5k.fractions == (0.7, 0.1, 0.2) and mnist5k.seed == 0


def test_mnist5k_is_stratified(mnist5k):
    for part in ("train", "valid", "test"):
        labels = getattr(mnist5k, f"y_{part}")
        counts = np.bincount(labels, minlength=10)
        # the source has 500 per class: every split holds each class's equal share, ± 1
        assert np.abs(counts - len(labels) / 10).max() <= 1, (part, counts)


def test_mnist5k_is_shuffled_not_sorted(mnist5k):
    for part in ("train", "valid", "test"):
        labels = getattr(mnist5k, f"y_{part}")
        assert np.any(np.diff(labels) < 0), f"{part} labels are sorted"
        assert len(np.unique(labels[:50])) >= 5, f"{part} starts with few classes"


def test_mnist5k_normalisation_and_disjoint_complete_splits(mnist5k):
    assert mnist5k.normalisation["mean"] == [0.1307] and mnist5k.normalisation["std"] == [0.3081]
    raw_x, raw_y = data._mnist5k()
    split_rows = Counter()
    for part in ("train", "valid", "test"):
        pixels = as_integers(invert(mnist5k, part))
        assert pixels.min() >= 0 and pixels.max() <= 255
        split_rows += rows(pixels, getattr(mnist5k, f"y_{part}"))
    assert split_rows == rows(as_integers(raw_x), raw_y)
    # with MNIST's own constants the training inputs are only roughly centred
    assert abs(float(mnist5k.x_train.mean())) < 0.1 and 0.9 < float(mnist5k.x_train.std()) < 1.1


def test_split_is_deterministic_under_seed_and_changes_with_it(mnist5k):
    again = load_arrays("mnist5k", seed=0)
    other = load_arrays("mnist5k", seed=1)
    for key in data.ARRAYS:
        np.testing.assert_array_equal(getattr(again, key), getattr(mnist5k, key))
    assert not np.array_equal(other.y_train, mnist5k.y_train)
    assert not np.array_equal(other.x_test, mnist5k.x_test)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        load_arrays("nope")
    with pytest.raises(ValueError, match="fractions"):
        load_arrays("digits", fractions=(0.5, 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        load_arrays("digits", fractions=(0.5, 0.3, 0.3))
    with pytest.raises(ValueError, match="embedded"):
        load_arrays("digits", root="/somewhere")


# --------------------------------------------------------------------------- digits, mnist1d
def test_digits_loads_standardised_with_training_statistics():
    splits = load_arrays("digits", seed=3, fractions=(0.6, 0.2, 0.2))
    n = 1797
    assert splits.x_train.shape[1:] == (1, 8, 8)
    assert len(splits.y_valid) == round(0.2 * n) and len(splits.y_test) == round(0.2 * n)
    assert len(splits.y_train) + len(splits.y_valid) + len(splits.y_test) == n
    assert abs(float(splits.x_train.astype(np.float64).mean())) < 1e-5
    assert abs(float(splits.x_train.astype(np.float64).std()) - 1) < 1e-5
    assert splits.normalisation["scale"] == 16.0
    pixels = np.concatenate([as_integers(invert(splits, p)) for p in ("train", "valid", "test")])
    assert pixels.min() == 0 and pixels.max() == 16


def test_mnist1d_loads_and_leaves_global_rngs_unchanged(seed):
    import random

    data._mnist1d.cache_clear()  # make sure the generator really runs
    np.random.seed(seed % 2**32)  # noqa: NPY002
    random.seed(seed)
    numpy_before = np.random.get_state()  # noqa: NPY002
    python_before = random.getstate()
    splits = load_arrays("mnist1d", seed=0)
    numpy_after = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(a, b) for a, b in zip(numpy_before, numpy_after, strict=True))
    assert random.getstate() == python_before
    assert splits.x_train.shape == (3600, 40) and splits.x_valid.shape == (400, 40)
    assert splits.x_test.shape == (1000, 40) and splits.input_shape == (40,)
    assert abs(float(splits.x_train.astype(np.float64).mean())) < 1e-5
    # the package's own test split is kept whole (only reordered)
    raw_test_labels = data._mnist1d()[3]
    assert Counter(splits.y_test.tolist()) == Counter(raw_test_labels.tolist())


# --------------------------------------------------------------------------- hub-shaped parquet
def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet_plain(directory: Path, images: dict, labels: dict, column: str) -> None:
    """Like the hub's files written by pyarrow alone: column = struct{bytes, path}, label int64."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split in ("train", "test"):
        cells = [{"bytes": png_bytes(a), "path": None} for a in images[split]]
        table = pa.table({column: pa.array(cells, type=struct), "label": labels[split]})
        pq.write_table(table, directory / f"{split}-00000-of-00001.parquet")


def write_parquet_datasets(directory: Path, images: dict, labels: dict, column: str) -> None:
    """Like the hub's files written by ``datasets`` (Image feature in the schema metadata)."""
    import datasets
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        table = {column: [Image.fromarray(a) for a in images[split]], "label": labels[split]}
        features = datasets.Features({column: datasets.Image(), "label": datasets.Value("int64")})
        dataset = datasets.Dataset.from_dict(table, features=features)
        dataset.to_parquet(str(directory / f"{split}-00000-of-00001.parquet"))


def random_images(rng, shape: tuple[int, ...], n_train: int = 100, n_test: int = 20):
    images = {s: rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
              for s, n in (("train", n_train), ("test", n_test))}  # fmt: skip
    labels = {s: (np.arange(len(a)) + rng.integers(10)) % 10 for s, a in images.items()}
    return images, labels


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """datasets' cache in tmp_path (load_dataset("parquet") writes arrow files there)."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def check_hub_splits(splits: Splits, images: dict, labels: dict, channels_last: bool) -> None:
    n_train = len(labels["train"])
    assert len(splits.y_valid) == round(0.1 * n_train)
    assert len(splits.y_train) == n_train - len(splits.y_valid)
    assert len(splits.y_test) == len(labels["test"])
    assert np.bincount(splits.y_valid, minlength=10).tolist() == [1] * 10  # stratified
    to_raw = (lambda a: a.transpose(0, 2, 3, 1)) if channels_last else (lambda a: a[:, 0])
    found = rows(to_raw(as_integers(invert(splits, "train"))), splits.y_train)
    found += rows(to_raw(as_integers(invert(splits, "valid"))), splits.y_valid)
    assert found == rows(images["train"], labels["train"])
    test = to_raw(as_integers(invert(splits, "test")))
    assert rows(test, splits.y_test) == rows(images["test"], labels["test"])


def test_mnist_from_local_parquet(tmp_path, isolated_cache, seed):
    images, labels = random_images(np.random.default_rng(seed), (28, 28))
    write_parquet_plain(tmp_path / "mnist" / "mnist", images, labels, "image")
    splits = load_arrays("mnist", root=tmp_path / "mnist", seed=seed)
    assert splits.x_train.shape == (90, 1, 28, 28) and splits.x_test.shape == (20, 1, 28, 28)
    assert splits.normalisation["mean"] == [0.1307] and splits.source.startswith("parquet:")
    check_hub_splits(splits, images, labels, channels_last=False)


def test_cifar10_from_local_parquet_keeps_channel_order(tmp_path, isolated_cache, seed):
    images, labels = random_images(np.random.default_rng(seed), (32, 32, 3))
    write_parquet_datasets(tmp_path / "cifar10" / "plain_text", images, labels, "img")
    splits = load_arrays("cifar10", root=tmp_path / "cifar10", seed=seed)
    assert splits.x_train.shape == (90, 3, 32, 32) and splits.x_test.shape == (20, 3, 32, 32)
    assert splits.normalisation["mean"] == [0.4914, 0.4822, 0.4465]
    assert splits.normalisation["std"] == [0.2470, 0.2435, 0.2616]
    check_hub_splits(splits, images, labels, channels_last=True)


def test_data_dir_environment_variable_is_used(tmp_path, isolated_cache, monkeypatch):
    images, labels = random_images(np.random.default_rng(0), (28, 28), n_train=100, n_test=10)
    write_parquet_plain(tmp_path / "fashion_mnist", images, labels, "image")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    splits = load_arrays("fashion_mnist")
    assert splits.x_train.shape == (90, 1, 28, 28) and splits.x_test.shape == (10, 1, 28, 28)


def test_empty_local_directory_is_unavailable(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="'cifar10'.*no train"):
        load_arrays("cifar10", root=tmp_path)


def test_offline_hub_fails_fast_naming_the_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no cached copy
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError, match="'mnist'.*ylecun/mnist") as error:
        load_arrays("mnist", offline=True)
    assert time.monotonic() - start < 10  # a hang guard: online retries take ~25 s
    assert "root=" in str(error.value) and isinstance(error.value, RuntimeError)


def test_offline_environment_variable_is_respected(tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1 (read at import) fails at once on the hub."""
    script = (
        "import time\n"
        "from bench.data import DatasetUnavailableError, load_arrays\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    load_arrays('mnist')\n"
        "except DatasetUnavailableError as error:\n"
        "    print(round(time.monotonic() - start, 3), error)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("HF_DATASETS_OFFLINE", None)
    env.pop(DATA_DIR_ENV, None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    elapsed, message = done.stdout.split(" ", 1)
    assert "'mnist'" in message and float(elapsed) < 10  # a hang guard, not a speed test


# --------------------------------------------------------------------------- the .npz cache
def small_splits(seed: int = 0) -> Splits:
    return load_arrays("digits", seed=seed)


def test_save_and_load_round_trip(tmp_path):
    splits = small_splits()
    path = save_splits(splits, tmp_path / "deep" / "digits.npz")
    loaded = load_splits(path)
    for key in data.ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(splits, key))
        assert getattr(loaded, key).dtype == getattr(splits, key).dtype
    for key in ("name", "num_classes", "input_shape", "seed", "fractions", "source"):
        assert getattr(loaded, key) == getattr(splits, key)
    assert loaded.normalisation == splits.normalisation
    with np.load(path) as stored:
        assert "sha256" in str(stored["metadata"]) and "sklearn" in str(stored["metadata"])
        software = json.loads(str(stored["metadata"]))["software"]
    import sklearn

    assert software == {"numpy": np.__version__, "scikit-learn": sklearn.__version__}


def test_source_versions_of_a_path_or_unknown_module_is_numpy_only(tmp_path):
    assert data.source_versions(str(tmp_path / "mnist")) == {"numpy": np.__version__}
    assert data.source_versions("") == {"numpy": np.__version__}


def test_load_rejects_an_array_that_does_not_match_its_digest(tmp_path):
    path = save_splits(small_splits(), tmp_path / "digits.npz")
    with np.load(path) as stored:
        content = {key: stored[key] for key in stored.files}
    content["y_test"] = content["y_test"][::-1].copy()
    np.savez_compressed(path, **content)
    with pytest.raises(ValueError, match="y_test"):
        load_splits(path)


def test_failing_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = save_splits(small_splits(0), tmp_path / "digits.npz")
    before = path.read_bytes()

    def broken(file, **arrays):
        file.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        save_splits(small_splits(1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["digits.npz"]  # no temporary left


# --------------------------------------------------------------------------- minibatches
def test_batches_are_a_seeded_permutation(seed):
    x = np.arange(23, dtype=np.float32).reshape(23, 1) * np.ones((1, 3), dtype=np.float32)
    y = np.arange(23, dtype=np.int64)
    first = list(batches(x, y, 5, seed=seed))
    assert [len(b[1]) for b in first] == [5, 5, 5, 5, 3]
    order = torch.cat([b[1] for b in first])
    assert sorted(order.tolist()) == list(range(23))
    for inputs, targets in first:
        assert inputs.dtype == torch.float32 and targets.dtype == torch.long
        torch.testing.assert_close(inputs[:, 0], targets.float())  # rows stay paired
    again = torch.cat([b[1] for b in batches(x, y, 5, seed=seed)])
    other = torch.cat([b[1] for b in batches(x, y, 5, seed=seed + 1)])
    assert torch.equal(order, again) and not torch.equal(order, other)
    unshuffled = torch.cat([b[1] for b in batches(x, y, 5, seed=seed, shuffle=False)])
    assert unshuffled.tolist() == list(range(23))
    assert [len(b[1]) for b in batches(x, y, 5, seed=seed, drop_last=True)] == [5] * 4


def test_batches_reject_bad_arguments():
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="batch_size"):
        batches(x, y, 0, seed=0)
    with pytest.raises(ValueError, match="length"):
        batches(x, y[:3], 2, seed=0)


# --------------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def pytopics() -> Splits:
    return load_arrays("pytopics", seed=0)


def decode(splits: Splits, ids: np.ndarray) -> str:
    return "".join(splits.text["vocabulary"][i] for i in ids)


def test_pytopics_shapes_vocabulary_and_provenance(pytopics):
    text = data._pytopics()
    assert (pytopics.name, pytopics.task, pytopics.input_shape) == (
        "pytopics",
        "language_model",
        (64,),
    )
    assert pytopics.text["vocabulary"] == "".join(sorted(set(text)))
    assert pytopics.num_classes == len(pytopics.text["vocabulary"]) == 103
    assert (
        pytopics.text["sha256"] == data.PYTOPICS_SHA256 and pytopics.text["characters"] == 464_970
    )
    assert pytopics.text["python"] == platform.python_version()
    parts = {"train": 1024, "valid": 363, "test": 363}  # train: the spec's max_train of 6 538
    for part, count in parts.items():
        x, y = getattr(pytopics, f"x_{part}"), getattr(pytopics, f"y_{part}")
        assert x.shape == y.shape == (count, 64) and x.dtype == y.dtype == np.int64
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert pytopics.fractions == (0.9, 0.05, 0.05)


def windows_of(splits: Splits, part: str) -> Counter:
    """The multiset of a split's windows as text: x's 64 characters and y's last."""
    x, y = getattr(splits, f"x_{part}"), getattr(splits, f"y_{part}")
    return Counter(decode(splits, a) + decode(splits, b[-1:]) for a, b in zip(x, y, strict=True))


def test_pytopics_windows_come_from_their_contiguous_part(pytopics):
    """Every window is text[s : s + 65] with s a multiple of 64 inside its part's bounds."""
    text = data._pytopics()
    bounds = np.rint(np.cumsum((0, 0.9, 0.05, 0.05)) * len(text)).astype(int)
    for index, part in enumerate(("train", "valid", "test")):
        start, stop = bounds[index], bounds[index + 1]
        expected = Counter(text[s : s + 65] for s in range(start, stop - 64, 64))
        found = windows_of(pytopics, part)
        if part == "train":
            assert found.total() == 1024 and not found - expected  # a subset of them
        else:
            assert found == expected  # all of them, each once


def test_pytopics_order_depends_on_the_seed_only(pytopics):
    again = load_arrays("pytopics", seed=0)
    other = load_arrays("pytopics", seed=1)
    np.testing.assert_array_equal(again.x_train, pytopics.x_train)
    assert not np.array_equal(other.x_valid, pytopics.x_valid)
    assert sorted(map(bytes, other.x_valid)) == sorted(map(bytes, pytopics.x_valid))


@pytest.fixture
def changed_topics(monkeypatch):
    """pydoc_data.topics with one character changed (as another Python release might ship)."""
    from pydoc_data.topics import topics

    key = sorted(topics)[0]
    monkeypatch.setitem(topics, key, topics[key].replace("a", "b", 1))
    data._pytopics.cache_clear()
    yield
    data._pytopics.cache_clear()


def test_a_different_pytopics_text_is_refused_with_both_digests(changed_topics):
    with pytest.raises(DatasetUnavailableError) as error:
        load_arrays("pytopics")
    message = str(error.value)
    actual = hashlib.sha256(data._pytopics().encode()).hexdigest()
    assert "'pytopics'" in message and data.PYTOPICS_SHA256 in message and actual in message
    assert f"Python {platform.python_version()}" in message and "Python 3.11.7" in message


def test_prepare_stops_on_a_different_pytopics_text(changed_topics, tmp_path):
    from bench.errors import UsageError
    from bench.prepare import prepare

    config = types.SimpleNamespace(
        problems=["pytopics_chartransformer"],
        prepare=types.SimpleNamespace(seed=0, max_train=None, max_test=None),
        data_path=lambda name, results: Path(results) / "data" / f"{name}.npz",
    )
    with pytest.raises(UsageError, match=data.PYTOPICS_SHA256):
        prepare(config, results=tmp_path)
    assert not (tmp_path / "data").exists()


def test_text_splits_round_trip_and_refuse_another_text_on_load(pytopics, tmp_path, monkeypatch):
    path = save_splits(pytopics, tmp_path / "pytopics.npz")
    loaded = load_splits(path)
    for key in data.ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(pytopics, key))
    assert (loaded.task, loaded.text) == (pytopics.task, pytopics.text)
    with np.load(path) as stored:
        metadata = json.loads(str(stored["metadata"]))
    assert metadata["software"] == {"numpy": np.__version__, "python": platform.python_version()}
    assert metadata["text"]["sha256"] == data.PYTOPICS_SHA256
    other = dataclasses.replace(data.DATASETS["pytopics"], text_sha256="0" * 64)
    monkeypatch.setitem(data.DATASETS, "pytopics", other)
    with pytest.raises(DatasetUnavailableError, match="0{64}"):
        load_splits(path)


def test_classification_metadata_has_no_text_keys(tmp_path):
    with np.load(save_splits(small_splits(), tmp_path / "digits.npz")) as stored:
        metadata = json.loads(str(stored["metadata"]))
    assert "task" not in metadata and "text" not in metadata


def test_token_splits_are_validated(pytopics):
    with pytest.raises(ValueError, match="int64"):
        dataclasses.replace(pytopics, x_test=pytopics.x_test.astype(np.float32))
    with pytest.raises(ValueError, match="token ids outside 0..102"):
        dataclasses.replace(pytopics, y_test=pytopics.y_test + 1)
    with pytest.raises(ValueError, match="unknown task"):
        dataclasses.replace(pytopics, task="translation")
    with pytest.raises(ValueError, match="input_shape"):
        data.DatasetSpec("t", 5, (4, 4), (0.8, 0.1, 0.1), "x", raw=str, task="language_model")


# The 65 characters of Tiny Shakespeare: the hub copy's vocabulary.
SHAKESPEARE_CHARACTERS = "\n !$&',-.3:;?" + string.ascii_uppercase + string.ascii_lowercase


def write_text_parquet(directory: Path, parts: dict[str, list[str]], column: str = "text") -> None:
    """Hub-shaped text parquet files: one per split, a string column (as karpathy's copy)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in parts.items():
        pq.write_table(
            pa.table({column: pa.array(rows, type=pa.string())}),
            directory / f"{split}-00000-of-00001.parquet",
        )


def fixture_text(rng, length: int) -> str:
    characters = list(SHAKESPEARE_CHARACTERS)
    body = rng.choice(characters, size=length - len(characters)).tolist()
    return "".join(characters + body)  # every character at least once


def test_tiny_shakespeare_from_local_parquet(tmp_path, isolated_cache, seed):
    rng = np.random.default_rng(seed)
    text = fixture_text(rng, 9_000)
    parts = {"train": [text[:7000], text[7000:8000]], "validation": [text[8000:8500]],
             "test": [text[8500:]]}  # fmt: skip
    write_text_parquet(tmp_path / "tiny" / "data", parts)
    splits = load_arrays("tiny_shakespeare", root=tmp_path / "tiny", seed=seed)
    assert splits.source.startswith("parquet:") and splits.task == "language_model"
    assert splits.text["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert splits.text["vocabulary"] == "".join(sorted(SHAKESPEARE_CHARACTERS))
    bounds = np.rint(np.cumsum((0, 0.9, 0.05, 0.05)) * len(text)).astype(int)
    for index, part in enumerate(("train", "valid", "test")):
        start, stop = bounds[index], bounds[index + 1]
        assert len(getattr(splits, f"x_{part}")) == (stop - start - 1) // 64
        expected = Counter(text[s : s + 65] for s in range(start, stop - 64, 64))
        assert windows_of(splits, part) == expected


def test_text_parquet_errors_name_the_data_set(tmp_path, isolated_cache):
    with pytest.raises(DatasetUnavailableError, match="'tiny_shakespeare'.*no train"):
        load_arrays("tiny_shakespeare", root=tmp_path)
    write_text_parquet(tmp_path / "other", {"train": [SHAKESPEARE_CHARACTERS * 3]}, column="line")
    with pytest.raises(DatasetUnavailableError, match="no text column 'text'.*line"):
        load_arrays("tiny_shakespeare", root=tmp_path / "other")
    write_text_parquet(tmp_path / "small", {"train": ["abcabc" * 50]})
    with pytest.raises(ValueError, match="3 distinct characters.*V = 65"):
        load_arrays("tiny_shakespeare", root=tmp_path / "small")


def test_batches_keep_token_ids_integral(pytopics, seed):
    x, y = pytopics.x_valid[:10], pytopics.y_valid[:10]
    inputs, targets = next(batches(x, y, 4, seed=seed))
    assert inputs.dtype == targets.dtype == torch.long and inputs.shape == targets.shape == (4, 64)


def test_offline_hub_text_fails_fast_naming_the_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no cached copy
    with pytest.raises(DatasetUnavailableError, match="'tiny_shakespeare'.*karpathy") as error:
        load_arrays("tiny_shakespeare", offline=True)
    assert "validation*.parquet" in str(error.value) and "root=" in str(error.value)
