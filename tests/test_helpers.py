"""fedtier.helpers: framework helpers and the aggregation arithmetic."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import ml_dtypes
import numpy as np
import pytest

from fedtier.aggregators import arithmetic
from fedtier.helpers import IncompatibleModelError, ModelFormatError, get_helper
from fedtier.helpers.format import iter_slices, read_header, read_model, write_model

BF16 = np.dtype(ml_dtypes.bfloat16)


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


# ----------------------------------------------------------------------------- registry


def test_get_helper_names_and_aliases():
    assert get_helper("numpy").name == "numpy"
    assert get_helper("pytorch").name == "pytorch"
    assert type(get_helper("torch")) is type(get_helper("PyTorch"))
    assert get_helper("keras").name == "keras"


def test_unknown_helper_lists_known_ones():
    with pytest.raises(ValueError, match="unknown helper 'tensorflow'.*keras, numpy, pytorch, torch"):
        get_helper("tensorflow")


def test_importing_helpers_does_not_import_frameworks():
    code = (
        "import sys\n"
        "from fedtier.helpers import get_helper\n"
        "import numpy as np\n"
        "from fedtier.aggregators import get_strategy\n"
        "from fedtier.aggregators.arithmetic import increment_average\n"
        "for n in ('numpy', 'pytorch', 'keras'):\n"
        "    h = get_helper(n); get_strategy('fedavg', h, 'combiner')\n"
        "    m = np.zeros(3, np.float32); increment_average(m, np.ones(3, np.float32), 1, 2)\n"
        "    assert m.tolist() == [0.5] * 3\n"
        "print(sorted(k for k in ('torch', 'keras', 'tensorflow', 'safetensors') if k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- numpy helper


def numpy_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "bf": rng.standard_normal(5).astype(BF16),
        "steps": np.array(12, np.int64),
        "half": rng.standard_normal(2).astype(np.float16),
        "none": np.zeros((0, 2), np.float64),
    }


def test_numpy_helper_round_trips_dict_through_bytes_and_files(tmp_path):
    h = get_helper("numpy")
    w = numpy_weights()
    assert_bitwise_equal(w, h.from_bytes(h.to_bytes(w)))
    h.save(w, tmp_path / "m.safetensors")
    assert_bitwise_equal(w, h.load(tmp_path / "m.safetensors"))


def test_numpy_helper_names_lists_by_position():
    h = get_helper("numpy")
    arrays = [np.ones(2, np.float32), np.arange(3, dtype=np.int16)]
    out = h.from_bytes(h.to_bytes(arrays))
    assert list(out) == ["0", "1"]
    assert out["1"].dtype == np.int16 and out["1"].tolist() == [0, 1, 2]


def test_numpy_helper_conversions_do_not_alias():
    h = get_helper("numpy")
    original = {"a": np.zeros(3, np.float32)}
    neutral = h.to_weights(original)
    original["a"][0] = 5
    assert neutral["a"][0] == 0
    native = h.from_weights(neutral)
    native["a"][1] = 7
    assert neutral["a"][1] == 0


def test_numpy_helper_rejects_unsupported_values():
    h = get_helper("numpy")
    with pytest.raises(ModelFormatError, match="complex"):
        h.to_weights({"c": np.zeros(1, np.complex64)})
    with pytest.raises(TypeError, match="dict of arrays or a list"):
        h.to_weights(np.zeros(3))


# ----------------------------------------------------------------------------- pytorch helper

try:
    import torch
except ImportError:  # the numpy helper and the arithmetic must not depend on it
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

if torch is not None:

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.fc = torch.nn.Linear(4 * 6 * 6, 3)
            self.head = torch.nn.Linear(3, 2).to(torch.bfloat16)
            self.register_buffer("scale", torch.tensor(0.5, dtype=torch.float64))
            self.register_buffer("none", torch.zeros(0, 3))

        def forward(self, x):
            x = self.bn(self.conv(x)).relu().flatten(1)
            return self.head(self.fc(x).to(torch.bfloat16))


def trained_net(seed: int) -> "Net":
    torch.manual_seed(seed)
    net = Net()
    net.train()
    with torch.no_grad():
        net(torch.randn(5, 1, 8, 8))  # moves running stats and num_batches_tracked
    return net


def assert_state_equal(a, b) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


@needs_torch
def test_pytorch_module_round_trips_exactly(tmp_path):
    h = get_helper("pytorch")
    net = trained_net(0)
    state = net.state_dict()
    assert state["bn.num_batches_tracked"].dtype == torch.int64 and int(state["bn.num_batches_tracked"]) == 1
    assert state["head.weight"].dtype == torch.bfloat16

    path = tmp_path / "net.safetensors"
    h.save(net, path)
    loaded = h.load(path)
    assert_state_equal(state, loaded)
    assert_state_equal(state, h.from_bytes(h.to_bytes(net)))
    assert all(t.device.type == "cpu" for t in loaded.values())

    other = trained_net(1)
    assert not torch.equal(other.state_dict()["fc.weight"], state["fc.weight"])
    other.load_state_dict(loaded)
    assert_state_equal(state, other.state_dict())


@needs_torch
def test_pytorch_weights_file_is_framework_neutral(tmp_path):
    h = get_helper("pytorch")
    net = trained_net(0)
    h.save(net, tmp_path / "net.safetensors")
    neutral = read_model(tmp_path / "net.safetensors")
    assert neutral["head.weight"].dtype == BF16
    assert neutral["bn.num_batches_tracked"].dtype == np.int64
    assert neutral["scale"].shape == () and neutral["scale"].dtype == np.float64
    assert neutral["head.weight"].view(np.int16).tobytes() == net.head.weight.detach().view(torch.int16).numpy().tobytes()


@needs_torch
def test_pytorch_conversions_share_no_memory():
    h = get_helper("pytorch")
    net = trained_net(0)
    neutral = h.to_weights(net)
    with torch.no_grad():
        net.fc.weight.add_(1.0)
    assert not np.array_equal(neutral["fc.weight"], net.fc.weight.detach().numpy())

    readonly = np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), dtype=np.float32)
    bf = np.arange(4, dtype=np.float32).astype(BF16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on non-writeable numpy input
        state = h.from_weights({"r": readonly, "bf": bf})
    state["r"].add_(1)
    state["bf"].add_(1)
    assert readonly.tolist() == [0, 1, 2, 3, 4, 5]
    assert bf.astype(np.float32).tolist() == [0, 1, 2, 3]
    assert state["bf"].dtype == torch.bfloat16 and state["bf"].tolist() == [1, 2, 3, 4]


@needs_torch
def test_pytorch_accepts_state_dict_and_rejects_unsupported_dtypes():
    h = get_helper("torch")
    sd = {"x": torch.arange(4, dtype=torch.int32), "s": torch.tensor(True)}
    assert_state_equal(sd, h.from_bytes(h.to_bytes(sd)))
    with pytest.raises(ModelFormatError, match="tensor 'c'"):
        h.to_bytes({"c": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(TypeError, match="nn.Module or a state_dict"):
        h.to_weights([torch.zeros(1)])


# ----------------------------------------------------------------------------- keras helper


@pytest.fixture(scope="module")
def keras():
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend in this process")
    return keras


def keras_cnn(keras, seed: int):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(seed).standard_normal((4, 8, 8, 1)).astype(np.float32)
    model.fit(x, np.zeros((4, 3), np.float32), epochs=1, verbose=0)  # moves BN moving stats
    return model


def test_keras_cnn_round_trips_exactly(keras, tmp_path):
    h = get_helper("keras")
    a = keras_cnn(keras, 0)
    b = keras_cnn(keras, 1)  # built second, so its variable paths carry "_1" suffixes
    before = a.get_weights()
    assert not np.array_equal(before[0], b.get_weights()[0])

    h.save(a, tmp_path / "a.safetensors")
    b.set_weights(h.load(tmp_path / "a.safetensors"))
    after = b.get_weights()
    assert len(after) == len(before)
    for x, y in zip(before, after):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()

    via_bytes = h.from_bytes(h.to_bytes(a))
    assert [w.tobytes() for w in via_bytes] == [w.tobytes() for w in before]

    header = read_header(tmp_path / "a.safetensors")
    assert len(set(header.names)) == len(before)
    assert any("moving_mean" in n for n in header.names)
    # b's names differ (auto-naming), but keras matches by position: still compatible.
    h.save(b, tmp_path / "b.safetensors")
    h.save(b.get_weights(), tmp_path / "list.safetensors")
    assert read_header(tmp_path / "b.safetensors").names != header.names
    h.check_compatible(header, read_header(tmp_path / "b.safetensors"))
    h.check_compatible(header, read_header(tmp_path / "list.safetensors"))


def test_keras_names_are_made_unique():
    from fedtier.helpers.keras_helper import _unique_names

    assert _unique_names(["a/k", "a/k", "a/k#1", "b", "a/k"]) == ["a/k", "a/k#1", "a/k#1#1", "b", "a/k#2"]


def test_keras_bf16_layer_round_trips(keras):
    h = get_helper("keras")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, dtype="bfloat16"), keras.layers.Dense(2)])
    weights = h.to_weights(model)
    assert [w.dtype for w in weights.values()] == [BF16, BF16, np.float32, np.float32]
    restored = h.from_bytes(h.to_bytes(model))
    assert [w.tobytes() for w in restored] == [w.tobytes() for w in model.get_weights()]


def test_keras_refuses_another_backend(monkeypatch):
    # keras needs jax for its non-torch CPU backends, so stand in for an application
    # that already imported keras on another backend.
    import types

    fake = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "jax"))
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(RuntimeError, match="'jax' backend but fedtier needs 'torch': set KERAS_BACKEND=torch"):
        get_helper("keras")


# ----------------------------------------------------------------------------- validate_file


@needs_torch
def test_validate_file(tmp_path):
    h = get_helper("pytorch")
    good = tmp_path / "good.safetensors"
    h.save(trained_net(0), good)
    assert h.validate_file(good).names == read_header(good).names

    bad = tmp_path / "nan.safetensors"
    write_model(bad, {"w": np.array([1.0, np.nan, np.inf], np.float32)})
    with pytest.raises(ModelFormatError, match="'w' contains 1 NaN and 1 inf values \\(first at element 1\\)"):
        h.validate_file(bad)
    assert h.validate_file(bad, require_finite=False).names == ("w",)

    empty = tmp_path / "empty.safetensors"
    write_model(empty, {})
    with pytest.raises(ModelFormatError, match="no tensors"):
        h.validate_file(empty)

    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1])
    with pytest.raises(ModelFormatError, match="truncated"):
        get_helper("keras").validate_file(truncated)


def test_validate_file_reports_conversion_failures_but_not_missing_frameworks(tmp_path, monkeypatch):
    import fedtier.helpers.pytorch_helper as ph

    path = tmp_path / "m.safetensors"
    write_model(path, {"w": np.ones(2, np.float32)})
    h = get_helper("pytorch")

    def no_torch():
        raise ImportError("no torch here")

    monkeypatch.setattr(ph, "_torch", no_torch)
    assert h.validate_file(path).names == ("w",)  # a reducer without torch can still vet seeds

    def refuse(weights):
        raise ValueError("layout not supported")

    monkeypatch.setattr(h, "from_weights", refuse)
    with pytest.raises(ModelFormatError, match="cannot be converted by the 'pytorch' helper: layout not supported"):
        h.validate_file(path)


# ----------------------------------------------------------------------------- aggregation


@pytest.fixture
def helper():
    return get_helper("numpy")


def running_mean(helper, updates, weights, mean=None):
    mean = np.empty_like(updates[0]) if mean is None else mean
    total = 0.0
    for u, w in zip(updates, weights):
        total += w
        arithmetic.increment_average(mean, u, w, total)
    return mean


def test_increment_average_matches_weighted_average(helper):
    rng = np.random.default_rng(3)
    stack = rng.standard_normal((40, 1000)).astype(np.float32) * 10
    w = rng.uniform(1, 500, size=40)
    expected = np.average(stack.astype(np.float64), axis=0, weights=w)
    got = running_mean(helper, list(stack), w)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)

    acc = running_mean(helper, list(stack), w, mean=np.zeros(1000, np.float64))
    np.testing.assert_allclose(acc, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(arithmetic.finalize(acc, np.float32), expected.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_scratch_update_gives_bit_identical_means(helper, dtype):
    """scratch_update lets the fold compute in the update's memory; the means must be the
    very same bits as without it, and a read-only update is never written. Float updates
    must really be used as scratch (else the option does nothing and this would still pass);
    integer ones never (their path rounds through float64 and must not touch the input)."""
    rng = np.random.default_rng(9)
    stack = (rng.standard_normal((6, 257)) * 50).astype(dtype)
    weights = [3.0, 1.0, 7.0, 2.0, 5.0, 4.0]
    plain = np.zeros(257, dtype)
    scratch = np.zeros(257, dtype)
    total = 0.0
    for u, w in zip(stack, weights):
        total += w
        arithmetic.increment_average(plain, u, w, total)
        work = u.copy()
        arithmetic.increment_average(scratch, work, w, total, scratch_update=True)
        if total > w:  # not the first update, which is copied
            assert (work.tobytes() != u.tobytes()) == (dtype != np.int32)
        frozen = u.copy()
        frozen.setflags(write=False)
        probe = scratch.copy()
        arithmetic.increment_average(probe, frozen, w, total + w, scratch_update=True)
        assert frozen.tobytes() == u.tobytes()
    assert plain.tobytes() == scratch.tobytes()


def test_first_update_is_copied_exactly_whatever_mean_held(helper):
    u = np.array([np.float32(1e-30), -0.0, 3.0], np.float32)
    mean = np.full(3, np.nan, np.float32)
    arithmetic.increment_average(mean, u, 2.0, 2.0)
    assert mean.tobytes() == u.tobytes()
    acc = np.full(3, np.nan)
    arithmetic.increment_average(acc, u, 2.0, 2.0)
    np.testing.assert_array_equal(acc, u.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_increment_average_low_precision_floats(helper, dtype):
    rng = np.random.default_rng(5)
    stack = rng.standard_normal((10, 64)).astype(dtype)
    w = rng.uniform(1, 5, size=10)
    expected = np.average(stack.astype(np.float64), axis=0, weights=w)
    got = running_mean(helper, list(stack), w)
    assert got.dtype == dtype
    eps = float(ml_dtypes.finfo(dtype).eps)
    np.testing.assert_allclose(got.astype(np.float64), expected, atol=10 * eps)


def test_increment_average_integer_tensors(helper):
    same = [np.array(100, np.int64)] * 7
    assert running_mean(helper, same, [1, 2, 3, 4, 5, 6, 7]) == 100  # exact when clients agree

    counts = [np.array([100, 0, -5], np.int64), np.array([103, 1, -6], np.int64), np.array([101, 1, -7], np.int64)]
    w = [3, 1, 2]
    expected = np.average(np.stack(counts), axis=0, weights=w)
    got = running_mean(helper, counts, w)
    assert got.dtype == np.int64
    assert np.all(np.abs(got - expected) <= 1)
    acc = running_mean(helper, counts, w, mean=np.zeros(3))
    np.testing.assert_array_equal(arithmetic.finalize(acc, np.int64), np.rint(expected).astype(np.int64))

    mask = running_mean(helper, [np.array([1, 0, 1], bool), np.array([1, 1, 0], bool)], [3, 1])
    assert mask.dtype == bool and mask.tolist() == [True, False, True]

    top = running_mean(helper, [np.array([2**62], np.int64)] * 2, [1, 1])
    assert top.tolist() == [2**62]  # clipping near the int64 limit does not wrap around


def test_increment_average_rejects_bad_arguments(helper):
    mean = np.zeros(3, np.float32)
    with pytest.raises(IncompatibleModelError, match="shape"):
        arithmetic.increment_average(mean, np.zeros(4, np.float32), 1, 1)
    for weight, total in [(2, 1), (-1, 1), (1, 0)]:
        with pytest.raises(ValueError, match="total_weight"):
            arithmetic.increment_average(mean, np.ones(3, np.float32), weight, total)
    arithmetic.increment_average(mean, np.ones(3, np.float32), 0, 5)
    assert mean.tolist() == [0, 0, 0]  # a zero-weight update changes nothing
    with pytest.raises(ValueError, match="writeable"):
        arithmetic.increment_average(np.frombuffer(bytes(12), np.float32), np.ones(3, np.float32), 1, 1)


def test_streaming_aggregation_over_files(helper, tmp_path):
    """The combiner's flow: lockstep iter_slices over updates, one running mean per slice."""
    rng = np.random.default_rng(11)
    updates = [
        {"a": rng.standard_normal((30, 7)).astype(np.float32), "n": np.array(i + 1, np.int64)} for i in range(4)
    ]
    w = [10.0, 20.0, 5.0, 1.0]
    paths = []
    for i, u in enumerate(updates):
        paths.append(tmp_path / f"u{i}.safetensors")
        write_model(paths[-1], u)
    reference = read_header(paths[0])
    for p in paths[1:]:
        helper.check_compatible(reference, read_header(p))
    out: dict[str, list[np.ndarray]] = {}
    streams = [iter_slices(p, max_bytes=64) for p in paths]
    for parts in zip(*streams):
        spec, offset, _ = parts[0]
        mean = np.zeros(parts[0][2].size, np.float64)
        total = 0.0
        for (s, o, flat), weight in zip(parts, w):
            assert (s.name, o) == (spec.name, offset)
            helper.check_finite(s.name, flat, o)
            total += weight
            arithmetic.increment_average(mean, flat, weight, total)
        out.setdefault(spec.name, []).append(arithmetic.finalize(mean, spec.dtype))
    a = np.concatenate(out["a"]).reshape(30, 7)
    expected = np.average(np.stack([u["a"] for u in updates]), axis=0, weights=w)
    np.testing.assert_allclose(a, expected, rtol=1e-6)
    assert np.concatenate(out["n"]).tolist() == [round(np.average([1, 2, 3, 4], weights=w))]


# ----------------------------------------------------------------------------- compatibility


def header_of(tmp_path, weights, name="m"):
    path = tmp_path / f"{name}.safetensors"
    write_model(path, weights)
    return read_header(path)


def test_check_compatible_accepts_identical_structure(helper, tmp_path):
    w = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.int64)}
    helper.check_compatible(header_of(tmp_path, w, "r"), header_of(tmp_path, {k: v + 1 for k, v in w.items()}, "c"))


@pytest.mark.parametrize(
    "candidate, message",
    [
        ({"a": np.zeros((2, 3), np.float32), "x": np.zeros(4, np.int64)}, "tensor #1: reference has 'b' but update has 'x'"),
        ({"b": np.zeros(4, np.int64), "a": np.zeros((2, 3), np.float32)}, "tensor #0: reference has 'a' but update has 'b'"),
        ({"a": np.zeros((3, 2), np.float32), "b": np.zeros(4, np.int64)}, r"tensor 'a': update shape \[3, 2\] does not match reference \[2, 3\]"),
        ({"a": np.zeros((2, 3), np.float16), "b": np.zeros(4, np.int64)}, "tensor 'a': update dtype F16 does not match reference F32"),
        ({"a": np.zeros((2, 3), np.float32)}, "update has 1 tensors but reference has 2; first missing: 'b'"),
        (
            {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.int64), "c": np.zeros(1, np.int8)},
            "first extra: 'c'",
        ),
    ],
)
def test_check_compatible_names_first_mismatch(helper, tmp_path, candidate, message):
    reference = header_of(tmp_path, {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.int64)}, "r")
    with pytest.raises(IncompatibleModelError, match=message):
        helper.check_compatible(reference, header_of(tmp_path, candidate, "c"))


def test_keras_compatibility_is_positional_but_still_checks_shapes(tmp_path):
    h = get_helper("keras")
    reference = header_of(tmp_path, {"seq/dense/kernel": np.zeros((2, 3), np.float32)}, "r")
    h.check_compatible(reference, header_of(tmp_path, {"seq_1/dense_4/kernel": np.zeros((2, 3), np.float32)}, "a"))
    with pytest.raises(IncompatibleModelError, match=r"tensor #0 'seq/dense/kernel': update shape"):
        h.check_compatible(reference, header_of(tmp_path, {"x": np.zeros((3, 2), np.float32)}, "b"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, BF16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_catches_nan_and_inf(helper, dtype, bad):
    values = np.arange(10, dtype=np.float32).astype(dtype)
    helper.check_finite("w", values)
    values[7] = bad
    with pytest.raises(IncompatibleModelError, match=r"tensor 'w' contains .* \(first at element 107\)"):
        helper.check_finite("w", values, offset=100)


def test_check_finite_ignores_integer_tensors(helper):
    helper.check_finite("n", np.array([np.iinfo(np.int64).max, 0], np.int64))
    helper.check_finite("m", np.array([True, False]))


def test_the_proximal_hook_works_in_keras_fit_on_the_torch_backend(keras):
    """FedProx's one line for a keras project (fedtier/helpers/proximal.py): one step of plain
    SGD from weights 1 away from the round's model moves lr * mu * 1 further towards it."""
    from fedtier.helpers.keras_helper import add_proximal_term

    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    y = np.zeros((8, 2), np.float32)
    lr, mu, after = 0.1, 3.0, {}
    for m in (0.0, mu):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        start = model.get_weights()
        add_proximal_term(model, m)
        model.set_weights([w + 1.0 for w in start])  # trained away from the round's model, in place
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr), loss="mse")
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        after[m] = model.get_weights()
    for plain, prox in zip(after[0.0], after[mu]):
        np.testing.assert_allclose(plain - prox, lr * mu * 1.0, rtol=1e-5)
