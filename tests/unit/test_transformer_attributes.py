"""Attributes a transformer does not know are refused (no silent ``f.meta = ...``)."""

from __future__ import annotations

import pytest

from seamless.transformer import delayed, direct


def square(x):
    return x * x


def test_unknown_attribute_names_the_accepted_ones():
    f = delayed(square)
    with pytest.raises(AttributeError) as info:
        f.meta = {"owner": "ana"}
    message = str(info.value)
    assert message.startswith("delayed transformer square has no attribute 'meta' to set; it "
                              "accepts square.local = True/False and entries of .args, "
                              ".globals and .modules")
    assert "square.globals.meta = value" in message
    assert not hasattr(f, "meta")


@pytest.mark.parametrize("typo, meant", [("modlues", "modules"), ("Local", "local"),
                                         ("global", "globals"), ("arg", "args")])
def test_typo_gets_a_did_you_mean(typo, meant):
    f = direct(square)
    with pytest.raises(AttributeError, match=rf"did you mean square\.{meant}\?"):
        setattr(f, typo, 1)


@pytest.mark.parametrize("name", ["args", "globals", "modules"])
def test_entry_attributes_cannot_be_replaced(name):
    f = delayed(square)
    entries = getattr(f, name)
    with pytest.raises(AttributeError, match=rf"square\.{name} cannot be replaced; set its "
                                             rf"entries: square\.{name}\.x = value"):
        setattr(f, name, {})
    assert getattr(f, name) is entries


def test_accepted_attributes_still_work():
    f = delayed(square)
    f.local = True
    f.args.x = 3
    assert f().run() == 9
    g = delayed(f)
    assert g.local is True and g.__name__ == "square" and g.__wrapped__ is square
