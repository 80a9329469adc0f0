"""Pushing outputs: the real clients (huggingface_hub, hf_xet, transformers, peft) against a loopback Hub.

The loopback server (tests/hub_server.py) answers 501 to any route it does not know; every test
fails on such a request, so a client upgrade that calls something new is noticed here.
An opt-in test pushes to the real Hub: HFSSL_LIVE_HUB=1 HF_TOKEN=hf_... pytest tests/test_hub.py -k live
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
import uuid
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
from huggingface_hub import HfApi

import hfssl.hub
from conftest import SENTINEL, TINY_MLM, load_recipe
from hfssl.cli import main as hfssl_cli
from hfssl.hub import PushError, push_output
from hub_server import LoopbackHub
from recipe_outputs import KINDS, check_card, check_printed_prediction, output_files, python_blocks, tiny_output

# Loads every pushed repo in a fresh interpreter, so HF_ENDPOINT and HF_HUB_DISABLE_XET are read at import as
# users set them; compares it with the local output directory; then loads the repo's card with ModelCard.load
# and runs its "how to use" code as written. Prints one JSON line: repo -> tensors compared, card, what it printed.
RELOAD = r"""
import contextlib, functools, io, json, re, sys
from pathlib import Path
import torch, transformers
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

def model_class(local, subfolder=""):
    config = AutoConfig.from_pretrained(local, subfolder=subfolder, trust_remote_code=True)
    if getattr(config, "auto_map", None):  # custom code shipped in the repo (hfssl's mean-pooling text classifier)
        return functools.partial(transformers.AutoModelForSequenceClassification.from_pretrained, trust_remote_code=True)
    return getattr(transformers, config.architectures[0]).from_pretrained

def same_weights(remote, here):
    a, b = remote.state_dict(), here.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ"
    return len(a)

report = {}
for repo_id, local in json.loads(sys.argv[1]):
    tensors = 0
    load = model_class(local)  # a LoRA output: the base beside the adapter, which transformers applies on loading
    tensors += same_weights(load(repo_id), load(local))
    if Path(local, "merged").is_dir():
        load = model_class(local, "merged")
        tensors += same_weights(load(repo_id, subfolder="merged"), load(local, subfolder="merged"))
    if Path(local, "tokenizer_config.json").exists():
        text = "Return the [MASK] of the list, or None when the iterator is exhausted."
        remote_tok, local_tok = AutoTokenizer.from_pretrained(repo_id), AutoTokenizer.from_pretrained(local)
        assert remote_tok(text)["input_ids"] == local_tok(text)["input_ids"] and remote_tok.get_vocab() == local_tok.get_vocab()
    else:
        assert AutoImageProcessor.from_pretrained(repo_id).to_dict() == AutoImageProcessor.from_pretrained(local).to_dict()
    card = ModelCard.load(repo_id)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in re.findall(r"```python\n(.*?)```", card.content, re.S):
            exec(compile(block, f"{repo_id}/README.md", "exec"), {})
    report[repo_id] = {"tensors": tensors, "card": card.data.to_dict(), "printed": printed.getvalue()}
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def mlm_output(tmp_path_factory) -> Path:
    """A finished tiny MLM output (this module's own copy), with a checkpoint-* folder that must not be pushed."""
    out = tmp_path_factory.mktemp("mlm") / "out"
    shutil.copytree(tiny_output("mlm"), out)
    assert list(out.glob("checkpoint-*"))
    return out


@pytest.fixture(params=["xet", "lfs"])
def transfer(request, monkeypatch) -> str:
    """Upload through Xet (the default) or, with HF_HUB_DISABLE_XET=1, through the LFS batch API."""
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", request.param == "lfs")
    return request.param


def pushed_files(out: Path) -> dict[str, bytes]:
    """What a push of `out` must upload: everything but checkpoints and the staging folder."""
    return {name: (out / name).read_bytes() for name in sorted(output_files(out))}


def assert_no_token_in(*texts: str | bytes, dirs: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert (SENTINEL.encode() if isinstance(text, bytes) else SENTINEL) not in text
    for d in dirs:
        for p in d.rglob("*"):
            assert not p.is_file() or SENTINEL.encode() not in p.read_bytes(), p


def reload_in_subprocess(hub: LoopbackHub, pairs: list[tuple[str, Path]], home: Path, transfer: str) -> tuple[dict, str]:
    """Run RELOAD on (repo_id, local output) pairs; return its report and everything it printed."""
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_XET": "1" if transfer == "lfs" else "0",
        "HF_TOKEN": SENTINEL,
    }
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, json.dumps([(r, str(p)) for r, p in pairs])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    return report, proc.stdout + proc.stderr


def main_weights(out: Path) -> str:
    return "adapter_model.safetensors" if (out / "adapter_config.json").exists() else "model.safetensors"


@pytest.mark.slow
def test_every_kind_pushes_and_reloads_identically_and_its_card_runs(hub, transfer, monkeypatch, tmp_path, caplog, capfd):
    """mlm, MAE, full and LoRA classifiers (text and image): the repo is the directory, loads to the same weights,
    and its card is complete, reports the final metrics and holds code that runs on the repo alone."""
    monkeypatch.setenv("HF_TOKEN", SENTINEL)  # the default token source
    pushed: dict[str, Path] = {}
    for kind in KINDS:
        out = tmp_path / "outputs" / kind  # a copy: pushing re-renders its card for the repo
        shutil.copytree(tiny_output(kind), out)
        before = pushed_files(out)
        repo_id = f"me/tiny-{kind}"
        assert push_output(out, repo_id, endpoint=hub.endpoint) == f"{hub.endpoint}/{repo_id}"
        remote = hub.files(repo_id)
        assert remote.pop(".gitattributes") and remote == pushed_files(out)  # exactly the output directory, byte for byte
        changed = {"README.md", "hfssl.json"} | ({"adapter_config.json"} if kind.endswith("lora") else set())
        assert {name for name in before if before[name] != remote[name]} == changed and set(before) == set(remote)
        assert json.loads(remote["hfssl.json"])["pushed_to"] == {"repo_id": repo_id, "revision": None}
        card = remote["README.md"].decode()  # re-rendered for the repo: its code loads from the repo
        check_card(card, set(remote), json.loads(remote["hfssl.json"]))
        assert all(f'"{repo_id}"' in block for block in python_blocks(card)) and str(out) not in card
        weights = hub.repos[repo_id].resolve("main").files[main_weights(out)]
        assert weights.sha256 and (weights.xet_hash is not None) == (transfer == "xet")
        pushed[repo_id] = out
    upload_route = "/xet-write-token/main" if transfer == "xet" else ".git/info/lfs/objects/batch"
    assert any(r.endswith(upload_route) for r in hub.requests)
    assert set(hub.authorizations) == {f"Bearer {SENTINEL}"}  # HF_TOKEN reached the Hub, and nothing else did

    # Move the outputs away: the card's code must load from the repo alone (a LoRA adapter_config.json named its own
    # output directory by its absolute path until the push named the repo instead).
    (tmp_path / "moved").mkdir()
    moved = {repo_id: out.rename(tmp_path / "moved" / out.name) for repo_id, out in pushed.items()}
    report, reload_log = reload_in_subprocess(hub, list(moved.items()), tmp_path / "hf-home", transfer)
    assert any("/xet-read-token/" in r for r in hub.requests) == (transfer == "xet")
    for repo_id, out in moved.items():
        result = report[repo_id]
        assert result["tensors"] > 0 and result["card"]["model-index"][0]["name"] == repo_id
        record = json.loads((out / "hfssl.json").read_text())
        if record["recipe"] == "mlm":
            assert "'token_str'" in result["printed"]
        elif record["recipe"] == "mim":
            assert "torch.Size([1, 32])" in result["printed"]
        else:
            check_printed_prediction(out.name, result["printed"])
    out, err = capfd.readouterr()
    assert_no_token_in(
        reload_log,
        caplog.text,
        out,
        err,
        *(f for repo in moved for f in hub.files(repo).values()),
        dirs=(tmp_path, Path(os.environ["HF_HOME"])),
    )  # tmp_path: the outputs, Hub storage, reload cache


def test_recipe_push_to_hub_publishes_the_finished_output_once(hub, tmp_path, caplog, capfd):
    """--push_to_hub with every push option: the finished directory (no checkpoints), its card naming the repo."""
    out = tmp_path / "mlm"
    load_recipe("mlm").main(
        TINY_MLM
        + [
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--eval_steps",
            "2",
            "--save_steps",
            "2",
            "--max_corpus_documents",
            "300",
            "--disable_tqdm",
            "true",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "me/from-recipe",
            "--hub_private_repo",
            "true",
            "--hub_revision",
            "v1",
            "--hub_endpoint",
            hub.endpoint,
            "--hub_token",
            SENTINEL,
        ]
    )
    assert list(out.glob("checkpoint-*"))  # kept locally for resuming, not pushed
    remote = hub.files("me/from-recipe", "v1")
    assert remote.pop(".gitattributes") and remote == pushed_files(out)
    assert hub.repos["me/from-recipe"].private and hub.requests.count("POST /api/models/me/from-recipe/commit/v1") == 1
    card = remote["README.md"].decode()
    assert all('"me/from-recipe"' in block for block in python_blocks(card))
    check_card(card, set(remote), json.loads(remote["hfssl.json"]))
    printed, err = capfd.readouterr()
    assert_no_token_in(caplog.text, printed, err, dirs=(out,))
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("Pushed ")] == [
        f"Pushed {out} to {hub.endpoint}/me/from-recipe"
    ]  # said once


def test_a_second_push_mirrors_the_directory_and_branches_stay_apart(mlm_output, hub, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(mlm_output, out)
    push_output(out, "me/mirror", endpoint=hub.endpoint, token=SENTINEL)
    (out / "loss_curve.png").unlink()
    (out / "all_results.json").write_text("{}\n")
    push_output(out, "me/mirror", endpoint=hub.endpoint, token=SENTINEL, revision="v2", commit_message="Second run")
    repo = hub.repos["me/mirror"]
    assert "loss_curve.png" in repo.resolve("main").files  # main keeps the first push
    v2 = hub.files("me/mirror", "v2")
    assert "loss_curve.png" not in v2 and v2["all_results.json"] == b"{}\n" and ".gitattributes" in v2
    assert repo.resolve("v2").title == "Second run"
    HfApi(endpoint=hub.endpoint, token=SENTINEL).delete_repo("me/mirror")
    assert "me/mirror" not in hub.repos


@pytest.mark.slow
def test_transient_server_errors_are_retried(mlm_output, hub, caplog):
    hub.fail(r"^POST /api/repos/create$", 503, times=2)  # not retried by huggingface_hub: hfssl retries the push
    hub.fail(r"^POST /api/models/.*/commit/", 503, times=1)  # retried inside huggingface_hub
    push_output(mlm_output, "me/flaky", endpoint=hub.endpoint, token=SENTINEL)
    assert hub.requests.count("POST /api/repos/create") == 3
    assert hub.requests.count("POST /api/models/me/flaky/commit/main") == 2
    assert hub.files("me/flaky")["model.safetensors"] == (mlm_output / "model.safetensors").read_bytes()
    assert "retrying" in caplog.text.lower()


def test_failed_push_explains_the_retry_and_never_shows_the_token(mlm_output, hub, caplog, capfd):
    before = pushed_files(mlm_output)
    hub.fail(r"^POST /api/repos/create$", 500, message=f"upstream rejected Authorization: Bearer {SENTINEL}")
    with pytest.raises(PushError) as info:
        push_output(mlm_output, "me/down", endpoint=hub.endpoint, token=SENTINEL)
    message = str(info.value)
    assert f"hfssl push {mlm_output} --repo-id me/down --endpoint {hub.endpoint}" in message
    assert "500" in message and "<HF_TOKEN>" in message  # the server's words, with the token blanked out
    assert hub.requests.count("POST /api/repos/create") == 1 + len(hfssl.hub.RETRY_WAITS)
    assert info.value.__cause__ is None and info.value.__context__ is None  # the raw error (and its headers) is dropped
    out, err = capfd.readouterr()
    assert_no_token_in(message, "".join(traceback.format_exception(info.value)), caplog.text, out, err, dirs=(mlm_output,))
    assert pushed_files(mlm_output) == before


def test_client_errors_fail_at_once(mlm_output, hub):
    with pytest.raises(PushError, match="401"):
        push_output(mlm_output, "me/denied", endpoint=hub.endpoint, token="hf_wrong")
    assert hub.requests.count("POST /api/repos/create") == 1  # no retry: a wrong token will not get better


def test_missing_token_is_reported_before_any_request(mlm_output, hub):
    with pytest.raises(PushError, match="No Hub token: set HF_TOKEN or run `hf auth login`"):
        push_output(mlm_output, "me/anonymous", endpoint=hub.endpoint)
    assert hub.requests == []


def test_unfinished_output_is_refused_before_any_request(hub, tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(ValueError, match="no hfssl.json"):
        push_output(tmp_path / "half", "me/half", endpoint=hub.endpoint, token=SENTINEL)
    assert hub.requests == []


def test_cli_push(mlm_output, hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    hfssl_cli(["push", str(mlm_output), "--repo-id", "me/from-cli", "--private", "--endpoint", hub.endpoint])
    assert f"{hub.endpoint}/me/from-cli" in capsys.readouterr().out
    assert hub.repos["me/from-cli"].private
    with pytest.raises(SystemExit, match="hfssl push: .*no hfssl.json"):
        hfssl_cli(["push", str(next(mlm_output.glob("checkpoint-*"))), "--repo-id", "me/from-cli", "--endpoint", hub.endpoint])
    assert_no_token_in(capsys.readouterr().out)


@pytest.mark.skipif(
    not (os.environ.get("HFSSL_LIVE_HUB") == "1" and os.environ.get("HF_TOKEN")),
    reason="live Hub test: set HFSSL_LIVE_HUB=1 and HF_TOKEN to run it",
)
def test_live_hub_push_reload_delete(mlm_output, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    api = HfApi(endpoint=hf_constants._HF_DEFAULT_ENDPOINT)
    repo_id = f"{api.whoami()['name']}/hfssl-live-test-{uuid.uuid4().hex[:8]}"
    try:
        url = push_output(mlm_output, repo_id, private=True, endpoint=api.endpoint)
        assert repo_id in url
        env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": api.endpoint}
        proc = subprocess.run(
            [sys.executable, "-c", RELOAD, json.dumps([(repo_id, str(mlm_output))])],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert os.environ["HF_TOKEN"] not in proc.stdout + proc.stderr
    finally:
        api.delete_repo(repo_id, missing_ok=True)


def test_a_pushed_output_is_named_by_its_repo_in_the_lineage_of_models_trained_from_it(hub, tmp_path):
    from hfssl.outputs import parent_lineage

    out = tmp_path / "out"
    shutil.copytree(tiny_output("mlm"), out)  # never pushed (the module's mlm_output is, by other tests)
    assert "repo_id" not in parent_lineage(str(out))  # not pushed: a local start, named by its path
    push_output(out, "me/parent", endpoint=hub.endpoint, token=SENTINEL)
    assert parent_lineage(str(out))["repo_id"] == "me/parent"  # a card of a model trained from it names me/parent


@pytest.mark.parametrize("push", [True, False])
def test_the_token_leaves_the_run_arguments_whether_or_not_it_pushes(tmp_path, push):
    from hfssl.args import RunArguments
    from hfssl.hub import take_push_request

    run_args = RunArguments(output_dir=str(tmp_path / "o"), push_to_hub=push, hub_token=SENTINEL, report_to="none")
    request = take_push_request(run_args)
    assert run_args.hub_token is None and SENTINEL not in repr(run_args.to_dict())
    assert (request.token == SENTINEL and run_args.push_to_hub is False) if push else request is None
