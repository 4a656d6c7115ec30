"""The evaluation API: ``evaluate(EvalConfig(...))`` on the toy benchmark with a tiny LLaVA, and the run records."""

import json

from harness.evaluate import EvalConfig, evaluate
from harness.records import JobInfo, Manifest, RunRecord


def test_evaluate_returns_the_record_of_the_files_it_wrote(tmp_path, tiny_llava_path, capsys):
    config = EvalConfig(
        model=tiny_llava_path,
        tasks=["toy_amber"],
        engine="hf",
        limit=3,
        max_new_tokens=4,
        output_path=tmp_path / "runs",
        run_name="api",
        progress=False,
        argv=["harness", "run"],
    )
    record = evaluate(config)
    assert capsys.readouterr().out == ""  # the API prints nothing; `harness run` prints the summary

    assert isinstance(record, RunRecord)
    assert (record.run_name, record.run_dir, record.engine) == ("api", tmp_path / "runs" / "api", "hf")
    assert [t.task for t in record.tasks] == ["toy_amber"]
    task = record.task("toy_amber")
    assert task.dir == record.run_dir / "toy_amber"
    assert (task.n_samples, task.n_generated, task.n_resumed, task.n_failed) == (3, 3, 0, 0)

    metrics = json.loads(task.metrics_path.read_text())
    assert task.headline == metrics["headline"] and record.headline == {"toy_amber": metrics["headline"]}
    assert task.counts == metrics["counts"]
    assert len(task.predictions_path.read_text().splitlines()) == 3
    assert len(task.scores_path.read_text().splitlines()) > 0
    runs = [json.loads(line) for line in task.runs_path.read_text().splitlines()]
    assert (runs[-1]["generated"], runs[-1]["resumed"], runs[-1]["limit"]) == (3, 0, 3)

    manifest = Manifest.from_dict(json.loads(task.manifest_path.read_text()))
    assert manifest.task_name == "toy_amber" and manifest.engine_name == "hf"
    assert manifest.model_name == record.model and manifest.max_new_tokens_override == 4
    assert manifest.command == ["harness", "run"] and manifest.fingerprint and manifest.settings
    assert manifest.to_dict() == json.loads(task.manifest_path.read_text())  # nothing lost in reading
    assert RunRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record

    again = evaluate(config)  # a rerun resumes
    assert (again.task("toy_amber").n_generated, again.task("toy_amber").n_resumed) == (0, 3)
    assert again.task("toy_amber").headline == task.headline


def test_job_info_reads_what_the_sweep_writes_and_tolerates_older_files():
    job = JobInfo(
        method="jompo", data_size=5000, beta=0.05, epochs=2.0, seed=1, model="m", model_size="7B", name="jompo-5k"
    )
    assert JobInfo.from_dict(job.to_dict()) == job
    assert set(job.to_dict()) == set(JobInfo.keys())
    warnings: list[str] = []
    old = JobInfo.from_dict(
        {"data_size": "5k", "beta": "0.1", "seed": "7", "model_size": "13b", "epochs": "x", "unknown": 1},
        "old/job.json",
        warnings,
    )
    assert old.given() == {"data_size": 5000, "beta": 0.1, "seed": 7, "model_size": "13B"}
    assert warnings == ["old/job.json: epochs 'x' is not usable; ignored"]
    assert Manifest.from_dict({}).task is None and Manifest.from_dict({"task": "x"}).task_name is None
