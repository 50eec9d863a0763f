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


def test_harvest_never_imports_the_modules(tmp_path):
    import os

    code = ("import sys; from nnslim.testbeds import text; text.docstrings(); "
            "print(any(m.startswith(('idlelib', 'turtle', 'antigravity', 'this')) for m in sys.modules))")
    env = {**os.environ, "NNSLIM_CACHE": str(tmp_path)}  # an empty cache: the harvest itself runs
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "False" and len(list(tmp_path.glob("docstrings-*.json"))) == 1


def test_harvest_is_cached_on_disk_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.py").write_text('"""A module docstring that is long enough to be kept by the harvest."""\n')
    monkeypatch.setenv("NNSLIM_CACHE", str(tmp_path / "cache"))
    text.docstrings.cache_clear()
    first = text.docstrings(str(lib))
    files = list((tmp_path / "cache").glob("docstrings-*.json"))
    assert first and len(files) == 1
    text.docstrings.cache_clear()
    files[0].write_text('["served from the cache"]')  # proves the second call reads the cache
    assert text.docstrings(str(lib)) == ("served from the cache",)
    files[0].write_text("{not json")  # a damaged cache is rebuilt
    text.docstrings.cache_clear()
    assert text.docstrings(str(lib)) == first
    (lib / "b.py").write_text('"""Another module docstring, added after the first harvest was cached."""\n')
    text.docstrings.cache_clear()
    assert len(text.docstrings(str(lib))) == 2  # a new or changed file is a new key
    text.docstrings.cache_clear()


def test_bad_split_name():
    import pytest

    with pytest.raises(ValueError, match="allowed: calibration, eval"):
        text.split_docstrings("train")
