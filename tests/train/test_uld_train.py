"""``guard-train uld`` end to end on a tiny policy, and its data handling."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from guard.cli_train import main as train_main
from guard.errors import ConfigError
from guard.interventions.uld import build_intervention
from guard.policy import load_policy
from guard.train.uld import UldConfig, _split, collect_data, load_source


def tofu_policy(path: Path, data_dir: Path, *, forget_rows: str = "0:4", keep: bool = True, action: str = "uld") -> Path:
    tofu = data_dir / "tofu"
    target = {"id": "tofu-basil", "names": ["Basil Mahfouz Al-Kuwaiti"], "action": action,
              "forget_data": [{"path": str(tofu / "forget01_perturbed.json"), "format": "tofu_qa", "rows": forget_rows}],
              "params": {"artifact": str(path.parent / "artifact")}}
    if keep:
        target["keep_data"] = [{"path": str(tofu / "retain_perturbed.json"), "format": "tofu_qa", "rows": "40:46"}]
    path.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "targets": [target]}))
    return path


def test_data_paraphrases_and_item_split(tmp_path: Path, data_dir: Path):
    policy = load_policy(tofu_policy(tmp_path / "p.yaml", data_dir, forget_rows="0:8"))
    items = load_source(policy.targets[0].forget_data[0], "targets.0.forget_data.0")
    assert len(items) == 8 and all(len(it.variants) == 2 for it in items)  # paraphrased question, paraphrased answer
    assert items[0].variants[0][1] == items[0].answer and items[0].variants[1][0] == items[0].question
    data = collect_data(policy, UldConfig(val_fraction=0.25))
    assert len(data.forget_val) == 2 and len(data.forget_train) == 6
    held = {it.question for it in data.forget_val}
    assert not held & {it.question for it in data.forget_train}  # a question and its paraphrases stay together
    assert data.sources["n_forget_examples"] == 6 * 3
    assert len(data.retain_val) == 2 and len(data.retain_train) == 4
    # tiny sets are not split (nothing would be left to train on)
    assert _split(list(range(3)), 0.5, random.Random(0))[1] == []


def test_data_errors(tmp_path: Path, data_dir: Path):
    with pytest.raises(ConfigError, match="needs retain data") as err:
        collect_data(load_policy(tofu_policy(tmp_path / "a.yaml", data_dir, keep=False)), UldConfig())
    assert err.value.param == "keep_data"
    with pytest.raises(ConfigError, match="not in the policy"):
        collect_data(load_policy(tofu_policy(tmp_path / "b.yaml", data_dir)), UldConfig(), targets=["nobody"])
    with pytest.raises(ConfigError, match="select nothing"):
        collect_data(load_policy(tofu_policy(tmp_path / "c.yaml", data_dir, forget_rows="100:200")), UldConfig())


def test_cli_bad_arguments_are_config_errors(tmp_path: Path, data_dir: Path, capsys):
    policy = tofu_policy(tmp_path / "p.yaml", data_dir)
    assert train_main(["uld", "--policy", str(policy), "--out", str(tmp_path / "o"), "--batch-size", "1"]) == 2
    assert "--batch-size must be >= 2" in capsys.readouterr().err
    assert train_main(["uld", "--policy", str(policy), "--out", str(tmp_path / "o"), "--layers", "99"]) == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
async def test_guard_train_uld_end_to_end(tmp_path: Path, data_dir: Path, local_engine, capsys):
    policy = tofu_policy(tmp_path / "p.yaml", data_dir, forget_rows="0:4")
    out = tmp_path / "artifact"
    code = train_main(["uld", "--policy", str(policy), "--out", str(out), "--layers", "1", "--epochs", "2",
                       "--batch-size", "4", "--no-paraphrases", "--val-fraction", "0.25", "--max-length", "96",
                       "--lr", "3e-3", "--alpha", "0.7", "--top-k", "12", "--no-progress"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert printed["layers"] == 1 == manifest["assistant"]["layers"] and manifest["assistant"]["base_layers"] == 30
    assert manifest["kind"] == "uld-assistant"
    assert manifest["decoding"]["alpha"] == 0.7 and manifest["decoding"]["top_k"] == 12
    assert manifest["base_model"]["name"] == "smollm2-135m-instruct" and len(manifest["base_model"]["embedding_sha256"]) == 64
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "adapter" / "adapter_config.json").exists()
    metrics = manifest["metrics"]
    history = metrics["history"]
    assert 1 <= len(history) <= 2 and all("val_total" in h and "train_forget_ce" in h for h in history)
    # the kept epoch is the one with the best held-out signal
    assert metrics["best_epoch"] == min(history, key=lambda h: h["val_total"])["epoch"]
    assert metrics["best_val"] < metrics["initial_val"]["total"]  # it learned something
    assert manifest["data"]["n_forget"] == 4 and manifest["data"]["n_forget_val"] == 1
    # the artifact serves: the policy loads it for the served (default) model
    uld = build_intervention(load_policy(policy), local_engine)
    _, settings = uld._for(load_policy(policy).targets[0])
    assert (settings.alpha, settings.top_k) == (0.7, 12)


def test_shared_keep_data_is_read_once(tmp_path: Path, data_dir: Path):
    """Two targets with the same keep_data: one copy of each row, so no held-out retain item is also trained on."""
    path = tofu_policy(tmp_path / "p.yaml", data_dir, forget_rows="0:8")
    raw = yaml.safe_load(path.read_text())
    second = dict(raw["targets"][0], id="tofu-basil-2", forget_data=[dict(raw["targets"][0]["forget_data"][0], rows="8:16")])
    raw["targets"].append(second)
    path.write_text(yaml.safe_dump(raw))
    data = collect_data(load_policy(path), UldConfig(val_fraction=0.5))
    rows = [(it.source, it.row) for it in data.retain_train + data.retain_val]
    assert sorted(r for _, r in rows) == list(range(40, 46))  # 6 rows, not 12
    assert not {(it.source, it.row) for it in data.retain_val} & {(it.source, it.row) for it in data.retain_train}
