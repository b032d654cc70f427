"""Usage summed per call from `response.done` (realtime-api.md §5), and the cost estimate from a price table."""

from __future__ import annotations

from realtime_proxy.usage import EXAMPLE_PRICES, Usage

RESPONSE_USAGE = {
    "total_tokens": 1300,
    "input_tokens": 1000,
    "output_tokens": 300,
    "input_token_details": {
        "text_tokens": 600,
        "audio_tokens": 400,
        "image_tokens": 0,
        "cached_tokens": 500,
        "cached_tokens_details": {"text_tokens": 500, "audio_tokens": 0},
    },
    "output_token_details": {"text_tokens": 60, "audio_tokens": 240},
}


def test_usage_sums_every_response_of_a_call() -> None:
    usage = Usage()
    usage.add(RESPONSE_USAGE)
    usage.add(RESPONSE_USAGE)
    assert usage.public() == {
        "inputTokens": 2000,
        "outputTokens": 600,
        "inputTextTokens": 1200,
        "inputAudioTokens": 800,
        "inputCachedTokens": 1000,
        "outputTextTokens": 120,
        "outputAudioTokens": 480,
    }
    assert Usage.loads(usage.dumps()).counts == usage.counts


def test_garbage_usage_is_never_summed() -> None:
    usage = Usage()
    assert usage.add(None) == {}
    assert usage.add({"input_tokens": -5, "output_tokens": True, "input_token_details": "lots"}) == {}
    assert usage.add({"input_tokens": 10**12, "output_tokens": "7"}) == {}
    assert usage.public()["inputTokens"] == 0
    assert Usage.loads("{not json").counts == Usage().counts


def test_cost_prices_cached_text_apart_and_says_none_for_an_unpriced_deployment() -> None:
    usage = Usage()
    usage.add(RESPONSE_USAGE)
    prices = EXAMPLE_PRICES["gpt-realtime"]
    expected = (100 * 4.0 + 500 * 0.4 + 400 * 32.0 + 60 * 16.0 + 240 * 64.0) / 1_000_000
    assert usage.cost(prices) == round(expected, 6)
    assert usage.cost(None) is None


def test_a_live_sessions_cumulative_usage_is_taken_once_never_added_twice() -> None:
    """GPT-Live's `session.closed` carries the session's total: seen again (a re-attach, a row read back), it adds
    nothing; the amounts it added are what the metrics get."""
    usage = Usage.loads(Usage().dumps())
    assert usage.cumulative(RESPONSE_USAGE)["inputTokens"] == 1000
    assert usage.cumulative(RESPONSE_USAGE) == {}
    again = Usage.loads(usage.dumps())
    assert again.cumulative({**RESPONSE_USAGE, "input_tokens": 1200}) == {"inputTokens": 200}
    assert again.counts["inputTokens"] == 1200 and again.counts["outputAudioTokens"] == 240
    assert again.cumulative({"seconds": 42}) == {}, "a shape without token counts meters nothing"
