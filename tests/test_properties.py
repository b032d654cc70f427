"""Property-based: whatever a caller sends and whatever the upstream answers, `/connect` ends in a 201 or a
JSON error with a documented code, never an exception, and input it refuses never reaches the upstream."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localdev.fake_openai import FakeAzureOpenAI, Fault
from tests.conftest import OFFER, Driven, error_of, make_proxy, request

EXAMPLES = settings(
    max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

text = st.text(max_size=60)
sdp_like = st.one_of(
    text, st.just(OFFER), st.builds(lambda junk: OFFER + junk, text), st.builds(lambda junk: "v=0\r\n" + junk, text)
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "sdp": sdp_like,
        "voice": st.one_of(text, st.sampled_from(["marin", "ash", "nova"])),
        "instructions": text,
    },
)
boundary = st.text(alphabet="abcXYZ09'()+_,-./:=? ", min_size=1, max_size=12)


def proxy_for(fake: FakeAzureOpenAI, cache: dict[str, Driven] = {}) -> Driven:  # noqa: B006 - one per fake
    """One app for all examples of a test, as one worker serves many requests."""
    if fake.url not in cache:
        cache[fake.url] = make_proxy(fake, RATE_LIMIT_PER_MINUTE="0")
    return cache[fake.url]


def multipart(values: dict[str, str], mark: str) -> bytes:
    parts = [
        f'--{mark}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in values.items()
    ]
    return ("".join(parts) + f"--{mark}--\r\n").encode("utf-8", "surrogatepass")


bodies = st.one_of(
    st.builds(
        lambda values, mark, spelling: (multipart(values, mark), spelling.format(mark)),
        fields,
        boundary,
        st.sampled_from(
            [
                'multipart/form-data; boundary="{}"',
                "multipart/form-data; boundary ={}",
                "MULTIPART/form-data;boundary={}",
            ]
        ),
    ),
    st.builds(lambda values: (json.dumps(values).encode(), "application/json"), fields),
    st.builds(
        lambda values: (
            json.dumps(values, ensure_ascii=False).encode("utf-8", "surrogatepass"),
            "application/json; charset=utf-8",
        ),
        fields,
    ),
    st.builds(lambda sdp: (sdp.encode("utf-8", "surrogatepass"), "application/sdp"), sdp_like),
    st.tuples(
        st.binary(max_size=300),
        st.sampled_from(
            [
                "multipart/form-data; boundary=x",
                "application/json",
                "application/sdp",
                "text/plain",
                "",
                "multipart/form-data",
            ]
        ),
    ),
)


@EXAMPLES
@given(body=bodies, params=st.dictionaries(st.sampled_from(["voice", "instructions"]), text, max_size=2))
def test_any_body_in_any_form_ends_in_an_answer(fake, body: tuple[bytes, str], params: dict[str, str]) -> None:
    fake.reset()
    data, content_type = body
    response = proxy_for(fake).connect(request(data, content_type or None, params=params))
    if response.status_code == 201:
        assert response.get_body().startswith(b"v=0")
        return
    error = error_of(response)
    assert 400 <= response.status_code < 500 and error["code"] != "internal_error"
    assert fake.requests == [], "refused input must never reach the upstream"


statuses = st.sampled_from([200, 201, 204, 301, 307, 400, 401, 403, 404, 409, 429, 500, 502, 503])
answer_bodies = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.just("v=0\r\n"),
    st.builds(lambda v: json.dumps({"value": v}), st.one_of(text, st.integers(), st.none())),
    st.builds(lambda m: json.dumps({"error": {"message": m}}), text),
    st.builds(lambda m: json.dumps({"error": m}), st.one_of(text, st.integers())),
    st.just("[" * 5000 + "]" * 5000),
)
headers = st.dictionaries(
    st.sampled_from(["Location", "Retry-After", "retry-after-ms", "Content-Type", "Set-Cookie"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    max_size=3,
)


@EXAMPLES
@given(stage=st.sampled_from(["client_secrets", "calls"]), status=statuses, body=answer_bodies, extra=headers)
def test_any_upstream_answer_ends_in_a_clear_answer(
    fake, stage: str, status: int, body: str | None, extra: dict[str, str]
) -> None:
    fake.reset()
    fake.fail_next(stage, Fault(status=status, body=body, headers=extra))
    response = proxy_for(fake).connect(request(OFFER.encode(), "application/sdp"))
    if response.status_code == 201:
        answered = stage == "calls" and 200 <= status < 300
        retried_or_minted = stage == "client_secrets" and status in (200, 502, 503)
        assert (answered or retried_or_minted) and response.get_body().lstrip().startswith(b"v=0")
        return
    error = error_of(response)
    assert response.status_code in (429, 502, 503, 504) and error["code"] != "internal_error"
