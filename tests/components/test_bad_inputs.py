"""Every bad input is a named error: exit 2, the path (and field) named, nothing written.

Systematic rather than case by case: each field of each file format the stages read
(a dataset's manifest, an episode file, a policy bundle's policy.json and parts) is
corrupted in turn in every way its type allows (deleted, null, a value of another type,
out of range), each file kind is broken as a whole (empty, random bytes, truncated, bad
compressed bytes, a folder in its place), and a seeded fuzz loop flips bytes of an
episode file; the command that reads it must answer each with one line naming the file
and exit 2, and leave no output. (Evaluations, the fourth format, are the gate's
planted table in test_registry.py.)
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.cli import Completed, run_module

TASK = "PushCube-v1"

# What a value of each kind of field can be corrupted into (besides being deleted).
WRONG = {
    "str": [None, 5, ["a"]],
    "int": [None, "5", -1, 1.5, True],
    "list": [None, "x", {"a": 1}],
    "dict": [None, "x", [1]],
}
MANIFEST_FIELDS = {
    "format": "str", "task": "str", "control_mode": "str", "robot_uids": "str", "camera": "dict",
    "frame_shape": "list", "env_kwargs": "dict", "episodes": "list", "counts": "dict", "action_dim": "int",
    "proprio_dim": "int", "action_min": "list", "action_max": "list", "action_space_low": "list",
    "action_space_high": "list", "proprio_mean": "list", "proprio_std": "list",
}  # fmt: skip
# Values the types allow that are still wrong.
MANIFEST_VALUES = [
    ("format", "par-demos-v1"),
    ("frame_shape", [64, 64]),
    ("frame_shape", [64, 64, 4]),
    ("frame_shape", [0, 64, 3]),
    ("episodes", []),
    ("action_dim", 7),
    ("action_min", [0.0] * 7 + [float("nan")]),
    ("proprio_std", [float("inf")] * 12),
    ("counts", {"episodes": 5, "steps": 10}),
]
EPISODE_FIELDS = [("file", "str"), ("seed", "int"), ("steps", "int")]
EPISODE_VALUES = [("file", "../../etc/passwd"), ("file", "/tmp/x.npz"), ("file", ""), ("steps", 0)]


def _cases() -> list[tuple[str, object]]:
    cases = [(field, "<deleted>") for field in MANIFEST_FIELDS]
    cases += [(field, wrong) for field, kind in MANIFEST_FIELDS.items() for wrong in WRONG[kind]]
    cases += MANIFEST_VALUES
    cases += [(f"episodes.0.{f}", "<deleted>") for f, _ in EPISODE_FIELDS]
    cases += [(f"episodes.0.{f}", wrong) for f, kind in EPISODE_FIELDS for wrong in WRONG[kind]]
    cases += [(f"episodes.0.{f}", value) for f, value in EPISODE_VALUES]
    return cases


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value == "<deleted>":
        del node[leaf]
    else:
        node[leaf] = value


def _encode(dataset: Path, smoke_params: Path, out: Path) -> Completed:
    return run_module(
        "components.encode", "--params", str(smoke_params), "--demos", str(dataset), "--out", str(out / "encoded"),
        "--metrics", str(out / "m.json"), "--plot", str(out / "p.png"),
    )  # fmt: skip


def _refused(result: Completed, *names: str, out: Path) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for name in names:
        assert name in result.stderr, f"{name!r} not in {result.stderr[-2000:]}"
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))  # nothing written


@pytest.fixture(scope="module")
def pristine(demos, tmp_path_factory) -> Path:
    """A private copy of PushCube's dataset that the tests copy again before breaking."""
    target = tmp_path_factory.mktemp("pristine") / TASK
    shutil.copytree(demos / TASK, target)
    return target


@pytest.fixture
def dataset(pristine, tmp_path) -> Path:
    target = tmp_path / TASK
    shutil.copytree(pristine, target)
    return target


def test_every_field_of_a_manifest_broken_in_every_way_is_named(pristine, smoke_params, tmp_path):
    """One dataset, its manifest rewritten for each case: ~90 cases, one encode each."""
    original = json.loads((pristine / "manifest.json").read_text())
    failures = []
    for k, (field, value) in enumerate(_cases()):
        dataset = tmp_path / f"case{k}" / TASK
        dataset.mkdir(parents=True)
        (dataset / "episodes").symlink_to(pristine / "episodes")
        manifest = json.loads(json.dumps(original))
        _set(manifest, field, value)
        (dataset / "manifest.json").write_text(json.dumps(manifest))
        out = tmp_path / f"case{k}" / "out"
        result = _encode(dataset, smoke_params, out)
        path, name = str(dataset / "manifest.json"), field.split(".")[-1]
        if result.returncode != 2 or path not in result.stderr or name not in result.stderr or out.exists():
            failures.append(f"{field} = {value!r}: exit {result.returncode}: {result.stderr[-400:]}")
    assert not failures, "\n".join(failures)


def _arrays(dataset: Path) -> dict[str, np.ndarray]:
    with np.load(dataset / "episodes" / "episode_00000.npz") as data:
        return {k: data[k] for k in data.files}


def _with_nan(values: np.ndarray) -> np.ndarray:
    values = values.copy()
    values.flat[3] = np.nan
    return values


ARRAY_CASES = {
    "frames deleted": lambda a: {k: v for k, v in a.items() if k != "frames"},
    "frames as float": lambda a: a | {"frames": a["frames"].astype(np.float32)},
    "frames a row short": lambda a: a | {"frames": a["frames"][:-1]},
    "frames of another size": lambda a: a | {"frames": a["frames"][:, :32]},
    "actions with NaN": lambda a: a | {"actions": _with_nan(a["actions"])},
    "actions infinite": lambda a: a | {"actions": np.full_like(a["actions"], np.inf)},
    "actions of another width": lambda a: a | {"actions": a["actions"][:, :5]},
    "actions as text": lambda a: a | {"actions": a["actions"].astype(str)},
    "proprio with NaN": lambda a: a | {"proprio": np.full_like(a["proprio"], np.nan)},
    "proprio a row long": lambda a: a | {"proprio": np.concatenate([a["proprio"], a["proprio"][:1]])},
    "success as int": lambda a: a | {"success": a["success"].astype(np.int64)},
    "success deleted": lambda a: {k: v for k, v in a.items() if k != "success"},
    "seed another": lambda a: a | {"seed": np.int64(a["seed"] + 1)},
    "seed a list": lambda a: a | {"seed": np.array([a["seed"], a["seed"]])},
}  # fmt: skip


@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_every_array_of_an_episode_broken_is_named(dataset, smoke_params, tmp_path, case):
    arrays = ARRAY_CASES[case](_arrays(dataset))
    np.savez_compressed(dataset / "episodes" / "episode_00000.npz", **arrays)
    _refused(_encode(dataset, smoke_params, tmp_path / "out"), "episode_00000.npz", out=tmp_path / "out")


def _bad_compressed_bytes(path: Path) -> None:
    """Keep the zip's structure, garble the deflate stream of the frames array (CRCs too)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("frames.npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 10 : start + 60] = bytes(range(50))
    path.write_bytes(bytes(data))


def _with_object_frames(path: Path) -> None:
    """Every array there, but frames an object array (loading it would unpickle)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(path, **(arrays | {"frames": np.array([{"a": 1}], dtype=object)}))


FILE_CASES = {
    "empty": lambda p: p.write_bytes(b""),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "bad compressed bytes": _bad_compressed_bytes,
    "a folder": lambda p: (p.unlink(), p.mkdir()),
    "missing": lambda p: p.unlink(),
    "an object array": lambda p: _with_object_frames(p),
    "a plain .npy": lambda p: np.save(open(p, "wb"), np.zeros(3)),  # noqa: SIM115 - np.save closes it
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_an_episode_file_broken_as_a_whole_is_named(dataset, smoke_params, tmp_path, case):
    FILE_CASES[case](dataset / "episodes" / "episode_00001.npz")
    _refused(_encode(dataset, smoke_params, tmp_path / "out"), "episode 1 file", str(dataset), out=tmp_path / "out")


def test_flipped_bytes_anywhere_in_an_episode_file_are_named_or_harmless(pristine, smoke_params, tmp_path):
    """A seeded fuzz loop: 40 copies of one episode file, each with 1-8 bytes garbled at
    random places. Either the file still reads as the same valid episode (the bytes fell
    where nothing reads them) or the command exits 2 naming it: never a traceback."""
    rng = np.random.default_rng(7)
    original = (pristine / "episodes" / "episode_00000.npz").read_bytes()
    outcomes = {0: 0, 2: 0}
    for k in range(40):
        dataset = tmp_path / f"fuzz{k}" / TASK
        shutil.copytree(pristine, dataset)
        data = bytearray(original)
        for position in rng.integers(0, len(data), rng.integers(1, 9)):
            data[position] = (data[position] + int(rng.integers(1, 256))) % 256
        (dataset / "episodes" / "episode_00000.npz").write_bytes(bytes(data))
        result = _encode(dataset, smoke_params, tmp_path / f"fuzz{k}" / "out")
        assert result.returncode in (0, 2) and "Traceback" not in result.stderr, result.stderr[-3000:]
        if result.returncode == 2:
            assert "episode_00000.npz" in result.stderr and not (tmp_path / f"fuzz{k}" / "out" / "encoded").exists()
        outcomes[result.returncode] += 1
    assert outcomes[2] >= 30, outcomes  # the archive's checksums catch nearly every flip


@pytest.fixture(scope="module")
def pristine_policy(policy_dir, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("policy") / "policy"
    shutil.copytree(policy_dir, target)
    return target


POLICY_FIELDS = {
    "format": "str", "tasks": "list", "latent_mean": "list", "latent_std": "list", "latent_shape": "list",
    "frame_shape": "list", "action_norm": "dict", "proprio_norm": "dict", "task_info": "dict",
}  # fmt: skip
BUNDLE_CASES = {
    "no policy.json": lambda p: (p / "policy.json").unlink(),
    "policy.json empty": lambda p: (p / "policy.json").write_text(""),
    "policy.json a list": lambda p: (p / "policy.json").write_text("[]"),
    "no model/": lambda p: shutil.rmtree(p / "model"),
    "no vae/": lambda p: shutil.rmtree(p / "vae"),
    "no weights": lambda p: (p / "model" / "model.safetensors").unlink(),
    "weights garbled": lambda p: (p / "model" / "model.safetensors").write_bytes(b"\x00" * 64),
    "vae without its config": lambda p: (p / "vae" / "config.json").unlink(),
    "vae weights garbled": lambda p: [f.write_bytes(b"\x01" * 32) for f in (p / "vae").glob("*.safetensors")],
    "task_info without the task": lambda p: _edit_info(p, lambda i: i | {"task_info": {}}),
    "tasks empty": lambda p: _edit_info(p, lambda i: i | {"tasks": []}),
    "latent_shape of two": lambda p: _edit_info(p, lambda i: i | {"latent_shape": i["latent_shape"][:2]}),
}


def _edit_info(bundle: Path, change) -> None:
    info = json.loads((bundle / "policy.json").read_text())
    (bundle / "policy.json").write_text(json.dumps(change(info)))


def _without(info: dict, field: str) -> dict:
    return {k: v for k, v in info.items() if k != field}


def _bundle_cases() -> list[tuple[str, object]]:
    cases = [(name, change) for name, change in BUNDLE_CASES.items()]
    for field, kind in POLICY_FIELDS.items():
        cases.append((f"{field} deleted", lambda p, f=field: _edit_info(p, lambda i: _without(i, f))))
        for wrong in WRONG[kind]:
            cases.append((f"{field} = {wrong!r}", lambda p, f=field, w=wrong: _edit_info(p, lambda i: i | {f: w})))
    return cases


def test_every_part_of_a_policy_bundle_broken_is_named(pristine_policy, smoke_params, tmp_path):
    """Each case breaks one copy of the bundle; evaluate must refuse it before any episode."""
    failures = []
    for k, (case, break_it) in enumerate(_bundle_cases()):
        bundle = tmp_path / f"case{k}" / "policy"
        shutil.copytree(pristine_policy, bundle)
        break_it(bundle)
        out = tmp_path / f"case{k}" / "eval"
        result = run_module(
            "components.evaluate", "--params", str(smoke_params), "--model-uri", str(bundle), "--task", TASK,
            "--out", str(out),
        )  # fmt: skip
        if result.returncode != 2 or str(bundle) not in result.stderr or out.exists() or "Traceback" in result.stderr:
            failures.append(f"{case}: exit {result.returncode}: {result.stderr[-400:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "module, args, words",
    [
        ("components.collect", ["--task", TASK, "--out", "{tmp}/out", "--demos", "-3"], "--demos"),
        ("components.collect", ["--task", TASK, "--out", "{tmp}/out", "--workers", "0"], "--workers"),
        (
            "components.evaluate",
            ["--model-uri", "x", "--task", TASK, "--out", "{tmp}/out", "--episodes", "-1"],
            "--episodes",
        ),
        (
            "components.evaluate",
            ["--model-uri", "x", "--task", TASK, "--out", "{tmp}/out", "--seed-start", "-5"],
            "--seed-start",
        ),
        (
            "components.evaluate",
            ["--model-uri", "x", "--task", TASK, "--out", "{tmp}/out", "--episodes", "two"],
            "--episodes",
        ),
    ],
)
def test_a_bad_count_on_a_command_line_is_named(smoke_params, tmp_path, module, args, words):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_module(module, "--params", str(smoke_params), *args)
    _refused(result, words, out=tmp_path / "out")


@pytest.mark.parametrize(
    "text, words",
    [("collect: [unclosed\n", "not valid YAML"), ("- a list\n", "mapping"), ("colect: {}\n", "colect")],
)
def test_a_malformed_params_file_given_to_components_params_is_named(tmp_path, text, words):
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    _refused(run_module("components.params", str(path), "--out", str(tmp_path / "out" / "p.yaml")), str(path), words,
             out=tmp_path / "out")  # fmt: skip
