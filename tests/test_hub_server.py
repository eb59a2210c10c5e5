"""The local Hub of tests/hub_server.py, driven by the real huggingface_hub / transformers / datasets clients."""

import os
import subprocess
import sys

import httpx2
import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import HubServer, use_hub


@pytest.fixture
def api(hub_server):
    return HfApi(endpoint=hub_server.url, token="hf_test")


def make_folder(path, files):
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(content)
    return path


def test_repo_branch_upload_download(hub_server, api, tmp_path):
    assert api.whoami()["name"] == "me"
    url = api.create_repo("me/model")
    assert url.repo_id == "me/model" and api.repo_exists("me/model") and not api.repo_exists("me/other")
    api.create_repo("me/model", exist_ok=True)  # 409 -> success
    api.create_branch("me/model", branch="step-100")
    api.create_branch("me/model", branch="step-100", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as e:
        api.create_branch("me/model", branch="step-100")
    assert e.value.response.status_code == 409

    folder = make_folder(tmp_path / "up", {"config.json": b"{}", "sub/dir/weights.bin": b"\0" * 3_000_000})
    info = api.upload_folder(repo_id="me/model", folder_path=folder, revision="step-100", commit_message="step 100")
    refs = {b.name: b.target_commit for b in api.list_repo_refs("me/model").branches}
    assert refs["step-100"] == info.oid != refs["main"]
    assert sorted(api.list_repo_files("me/model", revision="step-100")) == [
        ".gitattributes",
        "config.json",
        "sub/dir/weights.bin",
    ]
    assert api.list_repo_files("me/model") == [".gitattributes"]  # main untouched
    tree = {e.path: type(e).__name__ for e in api.list_repo_tree("me/model", revision="step-100", path_in_repo="sub")}
    assert tree == {"sub/dir": "RepoFolder"}
    assert [c.title for c in api.list_repo_commits("me/model", revision="step-100")] == ["step 100", "initial commit"]

    path = hf_hub_download("me/model", "sub/dir/weights.bin", revision="step-100")  # via HF_ENDPOINT
    assert open(path, "rb").read() == b"\0" * 3_000_000
    snap = snapshot_download("me/model", revision="step-100")
    assert open(f"{snap}/config.json", "rb").read() == b"{}"
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("me/model", "missing.txt", revision="step-100")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("me/model", revision="nope")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("me/nope", "config.json")

    # re-uploading the same folder commits nothing; changed files only are committed again
    api.upload_folder(repo_id="me/model", folder_path=folder, revision="step-100")
    (folder / "config.json").write_bytes(b'{"a": 1}')
    api.upload_folder(repo_id="me/model", folder_path=folder, revision="step-100")
    assert hub_server.uploads("me/model") == {"config.json": 2, "sub/dir/weights.bin": 1}
    assert hub_server.files("me/model", "step-100")["config.json"] == b'{"a": 1}'
    assert hub_server.count("POST", "/commit/") == 2


def test_auth(hub_server, tmp_path):
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(endpoint=hub_server.url, token="hf_wrong").whoami()
    assert e.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(endpoint=hub_server.url, token=False).create_repo("me/x")
    assert e.value.response.status_code == 401
    api = HfApi(endpoint=hub_server.url, token="hf_test")
    api.create_repo("myorg/ok")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo("someone/x")
    assert e.value.response.status_code == 403
    hub_server.repos[("model", "someone/x")] = hub_server.repos[("model", "myorg/ok")]  # someone else's repo
    with pytest.raises(HfHubHTTPError) as e:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="someone/x")
    assert e.value.response.status_code == 403
    api.create_repo("me/private", private=True)
    assert not HfApi(endpoint=hub_server.url, token=False).repo_exists("me/private")
    assert api.repo_exists("me/private")


def test_fault_injection(hub_server, api):
    api.create_repo("me/m")
    hub_server.fail(500, path="/commit/")
    with pytest.raises(HfHubHTTPError) as e:  # create_commit does not retry the commit POST
        api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="me/m")
    assert e.value.response.status_code == 500
    assert api.list_repo_files("me/m") == [".gitattributes"]
    api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="me/m")  # the fault was used up
    assert hub_server.uploads("me/m") == {"a.txt": 1}

    # a lost answer: the commit is made, the client sees a dropped connection
    hub_server.fail(None, path="/commit/", after=True)
    with pytest.raises(httpx2.RemoteProtocolError):  # not an HfHubHTTPError
        api.upload_file(path_or_fileobj=b"2", path_in_repo="b.txt", repo_id="me/m")
    assert "b.txt" in api.list_repo_files("me/m")

    hub_server.fail(503, method="write")  # any write; reads pass
    assert api.repo_exists("me/m")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_branch("me/m", branch="b")  # not retried either
    assert e.value.response.status_code == 503

    # preupload is retried by the client (http_backoff): 429 with Retry-After 0 waits 1 s, then succeeds
    hub_server.fail(429, path="/preupload/", retry_after=0)
    api.upload_file(path_or_fileobj=b"3", path_in_repo="c.txt", repo_id="me/m")
    assert [c.status for c in hub_server.calls if "/preupload/" in c.path][-2:] == [429, 200]


def test_transformers_roundtrip(hub_server, api, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "model")  # safetensors
    api.create_repo("me/tiny")
    api.create_branch("me/tiny", branch="v1")
    api.upload_folder(repo_id="me/tiny", folder_path=tmp_path / "model", revision="v1")

    loaded = AutoModelForCausalLM.from_pretrained("me/tiny", revision="v1").eval()
    ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_dataset_push_to_hub(hub_server):
    from datasets import Dataset, DatasetDict, load_dataset

    dd = DatasetDict(
        {"train": Dataset.from_dict({"text": ["a", "b", "c"]}), "test": Dataset.from_dict({"text": ["d"]})}
    )
    dd.push_to_hub("me/data", revision="v1")
    files = hub_server.files("me/data", "v1", repo_type="dataset")
    assert "README.md" in files and any(p.startswith("data/train-") for p in files)
    assert load_dataset("me/data", revision="v1")["train"]["text"] == ["a", "b", "c"]


def test_context_manager_env_and_subprocess(monkeypatch, tmp_path):
    offline = constants.HF_HUB_OFFLINE
    with HubServer(tokens={"t1"}, user="u", orgs=()) as hub:
        env = use_hub(monkeypatch, hub.url, "t1", tmp_path)
        assert env["HF_ENDPOINT"] == hub.url and HfApi().whoami()["name"] == "u"  # endpoint and token from the env
        assert huggingface_hub.whoami()["name"] == "u"  # the module-level functions too
        code = "from huggingface_hub import HfApi; HfApi().create_repo('u/from-child')"
        subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True, timeout=60)
        assert ("model", "u/from-child") in hub.repos and hub.calls[-1].headers["authorization"] == "Bearer t1"
    monkeypatch.undo()
    assert constants.HF_HUB_OFFLINE == offline and constants.ENDPOINT != hub.url
