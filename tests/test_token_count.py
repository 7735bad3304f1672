"""The token-count rules: one table (gamma_rt/token_count.py) named by the manifest's ``audio.token_count``.

Each rule maps a window's real samples to the tokens the decoder gets; the manifest names the rule as an
object (``{"rule": "whole", "min_seconds": 0.5}``) or, as schema-2 bundles wrote it, as a plain name.
"""

from __future__ import annotations

import numpy as np
import pytest

from gamma_rt.errors import BundleError
from gamma_rt.manifest import AudioSection
from gamma_rt.runtime.windows import Window
from gamma_rt.token_count import RULES, Coverage, TokenRule, conv_pool_tokens, rule

RATE, WINDOW = 16000, 480000


def window(n_valid: int, index: int = 0) -> Window:
    return Window(index, index * WINDOW / RATE, index * WINDOW / RATE + n_valid / RATE,
                  np.zeros(WINDOW, np.float32), n_valid)


def test_whole_keeps_every_token_of_a_padded_window_and_drops_a_short_one():
    whole = TokenRule("whole", {"min_seconds": 0.5})
    assert window(WINDOW).valid_tokens(300, whole) == 300
    assert window(int(2.0 * RATE)).valid_tokens(300, whole) == 300  # 2 s of audio, 28 s of padding: all kept
    assert window(int(0.5 * RATE) + 1, index=2).valid_tokens(300, whole) == 300
    assert window(int(0.5 * RATE), index=2).valid_tokens(300, whole) == 0  # a tail of 0.5 s or less: dropped
    assert window(int(0.3 * RATE)).valid_tokens(300, whole) == 300  # the first window: kept however short
    assert window(1).valid_tokens(300, TokenRule("whole")) == 300  # min_seconds defaults to 0


def test_proportional_and_conv_pool_are_unchanged_by_the_move():
    assert window(int(7.3 * RATE)).valid_tokens(750) == 183
    assert window(1).valid_tokens(750, "proportional") == 1
    assert conv_pool_tokens(3000) == 750 and conv_pool_tokens(0) == 0
    assert window(int(10 * RATE)).valid_tokens(750, "conv_pool") == 250


def test_the_manifest_reads_a_rule_object_and_the_schema_2_plain_name():
    plain = AudioSection.from_dict({"token_count": "conv_pool"}, "m.json")
    assert plain.token_count == TokenRule("conv_pool")
    obj = AudioSection.from_dict({"token_count": {"rule": "whole", "min_seconds": 0.5}}, "m.json")
    assert obj.token_count == TokenRule("whole", {"min_seconds": 0.5})
    assert obj.to_dict()["token_count"] == {"rule": "whole", "min_seconds": 0.5}
    assert AudioSection.from_dict({}, "m.json").to_dict()["token_count"] == {"rule": "proportional"}


@pytest.mark.parametrize("value,message", [
    ("mystery", "audio.token_count is 'mystery'; this gamma-rt knows proportional, conv_pool, all, whole"),
    ({"rule": "whole", "min_chunk": 1}, "audio.token_count.min_chunk is not a parameter of rule 'whole'"),
    ({"rule": "whole", "min_seconds": "half"}, "audio.token_count.min_seconds must be float"),
    ({"min_seconds": 0.5}, "audio.token_count must be a rule name or an object with 'rule'"),
    (7, "audio.token_count must be a rule name"),
])
def test_a_bad_token_rule_is_one_line_naming_the_field(value, message):
    with pytest.raises(BundleError, match="^m.json: field " + message.replace(".", r"\.").replace("(", r"\(")):
        AudioSection.from_dict({"token_count": value}, "m.json")


def test_a_new_rule_is_one_decorated_function():
    @rule("every_other", keep=2)
    def every_other(c: Coverage, keep: int) -> int:
        return c.tokens_per_window // keep

    try:
        section = AudioSection.from_dict({"token_count": {"rule": "every_other", "keep": 3}}, "m.json")
        assert window(WINDOW).valid_tokens(300, section.token_count) == 100
    finally:
        del RULES["every_other"]
