import pytest

from matryoshka.errors import ConfigError
from matryoshka.model import MatryoshkaConfig, parse_levels, preset


@pytest.mark.parametrize("levels,message", [
    ((512, 64), "strictly increasing; got 512 before 64"),
    ((64, 64, 512), "strictly increasing; got 64 before 64"),
    ((48, 512), "level 48 is not a multiple of head_dim 32"),
    ((64, 256), "last level must equal d_model 512"),
    ((64, 1024), "level 1024 is larger than d_model 512"),
])
def test_levels_are_validated_with_their_own_message(levels, message):
    with pytest.raises(ConfigError, match=message):
        preset("demo", levels=levels)


def test_parse_levels():
    assert parse_levels("64, 128,256") == (64, 128, 256)
    with pytest.raises(ConfigError, match="comma-separated integers"):
        parse_levels("abc")


def test_config_round_trips_through_dict():
    c = preset("tiny", norm="shared")
    assert MatryoshkaConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown config field"):
        MatryoshkaConfig.from_dict({**c.to_dict(), "colour": 1})


def test_for_level_is_a_standalone_config():
    c = preset("demo")
    small = c.for_level(128)
    assert (small.d_model, small.levels, small.d_mid) == (128, (128,), 256)
    assert preset("demo", ffn_nesting="fixed").for_level(128).d_mid == 1024


def test_bad_choices():
    with pytest.raises(ConfigError, match="ffn_nesting must be one of"):
        preset("tiny", ffn_nesting="wide")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
