"""The public face is a decision: __all__ is sorted, complete, and every name exists."""

import modelfusion


def test_all_is_sorted_and_complete():
    assert modelfusion.__all__ == sorted(modelfusion.__all__)
    for name in modelfusion.__all__:
        assert hasattr(modelfusion, name), name
    public = {n for n in dir(modelfusion) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(modelfusion.__all__), public - set(modelfusion.__all__)
