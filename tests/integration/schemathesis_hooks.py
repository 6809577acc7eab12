"""schemathesis hooks for tests/integration/test_schemathesis.py (loaded via SCHEMATHESIS_HOOKS).

The Spine-Session header is an opaque token the API hands out; a random string is not one, and
the server rightly answers 400 for it. This registers a strategy for the document's
`spine-session` format that makes well-formed tokens, so positive cases carry valid ones.
Their keys live under `_fuzz/`, a namespace no request can name (namespaces start with [a-z0-9]),
so a token never pins a read to a version no replica holds.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from spine.api.coordination import FENCE_RE, IF_MATCH_RE
from spine.core.clock import Version
from spine.core.feed import Cursor
from spine.core.session import SessionToken

SESSION_FORMAT = "spine-session"  # spine.api.openapi.SESSION_FORMAT
ETAG_FORMAT = "spine-etag"  # spine.api.openapi.ETAG_FORMAT
FENCE_FORMAT = "spine-fence"  # spine.api.openapi.FENCE_FORMAT
WRITE_SEQ_FORMAT = "spine-write-seq"  # spine.api.openapi.WRITE_SEQ_FORMAT
WRITE_SEQ_RE = r"^[A-Za-z0-9._~-]{1,64}:[1-9][0-9]{0,14}$"  # spine.api.openapi.WRITE_SEQ_PATTERN
CURSOR_FORMAT = "spine-cursor"  # the change feed's cursor, as spine.api.openapi declares it


def _token(entries: list[tuple[int, int, str]], overflowed: bool) -> str:
    tok = SessionToken(overflowed=overflowed)
    for key, hlc, node in entries:
        tok.observe(f"_fuzz/k{key}", Version(hlc, node))
    return tok.encode()


schemathesis.openapi.format(SESSION_FORMAT, st.builds(
    _token,
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 2**63 - 1),
                       st.sampled_from(["n1", "n2"])), max_size=4),
    st.booleans(),
))

# If-Match and Spine-Fence: their patterns need '"', '.', '=' and the coverage phase keeps header
# values to letters and digits unless a format strategy draws them (it would otherwise send a
# negative value, such as `If-Match: 0`, in a case it calls positive).
schemathesis.openapi.format(ETAG_FORMAT, st.from_regex(IF_MATCH_RE, fullmatch=True))

# Change-feed cursors: opaque text the API hands out; these are well-formed ones (issued at
# HLC 0, which never expires) over the cluster's members and any log positions.
schemathesis.openapi.format(CURSOR_FORMAT, st.builds(
    lambda positions: Cursor(positions, 0).encode(),
    st.dictionaries(st.sampled_from(["n1", "n2", "n3"]),
                    st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)),
                    max_size=3),
))
schemathesis.openapi.format(FENCE_FORMAT, st.from_regex(FENCE_RE, fullmatch=True))
schemathesis.openapi.format(WRITE_SEQ_FORMAT, st.from_regex(WRITE_SEQ_RE, fullmatch=True))
