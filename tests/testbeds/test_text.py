import subprocess
import sys

from nnslim.testbeds import text


def test_splits_are_disjoint_and_nonempty():
    calib, ev = text.split_docstrings("calibration"), text.split_docstrings("eval")
    assert len(calib) > 1000 and len(ev) > 300
    assert not set(calib) & set(ev)
    s_cal, s_ev = text.sentences("calibration"), text.sentences("eval")
    assert len(s_cal) > 1000 and len(s_ev) > 500
    assert not set(s_cal) & set(s_ev)


def test_sentences_are_english_prose():
    for s in text.sentences("eval")[:200]:
        assert s[0].isupper() and s.endswith((".", "?", "!")) and s.isascii()
        assert ">>>" not in s
        assert 4 <= len(s.split()) <= 60


def test_deterministic_across_processes():
    code = "from nnslim.testbeds import text; import hashlib; print(hashlib.sha256('\\n'.join(text.sentences('eval')).encode()).hexdigest())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    import hashlib

    assert out == hashlib.sha256("\n".join(text.sentences("eval")).encode()).hexdigest()


def test_harvest_never_imports_the_modules():
    code = ("import sys; from nnslim.testbeds import text; text.docstrings(); "
            "print(any(m.startswith(('idlelib', 'turtle', 'antigravity', 'this')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_bad_split_name():
    import pytest

    with pytest.raises(ValueError, match="allowed: calibration, eval"):
        text.split_docstrings("train")
