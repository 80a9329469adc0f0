"""Publishing a finished output directory to the Hugging Face Hub, retried, with the token kept secret.

The repo ends up holding exactly the output directory (checkpoints and the staging folder left out),
so `from_pretrained(repo_id)` loads what `from_pretrained(output_dir)` loads. The files a push may
change, first and locally, are an unedited model card, re-rendered so that its code loads from the
repo, a LoRA adapter's `adapter_config.json`, whose base (the output itself) is then named by
the repo id instead of a local path, and `hfssl.json`, which records the repo (`pushed_to`) so that
models trained from this output name it as their base_model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx  # the HTTP library huggingface_hub itself uses

from hfssl.cards import CARD_FILE, refresh_card
from hfssl.errors import PushError
from hfssl.outputs import RECORD_FILE, STAGING_DIR, write_json

__all__ = ["PushError", "PushRequest", "point_adapter_at_repo", "publish", "push_output", "take_push_request"]

logger = logging.getLogger(__name__)

# Seconds to wait before each new attempt after a transient failure. huggingface_hub already retries
# most single requests (preupload, LFS, commit) on 5xx; creating the repo, validating the card and a
# dropped connection are not retried there, and a whole-push retry is cheap: unchanged files are skipped.
RETRY_WAITS = (2.0, 10.0, 30.0)
LEFT_OUT = ["checkpoint-*/", f"{STAGING_DIR}/"]  # resumable training state, and a save in progress


def push_output(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create `repo_id` if needed and make it (or branch `revision`) mirror `output_dir`; return the repo URL.

    The token is `token`, else `HF_TOKEN`, else the huggingface_hub login. Local files are never modified,
    except README.md when hfssl rendered it and nobody edited it since: it is re-rendered for the repo.
    """
    out = Path(output_dir)
    if not (out / RECORD_FILE).is_file():
        raise ValueError(
            f"{out} has no {RECORD_FILE}, so it is not a finished hfssl output (still training, or interrupted?). "
            "Push a directory that a recipe finished writing."
        )
    retry = _retry_hint(out, repo_id, revision, endpoint)
    secret = token or get_token()
    if not secret:
        raise PushError(f"No Hub token: set HF_TOKEN or run `hf auth login`, then {retry}.")
    api = HfApi(endpoint=endpoint, token=secret)
    attempt = 0
    while True:
        try:
            return _push(api, out, repo_id, private, revision, commit_message or f"Upload {out.name} with hfssl")
        except Exception as err:  # reported below, outside this block, so the original (with headers) is not chained
            reason, transient = _scrub(f"{type(err).__name__}: {err}", secret), _is_transient(err)
        if not transient or attempt == len(RETRY_WAITS):
            raise PushError(f"Pushing {out} to {repo_id} failed: {reason}\nThe local output is intact; {retry}.")
        logger.warning("Push to %s failed (%s); retrying in %.0f s.", repo_id, reason.splitlines()[0], RETRY_WAITS[attempt])
        time.sleep(RETRY_WAITS[attempt])
        attempt += 1


def _push(api: HfApi, out: Path, repo_id: str, private: bool | None, revision: str | None, message: str) -> str:
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = url.repo_id  # a bare name lands in the token owner's namespace
    if refresh_card(out, repo_id):  # the card's code now loads from the repo; an edited card is left alone
        logger.info("Re-rendered %s/%s for %s", out, CARD_FILE, repo_id)
    point_adapter_at_repo(out, repo_id, revision)
    _record_push(out, repo_id, revision)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=out,
        revision=revision,
        commit_message=message,
        ignore_patterns=list(LEFT_OUT),
        delete_patterns="*",  # remote files gone from the output go too
    )
    logger.info("Pushed %s to %s", out, url)
    return str(url)


def point_adapter_at_repo(out: Path, repo_id: str, revision: str | None) -> bool:
    """Make a LoRA output's adapter name the repo (and branch) as its base, where the output ships the base itself.

    peft's AutoPeftModel* load the base from `base_model_name_or_path`; a local path there would fail for
    everyone else. An adapter whose base is a Hub model (no config.json beside it) is left as it is.
    """
    path = out / "adapter_config.json"
    if not (path.is_file() and (out / "config.json").is_file()):
        return False
    config = json.loads(path.read_text())
    config.update(base_model_name_or_path=repo_id, revision=revision)
    write_json(path, config)
    return True


def _record_push(out: Path, repo_id: str, revision: str | None) -> None:
    """Note the repo in hfssl.json, so that a model trained from this output later names it as its base_model."""
    path = out / RECORD_FILE
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("pushed_to") != {"repo_id": repo_id, "revision": revision}:
        record["pushed_to"] = {"repo_id": repo_id, "revision": revision}
        write_json(path, record)


def _is_transient(err: Exception) -> bool:
    """Server errors and lost connections may pass on retry; 4xx answers and local errors will not."""
    if isinstance(err, HfHubHTTPError):
        return err.response is not None and (err.response.status_code >= 500 or err.response.status_code in (408, 429))
    return isinstance(err, httpx.TransportError)


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "<HF_TOKEN>")


def _retry_hint(out: Path, repo_id: str, revision: str | None, endpoint: str | None) -> str:
    flags = "".join(f" {flag} {value}" for flag, value in (("--revision", revision), ("--endpoint", endpoint)) if value)
    return f"retry with `hfssl push {out} --repo-id {repo_id}{flags}`"


@dataclass(frozen=True)
class PushRequest:
    """What a recipe's --push_to_hub options ask for, taken out of TrainingArguments before training."""

    repo_id: str
    private: bool | None
    revision: str | None
    token: str | None
    endpoint: str | None


def take_push_request(run_args: Any) -> PushRequest | None:
    """Read and validate the push options, and stop the Trainer pushing checkpoints on its own.

    The Trainer would push while training; hfssl pushes once, the finished directory, with its card.
    """
    token, run_args.hub_token = run_args.hub_token, None  # kept out of hfssl.json and the Trainer's pickled state
    if not run_args.push_to_hub:
        return None
    repo_id = run_args.hub_model_id or Path(run_args.output_dir).name
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"--hub_model_id {repo_id!r} is not a repo id; use NAME or NAMESPACE/NAME.")
    request = PushRequest(
        repo_id,
        run_args.hub_private_repo,
        getattr(run_args, "hub_revision", None),
        token,
        getattr(run_args, "hub_endpoint", None) or os.environ.get("HF_ENDPOINT"),
    )
    run_args.push_to_hub = False
    return request


def publish(request: PushRequest | None, output_dir: str) -> str | None:
    """Push the finished output when asked and return the repo URL.

    A failure raises `PushError`, whose message says why and gives the `hfssl push` command that retries;
    the output directory is complete either way (a recipe exits 1 after printing its summary).
    """
    if request is None:
        return None
    return push_output(
        output_dir,
        request.repo_id,
        private=request.private,
        revision=request.revision,
        endpoint=request.endpoint,
        token=request.token,
    )
