"""`ezpz runs [DIR]`: the runs of a folder in one table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ezpz
from ezpz_core import cli
from ezpz_core.runs import higher_is_better


def loaders() -> tuple[DataLoader, DataLoader]:
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(x, x[:, :3].argmax(dim=1))
    return DataLoader(data, batch_size=8), DataLoader(data, batch_size=32)


class Crash:
    @ezpz.hookimpl
    def on_step_end(self, step: int) -> None:
        if step == 9:
            raise RuntimeError("simulated crash")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two finished runs (one nested a level deeper, as a sweep would be) and a crashed one."""
    root = tmp_path_factory.mktemp("runs")
    for name, lr, steps in (("mlp-a", 1e-2, 16), ("sweep/mlp-b", 5e-2, 24)):
        torch.manual_seed(0)
        config = ezpz.TrainConfig(max_steps=steps, log_every=4, eval_every=8, lr=lr,
                                  out_dir=str(root / name))
        ezpz.Trainer(nn.Linear(8, 3), config).fit(*loaders())
    config = ezpz.TrainConfig(max_steps=40, log_every=4, eval_every=4,
                              out_dir=str(root / "crashed"))
    with pytest.raises(RuntimeError):
        ezpz.Trainer(nn.Linear(8, 3), config, plugins=[Crash()]).fit(*loaders())
    return root


def test_table_lists_each_run_with_its_numbers(runs, capsys):
    assert cli.main(["runs", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "model", "steps", "final", "loss", "best", "eval", "time",
                                "status"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["crashed", "mlp-a", "sweep/mlp-b"]
    for name in ("mlp-a", "sweep/mlp-b"):
        summary = json.loads((runs / name / "summary.json").read_text())
        cells = rows[name].split()
        assert cells[1:3] == ["Linear", str(summary["steps"])]
        assert cells[3] == f"{summary['final']['train/loss']:.4g}"
        assert f"loss {summary['best']['eval/loss']['value']:.4g}" in rows[name]
        assert f"accuracy {summary['best']['eval/accuracy']['value']:.4g}" in rows[name]
        assert cells[-1] == "finished" and cells[-2].endswith("s")
    crashed = rows["crashed"].split()
    assert crashed[1:3] == ["Linear", "8"] and crashed[-1] == "incomplete"


def test_json_output_agrees_with_the_run_files(runs, capsys):
    assert cli.main(["runs", str(runs), "--json"]) == 0
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    summary = json.loads((runs / "mlp-a" / "summary.json").read_text())
    assert rows["mlp-a"]["final_loss"] == summary["final"]["train/loss"]
    assert rows["mlp-a"]["best_eval"]["eval/accuracy"] == \
        summary["best"]["eval/accuracy"]["value"]
    assert rows["mlp-a"]["elapsed_s"] == summary["elapsed_s"]
    records = [json.loads(line) for line in
               (runs / "crashed" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["metrics"]["eval/loss"] for r in records if "eval/loss" in r["metrics"]]
    assert rows["crashed"]["best_eval"]["eval/loss"] == min(evals)
    assert rows["crashed"]["status"] == "incomplete" and rows["crashed"]["steps"] == 8


def test_default_folder_empty_folder_and_missing_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["runs"]) == 2
    assert capsys.readouterr().err.strip() == (
        "ezpz: error: no such directory: runs; pass the folder your runs write into")
    (tmp_path / "runs").mkdir()
    assert cli.main(["runs"]) == 0
    assert capsys.readouterr().out.startswith("no runs in runs")


def test_listing_runs_does_not_import_torch(runs, tmp_path):
    code = (f"import sys; from ezpz_core import cli; cli.main(['runs', {str(runs)!r}]); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr


@pytest.mark.parametrize(("name", "higher"), [
    ("eval/loss", False), ("eval/accuracy", True), ("eval/top5_acc", True),
    ("eval/perplexity", False), ("eval/f1", True), ("train/loss", False),
])
def test_which_way_is_better(name, higher):
    assert higher_is_better(name) is higher
