"""Publishing to a model hub with `huggingface_hub`: the access check before training, and the background
uploader that publishes staged exports while training goes on.

    check_access      token, reachability, namespace and write permission, then the repository (created if missing)
    Uploader          one background thread on the main process: staged folders → branches, in order, with retries

What is published is staged first: an export (weights, config, tokenizer, card, loss curve, metrics) written to
run_dir/publish/<branch>/, a folder that checkpoint pruning never touches, uploaded as one commit (all of it or
nothing), and deleted once the hub has it. run_dir/publish/published.json records each branch's commit, so that
the same command run again (a resume, or publish.py) uploads what is staged and not yet there, and nothing twice.

The endpoint is HF_ENDPOINT's (the Hugging Face Hub by default); the token is HF_TOKEN's or the `hf auth login`
cache's, is never printed, and never reaches a file.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from tqdm.auto import tqdm

from lmtrain.errors import UserError

STAGING = "publish"
LEDGER = "published.json"
HUB_LOGIN = "set HF_TOKEN (a token with write access) in the environment or run `hf auth login`"


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def branch_name(step: int, tokens: int) -> str:
    """`step0002000-tokens8.39B`: sorts in training order and says what the checkpoint saw."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if tokens >= scale:
            return f"step{step:07d}-tokens{tokens / scale:.3g}{unit}"
    return f"step{step:07d}-tokens{tokens}"


def check_access(repo_id: str, private: bool, repo_type: str = "model") -> HfApi:
    """A client for `repo_id`, after checking (before any training) that the hub is reachable, a token is
    available and may write to the repository's namespace; the repository is created if it does not exist."""
    where = endpoint()
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError("hub.push: HF_HUB_OFFLINE is set, so nothing can be published; unset it (or hub.push=none)")
    token = get_token()
    if not token:
        raise UserError(f"hub.push: no Hugging Face token found to publish {repo_id}; {HUB_LOGIN}")
    api = HfApi(endpoint=where, token=token, library_name="lmtrain")
    try:
        who = api.whoami()
    except HfHubHTTPError as error:
        raise UserError(f"hub: {where} refused the token ({_status(error)}); {HUB_LOGIN}") from None
    except Exception as error:  # the transport's own errors (connection refused, DNS, TLS, timeout)
        raise UserError(
            f"hub: {where} is unreachable ({type(error).__name__}); check the network and HF_ENDPOINT, or train with "
            "hub.push=none and publish later with `python publish.py RUN_DIR`"
        ) from None
    namespaces = {who.get("name")} | {org.get("name") for org in who.get("orgs", [])}
    owner = repo_id.split("/")[0]
    if owner not in namespaces:
        raise UserError(
            f"hub.repo_id: {repo_id} belongs to {owner!r}, and this token ({who.get('name')!r}) can write only to "
            f"{', '.join(sorted(n for n in namespaces if n))}; choose a repo_id in one of them"
        )
    role = who.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise UserError(f"hub: the token of {who.get('name')!r} is read-only; {HUB_LOGIN}")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
    except HfHubHTTPError as error:
        raise UserError(f"hub.repo_id: cannot create or write {repo_id} on {where} ({_status(error)})") from None
    return api


@dataclass
class Upload:
    branch: str
    folder: Path
    message: str


@dataclass
class UploadReport:
    published: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Branch → why it could not be published (its staged folder stays for the next run)."""


class Uploader:
    """Uploads staged folders in order from one background thread; a training step never waits for it.

    Only the main process has one. A failure is retried `retries` times (waiting `retry_wait_s`, then twice as
    long each time, or what a 429's Retry-After asks), then reported; training continues either way."""

    def __init__(self, api: HfApi, repo_id: str, run_dir: Path, retries: int, retry_wait_s: float, say=None):
        self.api, self.repo_id, self.retries, self.retry_wait_s = api, repo_id, retries, retry_wait_s
        self.root = Path(run_dir) / STAGING
        self.root.mkdir(parents=True, exist_ok=True)
        self.say = say or (lambda message: tqdm.write(message, file=sys.stderr))
        self.ledger = _read_ledger(self.root / LEDGER).get(repo_id, {})
        self.report = UploadReport()
        self.queue: queue.Queue[Upload | None] = queue.Queue()
        self.pending = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="hub-uploader", daemon=True)
        self.thread.start()
        for folder in self._staged():
            if folder.name in self.ledger:  # uploaded before the last run stopped, but not yet deleted
                shutil.rmtree(folder, ignore_errors=True)
            else:
                self.submit(folder.name, f"{folder.name} (staged by an earlier run)")

    def published(self, branch: str) -> bool:
        return branch in self.ledger

    def branches(self) -> list[str]:
        """Checkpoint branches published or on their way, in training order."""
        return sorted(b for b in set(self.ledger) | {p.name for p in self._staged()} if b.startswith("step"))

    def _staged(self) -> list[Path]:
        """The staged exports, one folder per branch; those being written (`.tmp-…`) or not branches (`.…`) aside."""
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def stage(self, branch: str) -> Path:
        """The folder to write `branch`'s export into before `submit`."""
        return self.root / branch

    def submit(self, branch: str, message: str) -> None:
        with self.lock:
            self.pending += 1
        self.queue.put(Upload(branch, self.stage(branch), message))

    def wait(self) -> UploadReport:
        """Block until every submitted upload is done or has failed, with a progress bar; then stop the thread."""
        with self.lock:
            total = self.pending
        if total:
            self.say(f"hub: waiting for {total} upload(s) to {self.repo_id}")
        with tqdm(total=total, desc="uploads", disable=not sys.stderr.isatty()) as bar:
            while True:
                with self.lock:
                    left = self.pending
                bar.n = total - left
                bar.refresh()
                if not left:
                    break
                time.sleep(0.1)
        self.queue.put(None)
        self.thread.join()
        return self.report

    def _work(self) -> None:
        while (job := self.queue.get()) is not None:
            try:
                self._upload(job)
            finally:
                with self.lock:
                    self.pending -= 1

    def _upload(self, job: Upload) -> None:
        if job.branch in self.ledger or not job.folder.is_dir():
            return
        wait = self.retry_wait_s
        for attempt in range(self.retries + 1):
            try:
                if job.branch != "main":
                    self.api.create_branch(self.repo_id, branch=job.branch, exist_ok=True)
                commit = self.api.upload_folder(
                    repo_id=self.repo_id, folder_path=job.folder, revision=job.branch, commit_message=job.message
                )
                break
            except Exception as error:  # whatever failed, training goes on and the next run retries
                why = f"{type(error).__name__}: {_status(error)}"
                if attempt == self.retries:
                    self.report.failed[job.branch] = why
                    self.say(
                        f"hub: could not publish {job.branch} to {self.repo_id} after {self.retries + 1} tries ({why}); "
                        f"it stays staged in {job.folder} and the same command run again publishes it"
                    )
                    return
                delay = _retry_after(error) or wait
                self.say(f"hub: upload of {job.branch} failed ({why}); retrying in {delay:.0f} s")
                time.sleep(delay)
                wait *= 2
        self.ledger[job.branch] = {"commit": commit.oid, "url": commit.commit_url, "published_at": time.time()}
        _write_ledger(self.root / LEDGER, self.repo_id, self.ledger)
        shutil.rmtree(job.folder, ignore_errors=True)
        self.report.published.append(job.branch)
        self.say(f"hub: published {job.branch} → {endpoint()}/{self.repo_id}/tree/{job.branch}")


def _status(error: Exception) -> str:
    response = getattr(error, "response", None)
    code = getattr(response, "status_code", None)
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"HTTP {code}" if code else first_line[:200]


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _read_ledger(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_ledger(path: Path, repo_id: str, branches: dict) -> None:
    """Record `repo_id`'s published branches, keeping other repositories' (a run published to two)."""
    ledger = {**_read_ledger(path), repo_id: branches}
    staging = path.with_name(f".tmp-{path.name}")
    staging.write_text(json.dumps(ledger, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(staging, path)


def publish_once(run_dir: Path, repo_id: str, key: str, fingerprint: str, upload) -> bool:
    """Run `upload()` unless run_dir's ledger says `repo_id` already has `key` with this `fingerprint`; record
    it after. For what is published whole, outside a run's branches (the tokenizer, the dataset)."""
    path = Path(run_dir) / STAGING / LEDGER
    branches = _read_ledger(path).get(repo_id, {})
    if branches.get(key, {}).get("fingerprint") == fingerprint:
        return False
    upload()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_ledger(path, repo_id, {**branches, key: {"fingerprint": fingerprint, "published_at": time.time()}})
    return True
