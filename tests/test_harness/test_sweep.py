"""`harness sweep`: the plan of a grid, nested data subsets, resuming an interrupted sweep, the dry run, bad input,
Slurm submission (fake sbatch), and the toy pipeline end to end (small here; the full preset is marked slow)."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from harness import sweep
from harness.cli import main
from harness.sweep import Job, JobFailed, RunIndex, SweepSettings, build_plan, run_sweep

METHODS = ("dpo", "mpo", "jompo")
JOB_KEYS = {"method", "data_size", "beta", "epochs", "seed", "model", "model_size", "rejected_image", "name"}


def cli(*args: object, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["--log-level", "WARNING", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def text_prefs(tmp_path_factory) -> Path:
    """5000 text-only preference records (canonical JSONL), in a scrambled id order."""
    from trainers.data import PreferenceExample, write_preferences

    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    order = sorted(range(5000), key=lambda i: (i * 7919) % 5003)
    write_preferences(
        path, [PreferenceExample(f"p{i:05d}", f"question {i}?", None, None, f"yes {i}", f"no {i}") for i in order]
    )
    return path


def settings(output: Path, data: Path | str, **values: object) -> SweepSettings:
    base = {
        "methods": list(METHODS),
        "data_sizes": ["1k", "2k", "5k"],
        "tasks": ["toy_amber"],
        "seeds": [1234],
        "output": str(output),
        "data": str(data),
        "no_report": True,
    }
    return SweepSettings.from_mapping({**base, **values})


# --------------------------------------------------------------------------------------------------- the plan
def test_plan_is_exactly_the_grid(tmp_path, text_prefs):
    plan = build_plan(settings(tmp_path / "sw", text_prefs))
    names = [f"{m}-{s}-b0.05-e2-s1234" + ("-crop" if m == "mpo" else "") for m in METHODS for s in ("1k", "2k", "5k")]
    expected = ["eval-base"] + [f"{kind}-{n}" for n in names for kind in ("train", "eval")]
    assert [j.id for j in plan.jobs] == expected
    kinds = [j.kind for j in plan.jobs]
    assert (kinds.count("train"), kinds.count("eval"), len(plan.jobs)) == (9, 10, 19)
    jobs = plan.by_id
    assert jobs["eval-base"].deps == ()
    for n in names:
        assert jobs[f"train-{n}"].deps == ()
        assert jobs[f"eval-{n}"].deps == (f"train-{n}",)
    train = jobs["train-jompo-2k-b0.05-e2-s1234"]
    assert train.params == {
        "method": "jompo",
        "data_size": 2000,
        "beta": 0.05,
        "epochs": 2.0,
        "seed": 1234,
        "rejected_image": None,
    }
    assert train.train_config["data"] == str(plan.output / "data/preferences-2k.jsonl")
    assert train.train_config["output"] == str(plan.output / "models/jompo-2k-b0.05-e2-s1234")
    assert train.argv == ["train", "--config", str(plan.output / "jobs" / train.id / "train.yaml")]
    ev = jobs["eval-jompo-2k-b0.05-e2-s1234"]
    assert ev.argv[:9] == [
        "run",
        "--model",
        str(plan.output / "models/jompo-2k-b0.05-e2-s1234"),
        "--tasks",
        "toy_amber",
        "--output-path",
        str(plan.output / "runs"),
        "--run-name",
        "jompo-2k-b0.05-e2-s1234",
    ]
    assert set(ev.job_json) == JOB_KEYS and ev.job_json["data_size"] == 2000 and ev.job_json["method"] == "jompo"
    assert plan.data.subsets == {
        1000: "data/preferences-1k.jsonl",
        2000: "data/preferences-2k.jsonl",
        5000: "data/preferences-5k.jsonl",
    }
    # ids and fingerprints are stable: the same settings plan the same jobs
    again = build_plan(settings(tmp_path / "sw", text_prefs))
    assert [(j.id, j.fingerprint) for j in again.jobs] == [(j.id, j.fingerprint) for j in plan.jobs]
    assert len({j.fingerprint for j in plan.jobs}) == len(plan.jobs)


def test_grid_axes_and_rejected_images_only_where_used(tmp_path, text_prefs):
    plan = build_plan(
        settings(
            tmp_path / "sw", text_prefs, data_sizes="1k", betas="0.05,0.1", epochs="2,3", rejected_images="crop,black"
        )
    )
    trains = [j.id for j in plan.jobs if j.kind == "train"]
    # dpo and jompo: 2 betas x 2 epochs; mpo: also 2 strategies
    assert len(trains) == 4 + 8 + 4
    assert "train-dpo-1k-b0.1-e3-s1234" in trains and "train-mpo-1k-b0.1-e3-s1234-black" in trains
    assert not any(t.startswith("train-dpo") and t.endswith(("crop", "black")) for t in trains)
    assert plan.by_id["train-mpo-1k-b0.1-e3-s1234-black"].train_config["rejected_image"] == "black"


def test_sft_stage_feeds_the_grid(tmp_path, text_prefs):
    plan = build_plan(
        settings(tmp_path / "sw", text_prefs, methods="dpo", data_sizes="1k", sft={"data": "toy", "max_steps": 3})
    )
    assert [j.id for j in plan.jobs] == ["sft", "eval-sft", "train-dpo-1k-b0.05-e2-s1234", "eval-dpo-1k-b0.05-e2-s1234"]
    jobs = plan.by_id
    assert jobs["eval-sft"].deps == ("sft",) and jobs["train-dpo-1k-b0.05-e2-s1234"].deps == ("sft",)
    assert jobs["train-dpo-1k-b0.05-e2-s1234"].train_config["model"] == str(plan.output / "models/sft")
    assert jobs["sft"].train_config["method"] == "sft" and jobs["sft"].train_config["max_steps"] == 3
    assert jobs["eval-sft"].job_json["method"] == "sft"


def test_preset_toy_plans_the_whole_pipeline(tmp_path, capsys):
    code, out, _ = cli("sweep", "--preset", "toy", "--output", tmp_path / "toy", "--dry-run", capsys=capsys)
    assert code == 0
    assert "14 jobs (1 sft, 6 train, 7 eval)" in out
    for method in METHODS:
        assert f"train-{method}-32-" in out and f"eval-{method}-64-" in out
    assert not (tmp_path / "toy").exists()


# --------------------------------------------------------------------------------------------------- subsets
def test_subsets_are_nested_and_reproducible(tmp_path, text_prefs):
    from trainers.data import read_preferences

    examples = read_preferences(text_prefs)
    subsets = sweep.nested_subsets(examples, [1000, 2000, 5000], seed=1234)
    ids = {n: [e.id for e in s] for n, s in subsets.items()}
    assert ids[1000] == ids[2000][:1000] and ids[2000] == ids[5000][:2000]
    assert ids[1000] != sorted(ids[1000])  # shuffled
    # independent of the file's order; another seed draws another subset
    assert [e.id for e in sweep.nested_subsets(list(reversed(examples)), [1000], 1234)[1000]] == ids[1000]
    assert [e.id for e in sweep.nested_subsets(examples, [1000], 7)[1000]] != ids[1000]

    plan = build_plan(settings(tmp_path / "sw", text_prefs))
    sweep.prepare(plan)
    files = {n: (plan.output / p).read_bytes() for n, p in plan.data.subsets.items()}
    read = {n: [e.id for e in read_preferences(plan.output / p)] for n, p in plan.data.subsets.items()}
    assert read == ids
    assert set(read[1000]) <= set(read[2000]) <= set(read[5000])
    sweep.prepare(build_plan(settings(tmp_path / "sw", text_prefs)))  # a second run writes the same bytes
    assert {n: (plan.output / p).read_bytes() for n, p in plan.data.subsets.items()} == files


# --------------------------------------------------------------------------------------------------- running
class FakeRunner:
    """Writes each job's expected outputs instead of training / evaluating; fails or interrupts on request."""

    def __init__(self, fail: set[str] = frozenset(), interrupt: set[str] = frozenset()):
        self.calls: list[str] = []
        self.fail = set(fail)
        self.interrupt = set(interrupt)

    def __call__(self, job: Job, output: Path, log_path: Path) -> None:
        self.calls.append(job.id)
        if job.id in self.interrupt:
            raise KeyboardInterrupt
        if job.id in self.fail:
            raise JobFailed("exit status 1; simulated crash")
        write_fake_outputs(job, output)


_FAKE_BASE_LOCK = threading.Lock()


def write_fake_outputs(job: Job, output: Path) -> None:
    """What a job that finished writes: a training job, a small model (weights that depend on the job) with the
    manifest `harness train` writes last, trained from the job's starting model (a fake base model when the sweep
    starts from the embedded one); an evaluation, its metrics files."""
    if job.kind not in ("sft", "train"):
        for rel in job.expect:
            (output / rel).parent.mkdir(parents=True, exist_ok=True)
            (output / rel).write_text("{}", encoding="utf-8")
        return
    import torch
    from safetensors.torch import save_file

    from harness.models import content_hash
    from trainers.trainer import weights_record

    start = Path(job.train_config["model"]) if job.train_config.get("model") else output / "fake-base"
    with _FAKE_BASE_LOCK:  # parallel training jobs share one fake base: it appears whole, once
        if not start.is_dir():
            part = start.with_name(start.name + ".part")
            part.mkdir(parents=True, exist_ok=True)
            (part / "config.json").write_text("{}")
            save_file({"w": torch.zeros(4)}, str(part / "model.safetensors"))
            part.rename(start)
    model_dir = output / job.outputs["model"]
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    seed = sum(map(ord, job.id))
    save_file({"w": torch.arange(4, dtype=torch.float32) + seed}, str(model_dir / "model.safetensors"))
    (model_dir / "train_manifest.json").write_text(
        json.dumps(
            {
                "config": job.train_config,
                "model": {"path": str(start.resolve()), "content_hash": content_hash(start)},
                "global_step": 1,
                "weights": weights_record(model_dir),
            }
        )
    )


def _small(tmp_path: Path, text_prefs: Path) -> SweepSettings:
    return settings(tmp_path / "sw", text_prefs, methods="dpo,jompo", data_sizes="1k,2k")


def test_an_interrupted_sweep_resumes_without_redoing_finished_jobs(tmp_path, text_prefs, capsys):
    s = _small(tmp_path, text_prefs)
    crash = "train-dpo-2k-b0.05-e2-s1234"
    first = FakeRunner(fail={crash}, interrupt={"eval-jompo-2k-b0.05-e2-s1234"})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(s, runner=first, echo=lambda _: None)
    index = RunIndex(Path(s.output))
    states = {i: e["state"] for i, e in index.entries().items()}
    assert states == {
        "eval-base": "done",
        "train-dpo-1k-b0.05-e2-s1234": "done",
        "eval-dpo-1k-b0.05-e2-s1234": "done",
        crash: "failed",
        "eval-dpo-2k-b0.05-e2-s1234": "pending",
        "train-jompo-1k-b0.05-e2-s1234": "done",
        "eval-jompo-1k-b0.05-e2-s1234": "done",
        "train-jompo-2k-b0.05-e2-s1234": "done",
        "eval-jompo-2k-b0.05-e2-s1234": "pending",
    }
    assert "simulated crash" in index.entries()[crash]["error"]
    assert index.entries()["eval-jompo-2k-b0.05-e2-s1234"]["error"] == "interrupted"
    before = index.entries()

    time.sleep(0.01)
    second = FakeRunner()
    result = run_sweep(s, runner=second, echo=lambda _: None)
    assert result.ok
    assert second.calls == [crash, "eval-dpo-2k-b0.05-e2-s1234", "eval-jompo-2k-b0.05-e2-s1234"]
    after = index.entries()
    assert all(e["state"] == "done" for e in after.values())
    for job_id, entry in before.items():
        if entry["state"] == "done":  # not run again: same start time, one attempt
            assert after[job_id]["started"] == entry["started"] and after[job_id]["attempts"] == 1
    assert after[crash]["attempts"] == 2 and after[crash]["error"] is None

    third = FakeRunner()
    assert run_sweep(s, runner=third, echo=lambda _: None).skipped and third.calls == []


def test_a_failed_job_blocks_only_its_dependents(tmp_path, text_prefs):
    s = _small(tmp_path, text_prefs)
    runner = FakeRunner(fail={"train-dpo-1k-b0.05-e2-s1234"})
    result = run_sweep(s, runner=runner, echo=lambda _: None)
    assert not result.ok
    assert result.failed == ["train-dpo-1k-b0.05-e2-s1234"]
    assert result.blocked == ["eval-dpo-1k-b0.05-e2-s1234"]
    assert len(result.ran) == 7
    assert "eval-dpo-1k-b0.05-e2-s1234" not in runner.calls


def test_a_retrained_model_is_evaluated_again(tmp_path, text_prefs):
    s = _small(tmp_path, text_prefs)
    run_sweep(s, runner=FakeRunner(), echo=lambda _: None)
    (Path(s.output) / "jobs/train-jompo-2k-b0.05-e2-s1234/done.json").unlink()
    # the final save did not finish (no manifest): the model is trained again
    (Path(s.output) / "models/jompo-2k-b0.05-e2-s1234/train_manifest.json").unlink()
    runner = FakeRunner()
    assert run_sweep(s, runner=runner, echo=lambda _: None).ok
    assert runner.calls == ["train-jompo-2k-b0.05-e2-s1234", "eval-jompo-2k-b0.05-e2-s1234"]


def test_a_complete_verified_model_is_not_trained_again(tmp_path, text_prefs):
    """Stopped after the training ended but before done.json was written: the model is verified, marked done,
    not retrained (its evaluation runs again: `harness run` resumes it)."""
    s = _small(tmp_path, text_prefs)
    run_sweep(s, runner=FakeRunner(), echo=lambda _: None)
    out = Path(s.output)
    model = (out / "models/jompo-2k-b0.05-e2-s1234/model.safetensors").read_bytes()
    (out / "jobs/train-jompo-2k-b0.05-e2-s1234/done.json").unlink()
    runner = FakeRunner()
    assert run_sweep(s, runner=runner, echo=lambda _: None).ok
    assert runner.calls == ["eval-jompo-2k-b0.05-e2-s1234"]
    assert (out / "models/jompo-2k-b0.05-e2-s1234/model.safetensors").read_bytes() == model
    done = json.loads((out / "jobs/train-jompo-2k-b0.05-e2-s1234/done.json").read_text())
    assert done["verified_existing"] is True and set(done["weights"]) == {"model.safetensors"}
    assert {e["state"] for e in RunIndex(out).entries().values()} == {"done"}


@pytest.mark.parametrize("damage", ["truncated", "identical_to_start", "replaced", "no_manifest"])
def test_a_training_job_is_done_only_with_a_verified_model(damage, tmp_path, text_prefs):
    """A job whose model is cut short, equal to its starting model (a resume that loaded nothing), or changed
    after it was saved is not marked done: it fails with the reason, its evaluation is not run."""
    s = _small(tmp_path, text_prefs)
    name = "jompo-2k-b0.05-e2-s1234"

    class Damaging(FakeRunner):
        def __call__(self, job, output, log_path):
            super().__call__(job, output, log_path)
            if job.id != f"train-{name}":
                return
            model = output / job.outputs["model"] / "model.safetensors"
            if damage == "truncated":
                model.write_bytes(model.read_bytes()[:-8])
            elif damage == "identical_to_start":
                import shutil

                shutil.copy(output / "fake-base" / "model.safetensors", model)
                manifest = json.loads((model.parent / "train_manifest.json").read_text())
                from trainers.trainer import weights_record

                manifest["weights"] = weights_record(model.parent)
                (model.parent / "train_manifest.json").write_text(json.dumps(manifest))
            elif damage == "replaced":
                import torch
                from safetensors.torch import save_file

                save_file({"w": torch.ones(4)}, str(model))
            else:
                (model.parent / "train_manifest.json").unlink()

    result = run_sweep(s, runner=Damaging(), echo=lambda _: None)
    assert result.failed == [f"train-{name}"] and result.blocked == [f"eval-{name}"]
    error = RunIndex(Path(s.output)).entries()[f"train-{name}"]["error"]
    expected = {
        "truncated": "not a whole safetensors file",
        "identical_to_start": "identical to its starting model",
        "replaced": "differ from those train_manifest.json records",
        "no_manifest": "train_manifest.json",
    }
    assert expected[damage] in error, error
    assert not (Path(s.output) / f"jobs/train-{name}/done.json").exists()


def test_job_json_and_index_have_the_documented_shape(tmp_path, text_prefs):
    s = _small(tmp_path, text_prefs)
    run_sweep(s, runner=FakeRunner(), echo=lambda _: None)
    out = Path(s.output)
    job = json.loads((out / "runs/jompo-1k-b0.05-e2-s1234/job.json").read_text())
    assert job == {
        "method": "jompo",
        "data_size": 1000,
        "beta": 0.05,
        "epochs": 2.0,
        "seed": 1234,
        "model": "lab-llava-v1",
        "model_size": "",
        "rejected_image": None,
        "name": "jompo-1k-b0.05-e2-s1234",
    }
    assert json.loads((out / "runs/base/job.json").read_text())["method"] == "base"
    index = json.loads((out / "index.json").read_text())
    assert index["version"] == 1 and index["data"]["subsets"]["1000"] == "data/preferences-1k.jsonl"
    entry = next(e for e in index["jobs"] if e["id"] == "train-jompo-1k-b0.05-e2-s1234")
    assert {
        "id",
        "kind",
        "params",
        "deps",
        "state",
        "outputs",
        "started",
        "finished",
        "seconds",
        "attempts",
        "command",
        "fingerprint",
        "log",
    } <= set(entry)
    assert entry["outputs"] == {"model": "models/jompo-1k-b0.05-e2-s1234"} and entry["state"] == "done"
    assert entry["command"][-4:] == [
        "harness",
        "train",
        "--config",
        str(out / "jobs/train-jompo-1k-b0.05-e2-s1234/train.yaml"),
    ]
    assert (out / "jobs/train-jompo-1k-b0.05-e2-s1234/done.json").is_file()


def test_changed_training_settings_are_refused(tmp_path, text_prefs, capsys):
    s = _small(tmp_path, text_prefs)
    run_sweep(s, runner=FakeRunner(), echo=lambda _: None)
    code, _, err = cli(
        "sweep",
        "--methods",
        "dpo,jompo",
        "--data-sizes",
        "1k,2k",
        "--tasks",
        "toy_amber",
        "--seeds",
        "1234",
        "--data",
        text_prefs,
        "--output",
        s.output,
        "--max-steps",
        "5",
        "--no-report",
        "--dry-run",
        capsys=capsys,
    )
    assert code == 0  # a dry run only shows the plan (the changed jobs are pending)
    code, _, err = cli(
        "sweep",
        "--methods",
        "dpo,jompo",
        "--data-sizes",
        "1k,2k",
        "--tasks",
        "toy_amber",
        "--seeds",
        "1234",
        "--data",
        text_prefs,
        "--output",
        s.output,
        "--max-steps",
        "5",
        "--no-report",
        capsys=capsys,
    )
    assert code == 2 and "max_steps: -1 -> 5" in err and "another --output" in err and "Traceback" not in err


def test_dry_run_runs_nothing(tmp_path, text_prefs, capsys, monkeypatch):
    monkeypatch.setattr(sweep.local, "execute_job", lambda *a, **k: pytest.fail("a dry run ran a job"))
    out_dir = tmp_path / "sw"
    code, out, _ = cli(
        "sweep",
        "--methods",
        "dpo,mpo,jompo",
        "--data-sizes",
        "1k,2k,5k",
        "--data",
        text_prefs,
        "--tasks",
        "toy_amber",
        "--seeds",
        "1234",
        "--output",
        out_dir,
        "--dry-run",
        capsys=capsys,
    )
    assert code == 0
    assert "19 jobs (9 train, 10 eval); 19 pending" in out
    assert "train-mpo-5k-b0.05-e2-s1234-crop" in out and "dry run: nothing was written or run" in out
    assert not out_dir.exists()


# --------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--methods", "jompoo"], "unknown method 'jompoo'; did you mean jompo"),
        (["--data-sizes", "1k,6k"], "6k (6000 records) is larger than the data set"),
        (["--data-sizes", "lots"], "'lots' is not a positive record count"),
        (["--tasks", "ambr"], "unknown task 'ambr'"),
        (["--rejected-images", "blur"], "unknown strategy 'blur'"),
        (["--preset", "tyo"], "did you mean toy"),
        (["--data", "/nonexistent/prefs.jsonl"], "/nonexistent/prefs.jsonl: preference data file not found"),
    ],
)
def test_bad_input_is_one_clear_error(args, expected, tmp_path, text_prefs, capsys):
    base = {
        "--methods": "dpo",
        "--data-sizes": "1k",
        "--data": str(text_prefs),
        "--tasks": "toy_amber",
        "--output": str(tmp_path / "sw"),
    }
    flags = dict(zip(args[::2], args[1::2]))
    argv = [x for kv in {**base, **flags}.items() for x in kv]
    code, _, err = cli("sweep", *argv, "--dry-run", capsys=capsys)
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "sw").exists()


def test_bad_sweep_yaml_names_file_and_key(tmp_path, text_prefs, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text("methods: [dpo]\ndata_size: [1k]\n")
    code, _, err = cli("sweep", "--config", config, "--data", text_prefs, "--output", tmp_path / "sw", capsys=capsys)
    assert code == 2 and f"{config}: unknown sweep setting 'data_size' (did you mean data_sizes" in err
    config.write_text("methods: [dpo]\ndata_sizes: [1k]\ntasks: [toy_amber]\ntrain: {lr: fast}\n")
    code, _, err = cli("sweep", "--config", config, "--data", text_prefs, "--output", tmp_path / "sw", capsys=capsys)
    assert code == 2 and "lr must be a number" in err
    config.write_text("methods: [dpo]\ndata_sizes: [1k]\ntasks: [toy_amber]\neval: {batch_sise: 4}\n")
    code, _, err = cli("sweep", "--config", config, "--data", text_prefs, "--output", tmp_path / "sw", capsys=capsys)
    assert code == 2 and "'batch_sise' is not an option of `harness run`; did you mean batch_size" in err
    config.write_text("methods: [dpo]\ndata_sizes: [1k]\ntasks: [toy_amber]\nslurm: {train: {gpu: 8}}\n")
    code, _, err = cli("sweep", "--config", config, "--data", text_prefs, "--output", tmp_path / "sw", capsys=capsys)
    assert code == 2 and "unknown resource 'gpu'; did you mean gpus" in err


def _fake_bin(folder: Path, name: str, script: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _slurm_args(tmp_path: Path, text_prefs: Path) -> list[object]:
    return [
        "sweep",
        "--methods",
        "dpo",
        "--data-sizes",
        "1k",
        "--data",
        text_prefs,
        "--tasks",
        "toy_amber",
        "--output",
        tmp_path / "sw",
        "--executor",
        "slurm",
        "--no-report",
    ]


def test_slurm_without_sbatch_is_a_clear_error(tmp_path, text_prefs, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code, _, err = cli(*_slurm_args(tmp_path, text_prefs), capsys=capsys)
    assert code == 2 and "Slurm is unreachable: no `sbatch` on PATH" in err and "Traceback" not in err


def test_slurm_without_submitit_says_how_to_install_it(tmp_path, text_prefs, capsys, monkeypatch):
    _fake_bin(tmp_path / "bin", "sbatch", "exit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    code, _, err = cli(*_slurm_args(tmp_path, text_prefs), capsys=capsys)
    assert code == 2 and "--executor slurm needs the package submitit" in err and "Traceback" not in err
    assert f"{sys.executable} -m pip install" in err and "[slurm]" in err


def test_submitit_missing_a_module_names_it_not_slurm(tmp_path, text_prefs, capsys, monkeypatch):
    """An old submitit imports pkg_resources (gone from setuptools >= 81) when it builds an executor: the error
    names the missing module and the install command, instead of blaming Slurm."""
    _fake_bin(tmp_path / "bin", "sbatch", "exit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    fake = types.ModuleType("submitit")
    fake.__version__ = "1.5.3"

    def executor(**kwargs):
        raise ModuleNotFoundError("No module named 'pkg_resources'", name="pkg_resources")

    fake.AutoExecutor = executor
    monkeypatch.setitem(sys.modules, "submitit", fake)
    code, _, err = cli(*_slurm_args(tmp_path, text_prefs), capsys=capsys)
    assert code == 2 and "Traceback" not in err and "Slurm is unreachable" not in err
    assert "needs the package pkg_resources" in err and "submitit 1.5.3" in err and "[slurm]" in err
    assert len(err.strip().splitlines()) == 1


def test_slurm_resources_map_to_submitit_parameters():
    section = {
        "partition": "gpu",
        "setup": ["module load cuda"],
        "extra": {"qos": "high"},
        "train": {"gpus": 8, "cpus": 64, "mem": "480G", "time": "1-00:00:00"},
        "eval": {"gpus": 1, "mem": 64, "time": 90},
    }
    assert sweep.slurm_parameters(section, "train") == {
        "slurm_partition": "gpu",
        "slurm_setup": ["module load cuda"],
        "gpus_per_node": 8,
        "cpus_per_task": 64,
        "mem_gb": 480.0,
        "timeout_min": 1440,
        "slurm_additional_parameters": {"qos": "high"},
    }
    assert sweep.slurm_parameters(section, "eval")["timeout_min"] == 90
    assert sweep.slurm_parameters({"time": "4:30:00", "mem": "512M"}, "sft") == {
        "timeout_min": 270,
        "mem_gb": 0.5,
        "slurm_additional_parameters": {},
    }


def test_slurm_submits_with_dependencies_through_submitit(tmp_path, text_prefs, capsys, monkeypatch):
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    _fake_bin(
        bin_dir,
        "sbatch",
        f"n=$(($(cat {tmp_path}/n 2>/dev/null || echo 100) + 1)); echo $n > {tmp_path}/n\n"
        f'cp "$1" {tmp_path}/submitted-$n.sh\necho "Submitted batch job $n"\n',
    )
    _fake_bin(bin_dir, "srun", "exit 0\n")
    _fake_bin(bin_dir, "squeue", f"cat {tmp_path}/queue 2>/dev/null; exit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "sweep.yaml"
    config.write_text("slurm:\n  partition: gpu\n  train: {gpus: 2, time: '2:00:00'}\n  eval: {gpus: 1}\n")
    code, out, err = cli(*_slurm_args(tmp_path, text_prefs), "--config", config, capsys=capsys)
    assert code == 0, err
    assert "submitted 3 job(s) to Slurm" in out and "Rerun the same command" in out
    scripts = {n: (tmp_path / f"submitted-{n}.sh").read_text() for n in (101, 102, 103)}
    assert "#SBATCH --job-name=eval-base" in scripts[101] and "dependency" not in scripts[101]
    assert "#SBATCH --job-name=train-dpo-1k-b0.05-e2-s42" in scripts[102]
    assert "#SBATCH --gpus-per-node=2" in scripts[102] and "#SBATCH --time=120" in scripts[102]
    assert "#SBATCH --partition=gpu" in scripts[102]
    assert "#SBATCH --job-name=eval-dpo-1k-b0.05-e2-s42" in scripts[103]
    assert "#SBATCH --dependency=afterok:102" in scripts[103] and "#SBATCH --kill-on-invalid-dep=yes" in scripts[103]
    index = RunIndex(tmp_path / "sw")
    assert {i: e["slurm_job_id"] for i, e in index.entries().items()} == {
        "eval-base": "101",
        "train-dpo-1k-b0.05-e2-s42": "102",
        "eval-dpo-1k-b0.05-e2-s42": "103",
    }

    # while they are queued, a rerun submits nothing again
    (tmp_path / "queue").write_text("101\n102\n103\n")
    code, _, err = cli(*_slurm_args(tmp_path, text_prefs), "--config", config, capsys=capsys)
    assert code == 0 and not (tmp_path / "submitted-104.sh").exists()

    # what each Slurm job runs: the job from its spec, recorded in the index
    for job_id in ("eval-base", "train-dpo-1k-b0.05-e2-s42", "eval-dpo-1k-b0.05-e2-s42"):
        sweep.run_slurm_job(str(tmp_path / "sw"), job_id, runner=FakeRunner())
    assert {e["state"] for e in index.entries().values()} == {"done"}
    (tmp_path / "queue").write_text("")
    code, _, err = cli(*_slurm_args(tmp_path, text_prefs), "--config", config, capsys=capsys)
    assert code == 0 and not (tmp_path / "submitted-104.sh").exists()


def test_sbatch_failure_is_a_clear_error(tmp_path, text_prefs, capsys, monkeypatch):
    pytest.importorskip("submitit")
    _fake_bin(tmp_path / "bin", "sbatch", "echo 'sbatch: error: Batch job submission failed' >&2; exit 1\n")
    _fake_bin(tmp_path / "bin", "srun", "exit 0\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    code, _, err = cli(*_slurm_args(tmp_path, text_prefs), capsys=capsys)
    assert code == 2 and "Slurm is unreachable: submitting eval-base failed" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------- end to end
def test_toy_pipeline_end_to_end_small(tmp_path, capsys):
    """The toy preset cut down (JoMPO, one data size, 1 training step, 4 samples): real subprocesses, a report."""
    out_dir = tmp_path / "toy"
    args = [
        "sweep",
        "--preset",
        "toy",
        "--methods",
        "jompo",
        "--data-sizes",
        "8",
        "--max-steps",
        "1",
        "--limit",
        "4",
        "--output",
        out_dir,
    ]
    t0 = time.time()
    code, out, err = cli(*args, capsys=capsys)
    assert code == 0, err
    print(f"small toy sweep: {time.time() - t0:.1f}s")
    index = json.loads((out_dir / "index.json").read_text())
    assert [(j["id"], j["state"]) for j in index["jobs"]] == [
        ("sft", "done"),
        ("eval-sft", "done"),
        ("train-jompo-8-b0.05-e2-s42", "done"),
        ("eval-jompo-8-b0.05-e2-s42", "done"),
    ]
    assert (out_dir / "models/jompo-8-b0.05-e2-s42/config.json").is_file()
    saved = json.loads((out_dir / "models/jompo-8-b0.05-e2-s42/train_config.json").read_text())
    assert saved["model"] == str(out_dir / "models/sft") and saved["max_steps"] == 1 and saved["method"] == "jompo"
    metrics = json.loads((out_dir / "runs/jompo-8-b0.05-e2-s42/toy_amber/metrics.json").read_text())
    assert metrics["counts"]["samples"] == 4
    assert json.loads((out_dir / "runs/jompo-8-b0.05-e2-s42/job.json").read_text())["data_size"] == 8
    report = (out_dir / "report/report.html").read_text()
    assert "jompo-8-b0.05-e2-s42" in report and (out_dir / "report/report.tex").is_file()

    # a rerun finds everything done and runs nothing
    started = {j["id"]: j["started"] for j in index["jobs"]}
    code, out, err = cli(*args, "--no-report", capsys=capsys)
    assert code == 0 and "4/4 jobs done (0 run now, 4 earlier)" in out
    again = json.loads((out_dir / "index.json").read_text())
    assert {j["id"]: j["started"] for j in again["jobs"]} == started


@pytest.mark.slow
def test_toy_preset_full(tmp_path, capsys):
    """`harness sweep --preset toy`: SFT, DPO/MPO/JoMPO at two data sizes, evaluations and the report."""
    t0 = time.time()
    code, _, err = cli("sweep", "--preset", "toy", "--output", tmp_path / "toy", capsys=capsys)
    seconds = time.time() - t0
    assert code == 0, err
    index = json.loads((tmp_path / "toy/index.json").read_text())
    assert len(index["jobs"]) == 14 and {j["state"] for j in index["jobs"]} == {"done"}
    html = (tmp_path / "toy/report/report.html").read_text()
    for method in METHODS:
        assert f"{method}-64-b0.05-e2-s42" in html
    assert seconds < 15 * 60
    print(f"toy preset: {seconds:.0f}s")


def test_a_config_layered_on_a_preset_changes_only_what_it_names(tmp_path):
    import argparse

    config = tmp_path / "more.yaml"
    config.write_text("train: {max_steps: 7}\nslurm: {eval: {gpus: 1}}\n")
    args = argparse.Namespace(preset="toy", config=str(config), output=str(tmp_path / "o"))
    s = sweep.settings_from_args(args)
    assert s.train["max_steps"] == 7 and s.train["lr"] == 1e-4 and s.train["batch_size"] == 4  # preset kept
    assert s.slurm == {"eval": {"gpus": 1}} and s.methods == list(METHODS)
    assert sweep.merge_settings({"a": {"b": 1, "c": {"d": 2}}}, {"a": {"c": {"e": 3}}, "f": 4}) == {
        "a": {"b": 1, "c": {"d": 2, "e": 3}},
        "f": 4,
    }


# --------------------------------------------------------------------------------------------------- the lab preset
def test_preset_lab_plans_tables_1_2_5_and_figures_3_4_at_three_seeds(tmp_path, capsys):
    code, out, err = cli("sweep", "--preset", "lab", "--output", tmp_path / "lab", "--dry-run", capsys=capsys)
    assert code == 0, err
    assert "121 jobs (60 train, 61 eval)" in out
    plan = build_plan(
        sweep.SweepSettings.from_mapping(
            {**sweep.read_sweep_config(sweep.preset_path("lab")), "output": str(tmp_path / "lab")}
        )
    )
    trains = [j for j in plan.jobs if j.kind == "train"]
    points = {
        (
            j.params["method"],
            j.params["data_size"],
            j.params["beta"],
            j.params["epochs"],
            j.params["seed"],
            j.params["rejected_image"],
        )
        for j in trains
    }
    assert len(points) == len(trains) == 60  # the point the grids share (jompo-300-b0.05-e2) is planned once
    for seed in (0, 1, 2):
        for size in (100, 200, 300):  # Table 1 / Figure 3
            assert {
                ("dpo", size, 0.05, 2.0, seed, None),
                ("mpo", size, 0.05, 2.0, seed, "crop"),
                ("jompo", size, 0.05, 2.0, seed, None),
            } <= points
        for ablation in (
            "jompo_no_ranking",
            "jompo_no_symmetry",
            "jompo_no_both",
            "jompo_no_ranking_text",
            "jompo_no_ranking_noimage",
        ):  # Table 2, at 300 pairs only
            assert (ablation, 300, 0.05, 2.0, seed, None) in points
            assert (ablation, 100, 0.05, 2.0, seed, None) not in points
        for strategy in ("crop", "black", "random", "contrast"):  # Figure 4
            assert ("mpo", 300, 0.05, 2.0, seed, strategy) in points
        for beta in (0.05, 0.1):  # Table 5
            for epochs in (2.0, 3.0):
                assert ("jompo", 300, beta, epochs, seed, None) in points
    assert plan.jobs[0].id == "eval-sft" and plan.jobs[0].job_json["method"] == "sft"  # the lab model is an SFT model
    assert plan.data.source == "data/lab/preferences.jsonl" and plan.data.n_records == 300
    assert plan.settings.parallel == 2


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"lab": {"colour": 1.5}}, "lab setting colour (prior strength) must be a number in [0, 1], got 1.5"),
        ({"lab": {"pair_types": ["presence", "texture"]}}, "unknown contrast type 'texture'"),
        (
            {"lab": {"n_pairs": 150}},
            "200 (200 records) is larger than the data set: the lab's contrast pairs (lab: n_pairs) holds 150 records",
        ),
        ({"lab": {"n_pairs": 10**6}}, "lab setting n_pairs=1000000 is above the generated pool"),
        ({"lab": {"colur": 0.5}}, "unknown lab setting 'colur'"),
        ({"grids": [{"method": ["dpo"]}]}, "grids[1]: unknown grid key 'method' (did you mean methods?)"),
        ({"grids": [{"methods": ["jompo_no_rank"]}]}, "unknown method 'jompo_no_rank'"),
        ({"grids": "dpo"}, "grids must be a non-empty list of grids"),
        ({"parallel": 0}, "parallel must be a positive integer"),
    ],
)
def test_bad_lab_sweep_settings_are_one_line_errors(values, expected, tmp_path, capsys):
    import yaml

    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump({"methods": ["dpo"], "data": "lab", "data_sizes": [100, 200], "tasks": ["lab_amber"], **values})
    )
    code, _, err = cli("sweep", "--config", config, "--output", tmp_path / "sw", "--dry-run", capsys=capsys)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_the_lab_pairs_of_a_sweep_are_written_and_subset(tmp_path):
    s = sweep.SweepSettings.from_mapping(
        {
            "methods": ["dpo"],
            "data": "lab",
            "data_sizes": ["20", "40"],
            "lab": {"n_pairs": 40},
            "tasks": ["lab_amber"],
            "seeds": [0],
            "output": str(tmp_path / "sw"),
            "no_report": True,
        }
    )
    plan = build_plan(s)
    sweep.prepare(plan)
    from trainers.data import read_preferences

    pairs = read_preferences(plan.output / "data/lab/preferences.jsonl")
    assert len(pairs) == 40 and all(p.image_w and p.image_l and p.image_w != p.image_l for p in pairs)
    small = [e.id for e in read_preferences(plan.output / plan.data.subsets[20])]
    big = [e.id for e in read_preferences(plan.output / plan.data.subsets[40])]
    assert len(small) == 20 and small == big[:20]
    assert json.loads((plan.output / "data/lab/lab_config.json").read_text())["n_pairs"] == 40


# --------------------------------------------------------------------------------------------------- parallel
class TimedRunner(FakeRunner):
    """A FakeRunner that takes ``seconds`` per job and records when each job ran."""

    def __init__(self, seconds: float = 0.3, **kw):
        super().__init__(**kw)
        self.seconds = seconds
        self.spans: dict[str, tuple[float, float]] = {}

    def __call__(self, job, output, log_path):
        t0 = time.monotonic()
        time.sleep(self.seconds)
        try:
            super().__call__(job, output, log_path)
        finally:
            self.spans[job.id] = (t0, time.monotonic())


def test_parallel_jobs_overlap_respect_dependencies_and_end_like_a_serial_sweep(tmp_path, text_prefs):
    serial, par = TimedRunner(0.05), TimedRunner(0.3)
    s1 = settings(tmp_path / "serial", text_prefs, methods=["dpo", "jompo"], data_sizes=["1k"])
    s2 = settings(tmp_path / "par", text_prefs, methods=["dpo", "jompo"], data_sizes=["1k"], parallel=3)
    r1 = run_sweep(s1, runner=serial, echo=lambda _: None)
    r2 = run_sweep(s2, runner=par, echo=lambda _: None)
    assert r1.ok and r2.ok and sorted(r1.ran) == sorted(r2.ran) and len(r2.ran) == 5
    spans = par.spans
    overlapping = [
        (a, b) for a in spans for b in spans if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]
    ]
    assert overlapping  # jobs ran side by side
    assert max(len([j for j in spans if spans[j][0] <= t < spans[j][1]]) for t, _ in spans.values()) <= 3
    for job in build_plan(s2).jobs:
        for dep in job.deps:
            assert spans[dep][1] <= spans[job.id][0]  # a job starts after the jobs it needs
    index = RunIndex(tmp_path / "par").entries()
    assert {e["state"] for e in index.values()} == {"done"}


def test_a_failed_job_in_a_parallel_sweep_blocks_only_its_dependents(tmp_path, text_prefs):
    s = settings(tmp_path / "sw", text_prefs, methods=["dpo", "jompo"], data_sizes=["1k"], parallel=2)
    runner = TimedRunner(0.1, fail={"train-dpo-1k-b0.05-e2-s1234"})
    result = run_sweep(s, runner=runner, echo=lambda _: None)
    assert result.failed == ["train-dpo-1k-b0.05-e2-s1234"] and result.blocked == ["eval-dpo-1k-b0.05-e2-s1234"]
    assert sorted(result.ran) == ["eval-base", "eval-jompo-1k-b0.05-e2-s1234", "train-jompo-1k-b0.05-e2-s1234"]
    assert "eval-dpo-1k-b0.05-e2-s1234" not in runner.calls
