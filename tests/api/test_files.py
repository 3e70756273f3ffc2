"""`/v1/files`: upload with validation and a streaming size limit, list, get, content, delete."""

from __future__ import annotations

import hashlib

from tests.support.api_client import CHAT_ROW, MAX_UPLOAD


def test_upload_reports_format_rows_and_digest(tenant):
    content = CHAT_ROW * 4
    body = tenant.upload(content, filename="../../etc/train.jsonl").json()
    assert body["object"] == "file" and body["id"].startswith("file-") and body["purpose"] == "fine-tune"
    assert body["bytes"] == len(content) and body["rows"] == 4 and body["format"] == "chat"
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["filename"] == "train.jsonl"  # only the last path component is kept, never used as a path
    assert tenant.get(f"/v1/files/{body['id']}").json() == body
    assert tenant.get(f"/v1/files/{body['id']}/content").content == content


def test_invalid_dataset_is_rejected_with_line_numbers_and_nothing_is_kept(tenant):
    content = CHAT_ROW + b"{not json\n" + CHAT_ROW + b'{"messages": [{"role": "user", "content": "x"}]}\n'
    response = tenant.upload(content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "file" and error["code"] == "invalid_file_format"
    assert "line 2" in error["message"] and "line 4" in error["message"]
    assert [d["line"] for d in error["details"]] == [2, 4]
    assert tenant.counts() == (0, 0, 0)


def test_upload_over_the_limit_is_413_while_streaming(tenant):
    def body():  # chunked: no Content-Length, so only the streaming check can stop it
        boundary = b"xyz"
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\r\n"
        for _ in range(MAX_UPLOAD // len(CHAT_ROW) + 10):
            yield CHAT_ROW
        yield b"\r\n--" + boundary + b"--\r\n"

    response = tenant.post("/v1/files", content=body(), headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert tenant.counts() == (0, 0, 0)


def test_upload_just_under_the_limit_is_accepted(tenant):
    content = CHAT_ROW * (MAX_UPLOAD // len(CHAT_ROW))
    assert tenant.upload(content).status_code == 200


def test_list_paginates_newest_first_and_filters_by_purpose(tenant):
    ids = [tenant.file_id() for _ in range(3)]
    first = tenant.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = tenant.get("/v1/files", params={"limit": 2, "after": first["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and not rest["has_more"]
    ascending = tenant.get("/v1/files", params={"order": "asc"}).json()
    assert [f["id"] for f in ascending["data"]] == ids
    assert tenant.get("/v1/files", params={"purpose": "batch"}).json()["data"] == []


def test_range_requests_return_exactly_the_asked_bytes(tenant):
    content = b"".join(CHAT_ROW.replace(b"hello", f"h{i:04d}".encode()) for i in range(50))
    file_id = tenant.file_id(content)
    url = f"/v1/files/{file_id}/content"
    size = len(content)
    cases = {"bytes=0-9": (0, 10), "bytes=100-": (100, size), "bytes=-25": (size - 25, size),
             f"bytes=10-{size + 100}": (10, size), "bytes=7-7": (7, 8)}
    for header, (start, stop) in cases.items():
        response = tenant.get(url, headers={"Range": header})
        assert response.status_code == 206, header
        assert response.content == content[start:stop], header
        assert response.headers["content-length"] == str(stop - start)
        assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{size}"
    unsatisfiable = tenant.get(url, headers={"Range": f"bytes={len(content)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(content)}"
    assert tenant.get(url, headers={"Range": "items=0-5"}).status_code == 200  # unknown unit: ignored


def test_delete_removes_row_and_object(tenant):
    file_id = tenant.file_id()
    assert tenant.counts() == (1, 0, 1)
    assert tenant.delete(f"/v1/files/{file_id}").json() == {"id": file_id, "object": "file", "deleted": True}
    assert tenant.get(f"/v1/files/{file_id}").status_code == 404
    assert tenant.counts() == (0, 0, 0)


def test_a_file_used_by_an_active_job_cannot_be_deleted(tenant):
    job = tenant.job()
    response = tenant.delete(f"/v1/files/{job['training_file']}")
    assert response.status_code == 409 and job["id"] in response.json()["error"]["message"]
    tenant.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert tenant.delete(f"/v1/files/{job['training_file']}").status_code == 200


def test_the_openapi_document_describes_the_upload_body(client):
    """The upload is parsed by hand while it streams; the schema still tells clients what to send."""
    body = client.get("/openapi.json").json()["paths"]["/v1/files"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file", "purpose"] and schema["properties"]["file"]["format"] == "binary"
