"""The shell result codec (seamless/shell/result.py) and the bash identity (shell/identity.py)
produce exactly the canonical bytes of identity-and-cache.md, checked against
``seamless.encoding`` (the numpy-side implementation) and by hand."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from seamless.shell import identity, result
from seamless.shell.paths import from_json_key, json_key, json_value
from seamless.encoding import canonical_json, encode

NON_UTF8 = os.fsdecode(b"caf\xe9.txt")


def _files(tmp_path, contents: dict) -> dict:
    paths = {}
    for name, data in contents.items():
        path = tmp_path / os.fsencode(name).hex()
        path.write_bytes(data)
        paths[name] = str(path)
    return paths


@pytest.mark.parametrize("stdout, outputs", [
    (b"", {}),
    (b"hello\n", {}),
    (b"x" * 100, {"counts.txt": b"1 a\n", "b.txt": b""}),
    (b"\0" * 64, {"out": {"sub/a.txt": b"A", "z": b"Z" * 65}, NON_UTF8: b"e"}),
])
def test_chunks_equal_the_canonical_tree(tmp_path, stdout, outputs):
    sources = _files(tmp_path, {"stdout": stdout})
    files = {}
    value_outputs = {}
    for path, data in outputs.items():
        if isinstance(data, dict):
            sub_files = _files(tmp_path, {path + "/" + k: v for k, v in data.items()})
            files[path] = {k: sub_files[path + "/" + k] for k in data}
            value_outputs[json_key(path)] = {json_key(k): v for k, v in data.items()}
        else:
            files[path] = _files(tmp_path, {path: data})[path]
            value_outputs[json_key(path)] = data
    encoded = result.ResultBytes(sources["stdout"], files)
    ours = b"".join(encoded)
    assert encoded.size == len(ours)
    reference = encode({"exit": 0, "outputs": value_outputs, "stdout": stdout})
    assert reference.kind == result.RESULT_KIND
    assert ours == bytes(memoryview(reference.buffer))
    decoded = result.ShellResult(ours)
    assert bytes(decoded.stdout) == stdout
    for path, data in outputs.items():
        got = decoded.outputs[path]
        if isinstance(data, dict):
            assert {k: bytes(v) for k, v in got.items()} == data
        else:
            assert bytes(got) == data


def test_shell_result_refuses_other_trees():
    other = bytes(memoryview(encode({"a": b"x"}).buffer))
    with pytest.raises(ValueError, match="not the result of a shell command"):
        result.ShellResult(other)
    with pytest.raises(ValueError, match="not a canonical seamless tree"):
        result.ShellResult(b"plain bytes")


def test_paths_round_trip_byte_exact():
    for name in ("a.txt", "with space", "-dash", NON_UTF8, "dir/" + NON_UTF8):
        assert from_json_key(json_key(name)) == name
    assert json_value(NON_UTF8) == {"hex": b"caf\xe9.txt".hex()}
    assert json_key(NON_UTF8) == "\0" + b"caf\xe9.txt".hex()


def test_file_entry_is_sha256sum_and_exec_bit(tmp_path):
    f = tmp_path / "tool.sh"
    f.write_bytes(b"echo hi\n")
    assert identity.input_entry(str(f)) == ["file", hashlib.sha256(b"echo hi\n").hexdigest(),
                                            False]
    f.chmod(0o755)
    assert identity.input_entry(str(f))[2] is True


def test_directory_entry_is_the_index_of_its_tree(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "empty").mkdir()
    (d / "sub" / "a").write_bytes(b"A")
    (d / "x").write_bytes(b"X")
    (d / "x").chmod(0o700)
    os.symlink("sub/a", d / "link")
    os.mkdir(d / os.fsdecode(b"n\xff"))
    index = {
        "empty": ["dir", None],
        "link": ["link", "sub/a"],
        "\0" + b"n\xff".hex(): ["dir", None],
        "sub/a": ["file", hashlib.sha256(b"A").hexdigest(), False],
        "x": ["file", hashlib.sha256(b"X").hexdigest(), True],
    }
    expected = hashlib.sha256(canonical_json(index).encode()).hexdigest()
    assert identity.input_entry(str(d)) == ["dir", expected]


def test_description_follows_the_spec(tmp_path):
    description = identity.describe(
        "paste a b", {"a": ["file", "0" * 64, False]}, ["z.txt", "b.txt", "b.txt"],
        {"V": "1"}, True)
    assert description == {
        "command": "paste a b", "encoding": 1, "inputs": {"a": ["file", "0" * 64, False]},
        "language": "bash", "outputs": ["b.txt", "z.txt"], "result": "bash-v1",
        "sandbox": True, "vars": {"V": hashlib.sha256(b"1").hexdigest()},
    }
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert identity.transformation_checksum(description) == \
        hashlib.sha256(text.encode()).hexdigest()
