"""The shell result codec (seamless/shell/result.py) and the bash identity (shell/identity.py)
produce exactly the canonical bytes of docs/design/identity-and-cache.md, checked against
``seamless.encoding`` (the numpy-side implementation) and by hand."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from seamless.encoding import canonical_json, encode
from seamless.shell import identity, result
from seamless.shell.paths import from_json_key, json_key, json_value

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
    modes = {}
    for i, (path, data) in enumerate(outputs.items()):
        if isinstance(data, dict):
            sub_files = _files(tmp_path, {path + "/" + k: v for k, v in data.items()})
            files[path] = {k: sub_files[path + "/" + k] for k in data}
            value_outputs[json_key(path)] = {json_key(k): v for k, v in data.items()}
            for j, k in enumerate(data):
                os.chmod(files[path][k], 0o700 if j else 0o640)
            modes[json_key(path)] = {json_key(k): 0o700 if j else 0o640
                                     for j, k in enumerate(data)}
        else:
            files[path] = _files(tmp_path, {path: data})[path]
            value_outputs[json_key(path)] = data
            os.chmod(files[path], 0o755 if i else 0o600)
            modes[json_key(path)] = 0o755 if i else 0o600
    encoded = result.ResultBytes(sources["stdout"], files)
    ours = b"".join(encoded)
    assert encoded.size == len(ours)
    reference = encode({"exit": 0, "modes": modes, "outputs": value_outputs,
                        "stdout": stdout})
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
        expected = modes[json_key(path)]
        if isinstance(expected, dict):
            expected = {from_json_key(k): v for k, v in expected.items()}
        assert decoded.modes[path] == expected


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


def test_a_result_without_modes_is_read_with_empty_modes():
    old = bytes(memoryview(encode({"exit": 0, "outputs": {"a": b"x", "d": {"s": b"y"}},
                                   "stdout": b"o"}).buffer))
    decoded = result.ShellResult(old)
    assert decoded.modes == {}
    assert bytes(decoded.outputs["a"]) == b"x" and bytes(decoded.stdout) == b"o"


@pytest.mark.parametrize("modes", [{"a": -1}, {"a": 0o1000}, {"a": "755"}, {"a": {"s": 1}},
                                   {"a": 1.5}])
def test_bad_modes_make_the_entry_invalid(modes):
    buffer = bytes(memoryview(encode({"exit": 0, "modes": modes, "outputs": {"a": b"x"},
                                      "stdout": b""}).buffer))
    with pytest.raises(ValueError):
        result.ShellResult(buffer)


VALUES = [
    None, True, False, 0, -7, 10**30, "", "plain", 'q"uote', "back\\slash", "\x00\x1f\x7f\n\t",
    "caf\u00e9 \U0001f600", [], {}, [1, [2, [3]]], {"b": 1, "a": {"\0hex": [None, "x"]}},
]


@pytest.mark.parametrize("value", VALUES)
def test_canonical_json_is_what_json_writes_and_reads(value):
    text = result.canonical_json(value)
    assert text == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for other in (text, json.dumps(value), json.dumps(value, indent=2)):
        assert result.parse_json(other.encode("utf-8")) == json.loads(other)


def test_parse_json_hands_fractions_to_json_and_refuses_what_json_refuses():
    assert result.parse_json(b'{"a": [1.5, 2e3]}') == {"a": [1.5, 2000.0]}
    for bad in (b"", b"{", b'{"a":}', b'{"a":1,}', b"[01]", b'"\\x"', b'"a\nb"', b"[1] x",
                b"nul", b"-", b'"\\u12"', b"\xff"):
        with pytest.raises(ValueError):
            json.loads(bad)
        with pytest.raises(ValueError):
            result.parse_json(bad)


def test_the_result_codec_imports_no_json(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    probe = (
        "import sys\n"
        "from seamless.shell import result\n"
        "open('o', 'wb').write(b'x')\n"
        "data = b''.join(result.ResultBytes('o', {'f': 'o'}))\n"
        "assert bytes(result.ShellResult(data).outputs['f']) == b'x'\n"
        "print(sorted(m for m in ('json', 're', 'enum', 'struct') if m in sys.modules))\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=root), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
