"""HTTP Range parsing (api/downloads.py) for positions of any length: never a 500.

`bytes=<4301 digits>-` was a 500: int() refuses strings of more than 4300 digits. Files and
artifact files are both served by `stream_response`, so its `parse_range` is tested here
directly, and through the files API once.
"""

from __future__ import annotations

import pytest

from api.downloads import MAX_POSITION_DIGITS, parse_range
from api.errors import ApiError

SIZE = 1000
HUGE = "9" * 4301


@pytest.mark.parametrize(("header", "expected"), [
    (f"bytes=0-{HUGE}", (0, SIZE)),  # a last-pos past the end means "to the end" (RFC 9110 14.1.2)
    (f"bytes=10-{HUGE}", (10, SIZE)),
    (f"bytes=-{HUGE}", (0, SIZE)),  # a suffix longer than the object is the whole object
    ("bytes=" + "0" * 5000 + "5-", (5, SIZE)),  # leading zeros do not count
    ("bytes=5-" + "0" * 5000 + "9", (5, 10)),
    ("bytes=" + "9" * MAX_POSITION_DIGITS + "x-", None),  # not a range: ignored
])
def test_long_positions_read_as_their_value(header, expected):
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize("header", [f"bytes={HUGE}-", f"bytes={HUGE}-{HUGE}", "bytes=1" + "0" * 30 + "-",
                                    f"bytes=5-{'0' * 5000}4"])
def test_a_start_past_any_size_is_unsatisfiable(header):
    with pytest.raises(ApiError) as caught:
        parse_range(header, SIZE)
    assert caught.value.status_code == 416 and caught.value.headers == {"Content-Range": f"bytes */{SIZE}"}


def test_through_the_files_api(tenant):
    file_id = tenant.file_id()
    url = f"/v1/files/{file_id}/content"
    content = tenant.get(url).content
    refused = tenant.get(url, headers={"Range": f"bytes={HUGE}-"})
    assert refused.status_code == 416 and refused.json()["error"]["param"] == "Range", refused.text
    assert refused.headers["content-range"] == f"bytes */{len(content)}"
    whole = tenant.get(url, headers={"Range": f"bytes=-{HUGE}"})
    assert whole.status_code == 206 and whole.content == content
