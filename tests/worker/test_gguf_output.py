"""The gguf output through the service: a job asking for it trains, uploads gguf/ (model.gguf and
the Ollama Modelfile) and lists it as an artifact, downloadable as a tar or file by file like merged."""

from __future__ import annotations

import io
import tarfile

import gguf

from worker.job import run_job


def test_a_job_asking_for_gguf_stores_a_downloadable_gguf_artifact(service, tmp_path):
    job_id = service.create(outputs=["adapter", "gguf"])
    assert run_job(job_id, settings=service.settings, publish=lambda *_: True) == "succeeded"
    artifacts = {artifact["name"]: artifact for artifact in service.artifacts(job_id)}
    assert set(artifacts) == {"adapter", "gguf"} and len(service.get(job_id)["result_files"]) == 2
    assert {entry["path"] for entry in artifacts["gguf"]["files"]} == {"model.gguf", "Modelfile"}

    base = f"/v1/fine_tuning/jobs/{job_id}/artifacts/gguf"
    archive = service.client.get(f"{base}/archive", headers=service.headers)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        assert sorted(tar.getnames()) == ["gguf/Modelfile", "gguf/model.gguf"]
        modelfile = tar.extractfile("gguf/Modelfile").read().decode()
    assert modelfile.startswith("FROM ./model.gguf\n")

    single = service.client.get(f"{base}/files/model.gguf", headers=service.headers)
    assert single.status_code == 200
    (tmp_path / "model.gguf").write_bytes(single.content)
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["general.file_type"].contents() == 1  # f16, the run contract's default gguf_type
