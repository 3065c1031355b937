"""seamless.config (docs/configuration.md;
docs/design/configuration.md, "Errors")."""

import logging
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import types

import pytest

import seamless.config as config
from seamless import machine
from seamless.config import Setting
from seamless.config import files as config_files
from seamless.config import layers as config_layers
from seamless.errors import ConfigurationError, SeamlessWarning

ENV_NAMES = ("SEAMLESS_CACHE", "SEAMLESS_EXECUTION", "SEAMLESS_WORKERS", "SEAMLESS_NPARALLEL",
             "SEAMLESS_SCHEDULER", "XDG_CACHE_HOME")
GiB = 2**30


@pytest.fixture(autouse=True)
def fresh_config(tmp_path, monkeypatch):
    """Each test: a fresh config state, an empty cwd, no SEAMLESS_* variables, a private HOME."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work  # tests/conftest.py resets the settings before and after the test


def write(path, text):
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(text, name="seamless.yaml"):
    """Write one file into the cwd and return the error of the first read."""
    write(pathlib.Path.cwd() / name, text)
    with pytest.raises(ConfigurationError) as info:
        config.get_nparallel()
    return info.value


# --------------------------------------------------------------------------------------------
# defaults and sources


def test_defaults_without_any_configuration():
    settings = config.get_settings()
    workers = machine.snapshot().cpus
    assert settings["execution"] == Setting("process", "default")
    assert settings["workers"] == Setting(workers, "default")
    assert settings["nparallel"] == Setting(8 * workers, "default")
    assert settings["cache"] == Setting(config.default_cache_dir(), "default")
    assert settings["cache_max"] == Setting(5 * GiB, "default")
    assert settings["scheduler"] == Setting(None, "default")
    expected_memory = min(2 * GiB, machine.snapshot().physical_memory // 4)
    assert settings["memory_cache"] == Setting(expected_memory, "default")
    assert config.get_nparallel() == 8 * workers
    assert config.get("dask_client") is None
    assert sorted(settings) == ["cache", "cache_max", "execution", "memory_cache", "nparallel",
                                "scheduler", "workers"]


def test_get_settings_is_read_only_mapping_of_named_tuples():
    settings = config.get_settings()
    assert isinstance(settings, types.MappingProxyType)
    with pytest.raises(TypeError):
        settings["nparallel"] = Setting(3, "python")
    value, source = settings["workers"]
    assert (value, source) == (settings["workers"].value, settings["workers"].source)


def test_get_unknown_key_raises_key_error():
    with pytest.raises(KeyError, match="no setting 'frobnicate'"):
        config.get("frobnicate")


def test_yaml_values_and_sources(fresh_config):
    write(fresh_config / "seamless.yaml", """\
        # project settings
        - execution: spawn
        - workers: 3
        - scheduler: tcp://head:8786
        - memory_cache: 512MiB
        """)
    settings = config.get_settings()
    assert settings["execution"] == Setting("spawn", "seamless.yaml:2")
    assert settings["workers"] == Setting(3, "seamless.yaml:3")
    assert settings["nparallel"] == Setting(24, "default")
    assert settings["scheduler"] == Setting("tcp://head:8786", "seamless.yaml:4")
    assert settings["memory_cache"] == Setting(512 * 2**20, "seamless.yaml:5")
    assert config.get("execution") == "spawn"
    assert config.get("workers") == 3


def test_precedence_python_env_profile_project_default(fresh_config, monkeypatch):
    write(fresh_config / "seamless.yaml", """\
        - nparallel: 1
        - workers: 1
        - execution: spawn
        - scheduler: tcp://project:1
        """)
    write(fresh_config / "seamless.profile.yaml", """\
        - nparallel: 2
        - workers: 2
        - scheduler: tcp://profile:1
        """)
    monkeypatch.setenv("SEAMLESS_NPARALLEL", "3")
    monkeypatch.setenv("SEAMLESS_WORKERS", "3")
    config.init(nparallel=4)
    settings = config.get_settings()
    assert settings["nparallel"] == Setting(4, "python")
    assert settings["workers"] == Setting(3, "SEAMLESS_WORKERS")
    assert settings["scheduler"] == Setting("tcp://profile:1", "seamless.profile.yaml:3")
    assert settings["execution"] == Setting("spawn", "seamless.yaml:3")
    assert settings["cache"] == Setting(config.default_cache_dir(), "default")


def test_later_item_in_a_file_replaces_earlier(fresh_config):
    write(fresh_config / "seamless.yaml", "- nparallel: 2\n- nparallel: 5\n")
    assert config.get_settings()["nparallel"] == Setting(5, "seamless.yaml:2")


def test_seamless_cache_does_not_stop_the_files(fresh_config, monkeypatch):
    write(fresh_config / "seamless.profile.yaml", "- execution: spawn\n")
    monkeypatch.setenv("SEAMLESS_CACHE", "mycache")
    assert config.get("execution") == "spawn"
    assert config.get_settings()["cache"] == Setting(str(fresh_config / "mycache"),
                                                     "SEAMLESS_CACHE")


def test_empty_environment_variable_counts_as_unset(fresh_config, monkeypatch):
    write(fresh_config / "seamless.yaml", "- nparallel: 2\n- execution: spawn\n")
    monkeypatch.setenv("SEAMLESS_NPARALLEL", "")
    monkeypatch.setenv("SEAMLESS_EXECUTION", "")
    monkeypatch.setenv("SEAMLESS_CACHE", "")
    assert config.get_settings()["nparallel"] == Setting(2, "seamless.yaml:1")
    assert config.get("execution") == "spawn"
    assert config.get("cache") == config.default_cache_dir()


def test_environment_values(monkeypatch, fresh_config):
    monkeypatch.setenv("SEAMLESS_EXECUTION", "spawn")
    monkeypatch.setenv("SEAMLESS_WORKERS", " 5 ")
    monkeypatch.setenv("SEAMLESS_NPARALLEL", "07")
    monkeypatch.setenv("SEAMLESS_SCHEDULER", "tcp://h:1")
    monkeypatch.setenv("SEAMLESS_CACHE", "~/c")
    settings = config.get_settings()
    assert settings["execution"] == Setting("spawn", "SEAMLESS_EXECUTION")
    assert settings["workers"] == Setting(5, "SEAMLESS_WORKERS")
    assert settings["nparallel"] == Setting(7, "SEAMLESS_NPARALLEL")
    assert settings["scheduler"] == Setting("tcp://h:1", "SEAMLESS_SCHEDULER")
    assert settings["cache"] == Setting(os.path.join(os.environ["HOME"], "c"), "SEAMLESS_CACHE")


def test_environment_read_on_first_use_and_again_by_init(monkeypatch):
    monkeypatch.setenv("SEAMLESS_NPARALLEL", "3")
    assert config.get_nparallel() == 3
    monkeypatch.setenv("SEAMLESS_NPARALLEL", "5")
    assert config.get_nparallel() == 3
    config.init()
    assert config.get_nparallel() == 5


def test_environment_set_before_first_use_works(monkeypatch):
    config.set_nparallel(None)          # not a first use: nothing read yet
    monkeypatch.setenv("SEAMLESS_WORKERS", "6")
    assert config.get("workers") == 6


# --------------------------------------------------------------------------------------------
# the files: when, where, inheritance


def test_files_read_once_then_again_by_init_python_settings_survive(fresh_config):
    write(fresh_config / "seamless.yaml", "- nparallel: 2\n- workers: 2\n")
    config.set_nparallel(7)
    assert config.get_nparallel() == 7
    assert config.get("workers") == 2
    write(fresh_config / "seamless.yaml", "- workers: 3\n")
    assert config.get("workers") == 2
    config.init()
    assert config.get("workers") == 3
    assert config.get_settings()["nparallel"] == Setting(7, "python")
    config.set_nparallel(None)
    assert config.get_settings()["nparallel"] == Setting(24, "default")


def test_lookup_directory_is_cwd_at_read_time(fresh_config, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    write(other / "seamless.yaml", "- nparallel: 4\n")
    assert config.get_workdir() == str(fresh_config)
    monkeypatch.chdir(other)
    assert config.get_workdir() == str(other)
    assert config.get_nparallel() == 4
    monkeypatch.chdir(fresh_config)
    assert config.get_workdir() == str(other)      # the settings in force came from there
    assert config.get_nparallel() == 4
    config.init()                                  # re-read from the cwd
    assert config.get_workdir() == str(fresh_config)
    assert config.get_settings()["nparallel"].source == "default"


def test_set_workdir_rereads_on_next_use(fresh_config, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    write(project / "seamless.yaml", "- nparallel: 3\n")
    assert config.get_settings()["nparallel"].source == "default"
    g = config.generation()
    config.set_workdir(project)
    assert config.generation() > g
    assert config.get_workdir() == str(project)
    assert config.get_settings()["nparallel"] == Setting(3, "seamless.yaml:1")


def test_set_workdir_relative_path_is_made_absolute(fresh_config):
    (fresh_config / "sub").mkdir()
    write(fresh_config / "sub" / "seamless.yaml", "- workers: 2\n")
    config.set_workdir("sub")
    assert config.get_workdir() == str(fresh_config / "sub")
    assert config.get_settings()["workers"] == Setting(2, "seamless.yaml:1")


def test_init_workdir(fresh_config, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    write(project / "seamless.profile.yaml", "- workers: 2\n")
    config.init(workdir=str(project))
    assert config.get_workdir() == str(project)
    assert config.get_settings()["workers"] == Setting(2, "seamless.profile.yaml:1")


def test_inherit_from_parent_order(tmp_path, monkeypatch):
    parent = tmp_path / "parent"
    child = parent / "child"
    child.mkdir(parents=True)
    write(parent / "seamless.yaml", """\
        - nparallel: 1
        - workers: 1
        - execution: spawn
        - scheduler: tcp://parent-project:1
        """)
    write(parent / "seamless.profile.yaml", """\
        - nparallel: 2
        - workers: 2
        - scheduler: tcp://parent-profile:1
        """)
    write(child / "seamless.yaml", "- inherit_from_parent\n- nparallel: 3\n- workers: 3\n")
    write(child / "seamless.profile.yaml", "- nparallel: 4\n")
    monkeypatch.chdir(child)
    settings = config.get_settings()
    assert settings["nparallel"] == Setting(4, "seamless.profile.yaml:1")
    assert settings["workers"] == Setting(3, "seamless.yaml:3")
    assert settings["scheduler"] == Setting("tcp://parent-profile:1",
                                            f"{parent / 'seamless.profile.yaml'}:3")
    assert settings["execution"] == Setting("spawn", f"{parent / 'seamless.yaml'}:3")


def test_inherit_from_parent_in_profile_only_and_recursive(tmp_path, monkeypatch):
    top = tmp_path / "top"
    middle = top / "middle"
    bottom = middle / "bottom"
    bottom.mkdir(parents=True)
    write(top / "seamless.yaml", "- scheduler: tcp://top:1\n- workers: 1\n")
    write(middle / "seamless.yaml", "- workers: 2\n")
    write(middle / "seamless.profile.yaml", "- inherit_from_parent\n")
    write(bottom / "seamless.profile.yaml", "- nparallel: 5\n- inherit_from_parent\n")
    monkeypatch.chdir(bottom)
    settings = config.get_settings()
    assert settings["scheduler"] == Setting("tcp://top:1", f"{top / 'seamless.yaml'}:1")
    assert settings["workers"] == Setting(2, f"{middle / 'seamless.yaml'}:1")
    assert settings["nparallel"] == Setting(5, "seamless.profile.yaml:1")


def test_without_inherit_the_parent_is_ignored(tmp_path, monkeypatch):
    child = tmp_path / "p" / "c"
    child.mkdir(parents=True)
    write(tmp_path / "p" / "seamless.yaml", "- workers: 1\n")
    write(child / "seamless.yaml", "- nparallel: 2\n")
    monkeypatch.chdir(child)
    assert config.get_settings()["workers"].source == "default"


def test_inherit_from_parent_mapping_form(tmp_path, monkeypatch):
    child = tmp_path / "p" / "c"
    child.mkdir(parents=True)
    write(tmp_path / "p" / "seamless.yaml", "- workers: 1\n")
    write(child / "seamless.yaml", "- inherit_from_parent: true\n")
    monkeypatch.chdir(child)
    assert config.get("workers") == 1
    write(child / "seamless.yaml", "- inherit_from_parent: false\n")
    config.init()
    assert config.get_settings()["workers"].source == "default"
    write(child / "seamless.yaml", "- inherit_from_parent: 3\n")
    with pytest.raises(ConfigurationError) as info:
        config.init()
    assert str(info.value) == (
        "seamless.yaml, line 1: inherit_from_parent must be true or false when given a value, "
        "got 3 (or write the bare word '- inherit_from_parent')")


def test_inherit_from_parent_at_the_filesystem_root_stops():
    entries = config._collect("/", "/")   # no seamless.yaml in / here: nothing, no loop
    assert entries == []


def test_empty_file_and_comments_only_set_nothing(fresh_config):
    write(fresh_config / "seamless.yaml", "")
    write(fresh_config / "seamless.profile.yaml", "# nothing here\n\n# - nparallel: 3\n")
    assert all(s.source == "default" for s in config.get_settings().values())
    write(fresh_config / "seamless.yaml", "---\n")
    config.init()
    assert all(s.source == "default" for s in config.get_settings().values())


def test_null_means_the_default(fresh_config):
    write(fresh_config / "seamless.yaml", "- nparallel: 3\n- execution: spawn\n- cache: c\n")
    write(fresh_config / "seamless.profile.yaml", """\
        - nparallel: null
        - execution:
        - cache: ~
        - memory_cache: null
        """)
    settings = config.get_settings()
    assert settings["nparallel"] == Setting(8 * config.get("workers"), "seamless.profile.yaml:1")
    assert settings["execution"] == Setting("process", "seamless.profile.yaml:2")
    assert settings["cache"] == Setting(config.default_cache_dir(), "seamless.profile.yaml:3")
    assert settings["memory_cache"].source == "seamless.profile.yaml:4"


def test_utf8_file_with_bom(fresh_config):
    (fresh_config / "seamless.yaml").write_bytes("\ufeff- scheduler: tcp://ü:1\n".encode())
    assert config.get("scheduler") == "tcp://ü:1"


# --------------------------------------------------------------------------------------------
# cache paths


def test_relative_cache_path_is_relative_to_the_file(tmp_path, monkeypatch):
    parent = tmp_path / "parent"
    child = parent / "child"
    child.mkdir(parents=True)
    write(parent / "seamless.yaml", "- cache: ../shared-cache\n")
    write(child / "seamless.yaml", "- inherit_from_parent\n")
    monkeypatch.chdir(child)
    assert config.get("cache") == str(tmp_path / "shared-cache")
    write(child / "seamless.yaml", "- cache: .seamless-cache\n")
    config.init()
    assert config.get("cache") == str(child / ".seamless-cache")


def test_cache_tilde_true_false(fresh_config, monkeypatch, tmp_path):
    write(fresh_config / "seamless.yaml", "- cache: ~/caches/s\n")
    assert config.get("cache") == os.path.join(os.environ["HOME"], "caches", "s")
    write(fresh_config / "seamless.yaml", "- cache: true\n")
    config.init()
    assert config.get("cache") == os.path.join(os.environ["HOME"], ".cache", "seamless")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config.init()
    assert config.get("cache") == str(tmp_path / "xdg" / "seamless")
    write(fresh_config / "seamless.yaml", "- cache: false\n")
    config.init()
    assert config.get_settings()["cache"] == Setting(None, "seamless.yaml:1")


def test_seamless_cache_relative_to_cwd(fresh_config, monkeypatch):
    monkeypatch.setenv("SEAMLESS_CACHE", "rel/dir")
    assert config.get("cache") == str(fresh_config / "rel" / "dir")


def test_init_cache(fresh_config, monkeypatch):
    monkeypatch.setenv("SEAMLESS_CACHE", "/from/env")
    config.init(cache="here")
    assert config.get_settings()["cache"] == Setting(str(fresh_config / "here"), "python")
    config.init(cache=True)
    assert config.get("cache") == os.path.join(os.environ["HOME"], ".cache", "seamless")
    config.init(cache=False)
    assert config.get_settings()["cache"] == Setting(None, "python")
    config.init()              # None: not set by this call, the earlier False stays
    assert config.get("cache") is None


# --------------------------------------------------------------------------------------------
# the error table of docs/configuration.md, "Errors"


def test_error_unknown_key(fresh_config):
    err = config_error("- nparallel: 2\n- frobnicate: 1\n")
    assert isinstance(err, ValueError)
    assert str(err) == ("seamless.yaml, line 2: unknown key 'frobnicate' (accepted keys: cache, "
                        "cache_max, execution, inherit_from_parent, memory_cache, nparallel, "
                        "scheduler, workers)")
    assert (err.source, err.line, err.key, err.value) == (
        str(fresh_config / "seamless.yaml"), 2, "frobnicate", 1)


def test_error_unknown_bare_word(fresh_config):
    err = config_error("- frobnicate\n")
    assert str(err).startswith("seamless.yaml, line 1: unknown key 'frobnicate' (accepted keys:")


def test_error_known_key_without_value(fresh_config):
    err = config_error("- nparallel\n")
    assert str(err) == ("seamless.yaml, line 1: key 'nparallel' needs a value: write "
                        "'- nparallel: VALUE' ('- nparallel: null' for the default)")
    assert err.key == "nparallel"


def test_error_bad_value(fresh_config):
    err = config_error("- nparallel: -3\n", name="seamless.profile.yaml")
    assert str(err) == "seamless.profile.yaml, line 1: nparallel must be a positive integer, got -3"
    assert (err.source, err.line, err.key, err.value) == (
        str(fresh_config / "seamless.profile.yaml"), 1, "nparallel", -3)


@pytest.mark.parametrize("text, shown", [
    ('"4"', "'4' (a str; write 4 without quotes)"),
    ("4.0", "4.0 (a float; write 4)"),
    ("true", "True (a bool)"),
    ("0", "0"),
    ("-1", "-1"),
    ("[4]", "[4] (a list)"),
])
@pytest.mark.parametrize("key", ["workers", "nparallel"])
def test_error_integers_are_yaml_integers(key, text, shown):
    err = config_error(f"- {key}: {text}\n")
    assert str(err) == f"seamless.yaml, line 1: {key} must be a positive integer, got {shown}"
    assert err.key == key


def test_error_bad_choice():
    err = config_error("- execution: threads\n")
    assert str(err) == ("seamless.yaml, line 1: execution must be one of process, spawn, remote, "
                        "got 'threads'")
    assert (err.line, err.key, err.value) == (1, "execution", "threads")


@pytest.mark.parametrize("text, message", [
    ("- scheduler: 8786\n", "scheduler must be a Dask scheduler address such as "
                            "'tcp://host:8786', got 8786"),
    ("- cache: 3\n", "cache must be a directory path, true or false, got 3"),
    ("- cache: ''\n", "cache must be a directory path, true or false, got ''"),
])
def test_error_bad_scheduler_and_cache(text, message):
    assert str(config_error(text)) == f"seamless.yaml, line 1: {message}"


def test_error_not_a_list():
    err = config_error("nparallel: 4\nworkers: 2\n")
    assert str(err) == ("seamless.yaml: the file must be a YAML list of single-key items such "
                        "as '- nparallel: 4', got a mapping")
    assert err.line is None


def test_error_not_a_list_scalar():
    err = config_error("nparallel 4\n")
    assert str(err) == ("seamless.yaml: the file must be a YAML list of single-key items such "
                        "as '- nparallel: 4', got a single value 'nparallel 4'")


def test_error_bad_item_two_keys():
    err = config_error("- execution: spawn\n- cache: c\n- nparallel: 4\n  workers: 2\n")
    assert str(err) == ("seamless.yaml, line 3: each item must have exactly one key, got 2 "
                        "(nparallel, workers); write them as two items")
    assert err.line == 3
    assert err.value == {"nparallel": 4, "workers": 2}


@pytest.mark.parametrize("text, got", [
    ("- {}\n", "each item must have exactly one key, got 0 (an empty mapping)"),
    ("- [nparallel, 4]\n", "each item must be a single-key mapping such as '- nparallel: 4', "
                           "got a list"),
    ("- 4\n", "each item must be a single-key mapping such as '- nparallel: 4', got 4"),
])
def test_error_other_bad_items(text, got):
    assert str(config_error(text)) == f"seamless.yaml, line 1: {got}"


def test_error_yaml_syntax():
    err = config_error("- nparallel: 2\n- workers: 2\n- cache: c\n- exe: a: b\n")
    assert str(err) == ("seamless.yaml, line 4, column 9: not valid YAML: mapping values are not "
                        "allowed here")
    assert err.line == 4


def test_error_yaml_syntax_with_context():
    err = config_error("- cache: [a\n")
    assert str(err).startswith("seamless.yaml, line 2, column 1: not valid YAML: expected ',' "
                               "or ']', but got '<stream end>' (while parsing a flow sequence "
                               "started at line 1, column 10)")


def test_error_two_documents():
    err = config_error("- nparallel: 2\n---\n- workers: 2\n")
    assert str(err).startswith("seamless.yaml, line 2, column 1: not valid YAML: but found "
                               "another document (expected a single document in the stream")


def test_error_no_python_objects():
    err = config_error("- nparallel: 2\n- cache: !!python/object/apply:os.getcwd []\n")
    assert str(err).startswith("seamless.yaml, line 2, column 10: not valid YAML: could not "
                               "determine a constructor for the tag "
                               "'tag:yaml.org,2002:python/object/apply:os.getcwd'")


def test_error_unreadable(fresh_config):
    (fresh_config / "seamless.yaml").mkdir()
    with pytest.raises(ConfigurationError) as info:
        config.get_nparallel()
    assert str(info.value) == "seamless.yaml: cannot read the file ([Errno 21] Is a directory)"
    assert (info.value.source, info.value.line) == (str(fresh_config / "seamless.yaml"), None)


def test_error_unreadable_permission_denied(fresh_config, monkeypatch):
    # root reads any file, so the refusal of open() is simulated for the YAML reader only
    write(fresh_config / "seamless.yaml", "- nparallel: 2\n")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(config_files, "open", refuse, raising=False)
    with pytest.raises(ConfigurationError) as info:
        config.get_nparallel()
    assert str(info.value) == "seamless.yaml: cannot read the file ([Errno 13] Permission denied)"


def test_error_not_utf8(fresh_config):
    (fresh_config / "seamless.yaml").write_bytes(b"- cache: caf\xe9\n")
    with pytest.raises(ConfigurationError) as info:
        config.get_nparallel()
    assert str(info.value) == (
        "seamless.yaml: cannot read the file as UTF-8 ('utf-8' codec can't decode byte 0xe9 in "
        "position 12: invalid continuation byte); save it as UTF-8")


@pytest.mark.parametrize("key, what", [
    ("cluster", "an upstream Seamless cluster"),
    ("clusters", "upstream Seamless clusters"),
    ("queue", "an upstream Seamless job queue"),
])
def test_error_upstream_only_keys(key, what):
    err = config_error(f"- nparallel: 2\n- workers: 2\n- cache: c\n- execution: spawn\n"
                       f"- {key}: mycluster\n")
    assert str(err) == (f"seamless.yaml, line 5: key '{key}' names {what}, which this version "
                        f"does not have (for a Dask cluster use '- execution: remote' and "
                        f"'- scheduler: tcp://host:8786')")
    assert (err.line, err.key, err.value) == (5, key, "mycluster")


def test_error_upstream_remote_other_than_daskserver():
    err = config_error("- remote: jobserver\n")
    assert str(err) == ("seamless.yaml, line 1: key 'remote' with value 'jobserver' names an "
                        "upstream Seamless remote service, which this version does not have "
                        "(for a Dask cluster use '- execution: remote' and "
                        "'- scheduler: tcp://host:8786')")
    assert (err.key, err.value) == ("remote", "jobserver")


@pytest.mark.parametrize("var, raw, message", [
    ("SEAMLESS_WORKERS", "all", "workers must be a positive integer, got 'all'"),
    ("SEAMLESS_WORKERS", "0", "workers must be a positive integer, got '0'"),
    ("SEAMLESS_NPARALLEL", "-2", "nparallel must be a positive integer, got '-2'"),
    ("SEAMLESS_NPARALLEL", "4.0", "nparallel must be a positive integer, got '4.0'"),
    ("SEAMLESS_EXECUTION", "threads", "execution must be one of process, spawn, remote, "
                                      "got 'threads'"),
])
def test_error_environment(monkeypatch, var, raw, message):
    monkeypatch.setenv(var, raw)
    with pytest.raises(ConfigurationError) as info:
        config.get_nparallel()
    assert str(info.value) == f"environment variable {var}: {message}"
    assert (info.value.source, info.value.line, info.value.value) == (var, None, raw)


def test_error_missing_scheduler_from_environment(monkeypatch):
    monkeypatch.setenv("SEAMLESS_EXECUTION", "remote")
    with pytest.raises(ConfigurationError) as info:
        config.get_nparallel()
    assert str(info.value) == (
        "execution is 'remote' (from SEAMLESS_EXECUTION) but no Dask scheduler is set (set "
        "SEAMLESS_SCHEDULER, add '- scheduler: tcp://host:8786' to seamless.yaml, or call "
        "seamless.config.init(dask_client=client))")
    assert (info.value.source, info.value.key, info.value.value) == (
        "SEAMLESS_EXECUTION", "execution", "remote")


def test_error_missing_scheduler_from_file_and_python(fresh_config):
    err = config_error("- execution: remote\n")
    assert str(err).startswith("execution is 'remote' (from seamless.yaml, line 1) but no Dask")
    assert (err.source, err.line) == (str(fresh_config / "seamless.yaml"), 1)
    (fresh_config / "seamless.yaml").unlink()
    with pytest.raises(ConfigurationError, match=r"from seamless\.config\.init\(\)"):
        config.init(execution="remote")


def test_remote_needs_dask(monkeypatch):
    monkeypatch.setattr(config_layers, "_dask_available", lambda: False)
    monkeypatch.setenv("SEAMLESS_EXECUTION", "remote")
    monkeypatch.setenv("SEAMLESS_SCHEDULER", "tcp://head:8786")
    with pytest.raises(ConfigurationError) as info:
        config.get("execution")
    assert str(info.value) == 'execution: remote needs Dask: pip install "seamless[dask]"'
    monkeypatch.setattr(config_layers, "_dask_available", lambda: True)
    assert config.get("execution") == "remote"
    assert config.get("scheduler") == "tcp://head:8786"


def test_a_failed_read_changes_nothing_and_is_retried(fresh_config):
    write(fresh_config / "seamless.yaml", "- workers: two\n")
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="workers must be a positive integer"):
            config.get("workers")
    write(fresh_config / "seamless.yaml", "- workers: 2\n")
    assert config.get("workers") == 2
    write(fresh_config / "seamless.yaml", "- workers: two\n")
    with pytest.raises(ConfigurationError):
        config.init(nparallel=3)
    assert config.get("workers") == 2          # the settings in force stay
    assert config.get_settings()["nparallel"].source == "default"


def test_parent_file_named_by_absolute_path(tmp_path, monkeypatch):
    child = tmp_path / "p" / "c"
    child.mkdir(parents=True)
    write(tmp_path / "p" / "seamless.yaml", "- nparallel: 0\n")
    write(child / "seamless.yaml", "- inherit_from_parent\n")
    monkeypatch.chdir(child)
    with pytest.raises(ConfigurationError) as info:
        config.get_nparallel()
    path = str(tmp_path / "p" / "seamless.yaml")
    assert str(info.value) == f"{path}, line 1: nparallel must be a positive integer, got 0"
    assert info.value.source == path


def test_configuration_error_pickles_with_its_attributes():
    import pickle
    err = config_error("- execution: threads\n")
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.source, copy.line, copy.key, copy.value) == (
        str(err), err.source, err.line, err.key, err.value)


# --------------------------------------------------------------------------------------------
# keys of upstream Seamless that are accepted and ignored


def test_upstream_keys_warn_once_per_file_naming_the_key(fresh_config):
    write(fresh_config / "seamless.yaml", """\
        - project: myproject
        - subproject: sub
        - project: again
        - nparallel: 2
        """)
    write(fresh_config / "seamless.profile.yaml", "- node: n1\n- record\n")
    with pytest.warns(SeamlessWarning) as record:
        assert config.get_nparallel() == 2
    messages = [str(w.message) for w in record]
    assert messages == [
        "seamless.yaml, line 1: key 'project' is an upstream Seamless setting and is ignored here",
        "seamless.yaml, line 2: key 'subproject' is an upstream Seamless setting and is ignored "
        "here",
        "seamless.profile.yaml, line 1: key 'node' is an upstream Seamless setting and is ignored "
        "here",
        "seamless.profile.yaml, line 2: key 'record' is an upstream Seamless setting and is "
        "ignored here",
    ]
    assert [w.filename for w in record] == [__file__] * 4   # stacklevel: the user's call


def test_upstream_warning_not_repeated_on_reread(fresh_config, caplog):
    write(fresh_config / "seamless.yaml", "- project: p\n")
    with pytest.warns(SeamlessWarning, match="key 'project'"):
        config.get_nparallel()
    with caplog.at_level(logging.DEBUG, logger="seamless"):
        config.init()                   # no warning: filterwarnings=error would raise it
    assert "key 'project' is an upstream Seamless setting" in caplog.text


def test_persistent_warns_to_use_cache(fresh_config):
    write(fresh_config / "seamless.yaml", "- persistent: true\n")
    with pytest.warns(SeamlessWarning) as record:
        config.get_nparallel()
    assert [str(w.message) for w in record] == [
        "seamless.yaml, line 1: key 'persistent' is an upstream Seamless setting and is ignored "
        "here; the persistent cache is on by default ('- cache: DIR' chooses its directory, "
        "'- cache: off' turns it off)"]
    assert config.get("cache") == config.default_cache_dir()


def test_remote_daskserver_warns(fresh_config):
    write(fresh_config / "seamless.yaml", "- nparallel: 2\n- remote: daskserver\n")
    with pytest.warns(SeamlessWarning) as record:
        config.get_nparallel()
    assert [str(w.message) for w in record] == [
        "seamless.yaml, line 2: 'remote: daskserver' is an upstream Seamless setting and is "
        "ignored here; Dask is the only remote backend (use '- execution: remote' and "
        "'- scheduler: tcp://host:8786')"]
    assert config.get("execution") == "process"


def test_stage_blocks_are_skipped_with_a_warning(fresh_config):
    write(fresh_config / "seamless.yaml", """\
        - nparallel: 2
        - stage build:
            - nparallel: 9
            - frobnicate: 1
        - workers: 2
        """)
    with pytest.warns(SeamlessWarning) as record:
        assert config.get_nparallel() == 2
    assert [str(w.message) for w in record] == [
        "seamless.yaml, line 2: 'stage build' block is an upstream Seamless stage and is "
        "skipped; there are no stages here"]
    assert config.get("workers") == 2


# --------------------------------------------------------------------------------------------
# memory_cache


@pytest.mark.parametrize("text, expected", [
    ("1000", 1000),
    ("0", 0),
    ("'512MiB'", 512 * 2**20),
    ("2GB", 2 * 10**9),
    ("1.5GiB", 3 * 2**29),
    ("100 KB", 100_000),
    ("3tib", 3 * 2**40),
    ("7B", 7),
    ("1TB", 10**12),
    ("10%", 100_000),
    ("12.5%", 125_000),
])
def test_memory_cache_values(fresh_config, text, expected):
    write(fresh_config / "seamless.yaml", f"- memory_cache: {text}\n")
    with machine.override(physical_memory=1_000_000):
        assert config.get_settings()["memory_cache"] == Setting(expected, "seamless.yaml:1")


@pytest.mark.parametrize("text, shown", [
    ("-1", "-1"),
    ("lots", "'lots'"),
    ("'1024'", "'1024'"),
    ("5 parsecs", "'5 parsecs'"),
    ("150%", "'150%' (a percentage is at most 100%)"),
    ("1.5", "1.5 (a float)"),
    ("true", "True (a bool)"),
])
def test_memory_cache_bad_values(text, shown):
    err = config_error(f"- memory_cache: {text}\n")
    assert str(err) == (
        "seamless.yaml, line 1: memory_cache must be a number of bytes, a size with a unit such "
        "as '512MiB' or '2GB' (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), or a percentage of "
        f"physical memory such as '10%', got {shown}")


@pytest.mark.parametrize("physical, expected", [(64 * GiB, 2 * GiB), (4 * GiB, GiB)])
def test_memory_cache_default_is_min_of_2gib_and_a_quarter(physical, expected):
    with machine.override(physical_memory=physical):
        assert config.get("memory_cache") == expected


def test_init_memory_cache():
    with machine.override(physical_memory=8 * GiB):
        config.init(memory_cache="1GiB")
        assert config.get_settings()["memory_cache"] == Setting(GiB, "python")
        config.init(memory_cache="25%")
        assert config.get("memory_cache") == 2 * GiB
        config.init(memory_cache=123)
        assert config.get("memory_cache") == 123
        with pytest.raises(ValueError, match=r"got 'big' \(use seamless\.config\.init"
                                             r"\(memory_cache='512MiB'\)\)$"):
            config.init(memory_cache="big")
        with pytest.raises(TypeError, match=r"got 1\.5 \(a float; use seamless\.config\.init"):
            config.init(memory_cache=1.5)
        with pytest.raises(TypeError, match=r"got True \(a bool;"):
            config.init(memory_cache=True)
        assert config.get("memory_cache") == 123


# --------------------------------------------------------------------------------------------
# Python API argument checks: TypeError / ValueError with the exact texts


def test_set_nparallel_messages():
    with pytest.raises(ValueError) as info:
        config.set_nparallel(0)
    assert str(info.value) == ("nparallel must be a positive integer, got 0 "
                               "(use seamless.config.set_nparallel(N))")
    assert not isinstance(info.value, ConfigurationError)
    with pytest.raises(TypeError) as info:
        config.set_nparallel("4")
    assert str(info.value) == ("nparallel must be a positive integer, got '4' "
                               "(a str; use seamless.config.set_nparallel(4))")
    with pytest.raises(TypeError) as info:
        config.set_nparallel(True)
    assert str(info.value) == ("nparallel must be a positive integer, got True "
                               "(a bool; use seamless.config.set_nparallel(N))")
    with pytest.raises(TypeError) as info:
        config.set_nparallel(4.0)
    assert str(info.value) == ("nparallel must be a positive integer, got 4.0 "
                               "(a float; use seamless.config.set_nparallel(4))")
    with pytest.raises(ValueError, match=r"got -2 \(use"):
        config.set_nparallel(-2)


def test_set_nparallel_and_clear(monkeypatch):
    monkeypatch.setenv("SEAMLESS_NPARALLEL", "3")
    config.set_nparallel(5)
    assert config.get_nparallel() == 5
    assert config.get_settings()["nparallel"] == Setting(5, "python")
    config.set_nparallel(None)
    assert config.get_settings()["nparallel"] == Setting(3, "SEAMLESS_NPARALLEL")


def test_set_nparallel_accepts_index_types():
    class Two:
        def __index__(self):
            return 2
    config.set_nparallel(Two())
    assert config.get_nparallel() == 2


def test_workdir_messages(fresh_config):
    with pytest.raises(ValueError) as info:
        config.set_workdir("/data/proj")
    assert str(info.value) == ("workdir must be an existing directory, got '/data/proj' "
                               "(no such directory)")
    write(fresh_config / "f.txt", "x")
    with pytest.raises(ValueError, match=r"got 'f\.txt' \(not a directory\)$"):
        config.set_workdir("f.txt")
    with pytest.raises(TypeError) as info:
        config.set_workdir(3)
    assert str(info.value) == ("workdir must be an existing directory, got 3 (an int; pass a "
                               "path as a str or os.PathLike)")
    with pytest.raises(ValueError, match="no such directory"):
        config.init(workdir="/data/proj")


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(nparallel=0), ValueError,
     "nparallel must be a positive integer, got 0 (use seamless.config.init(nparallel=N))"),
    (dict(workers="4"), TypeError,
     "workers must be a positive integer, got '4' (a str; use seamless.config.init(workers=4))"),
    (dict(workers=False), TypeError,
     "workers must be a positive integer, got False (a bool; use "
     "seamless.config.init(workers=N))"),
    (dict(execution="threads"), ValueError,
     "execution must be one of process, spawn, remote, got 'threads' (use "
     "seamless.config.init(execution='spawn'))"),
    (dict(execution=1), TypeError,
     "execution must be one of process, spawn, remote, got 1 (an int; use "
     "seamless.config.init(execution='spawn'))"),
    (dict(scheduler=8786), TypeError,
     "scheduler must be a Dask scheduler address such as 'tcp://host:8786', got 8786 (an int; "
     "use seamless.config.init(scheduler='tcp://host:8786'))"),
    (dict(scheduler=""), ValueError,
     "scheduler must be a Dask scheduler address such as 'tcp://host:8786', got '' (use "
     "seamless.config.init(scheduler='tcp://host:8786'))"),
    (dict(cache=3), TypeError,
     "cache must be a directory path, True or False, got 3 (an int; use "
     "seamless.config.init(cache='DIR') or init(cache=True))"),
    (dict(cache=""), ValueError,
     "cache must be a directory path, True or False, got '' (use "
     "seamless.config.init(cache='DIR') or init(cache=True))"),
    (dict(dask_client="tcp://h:1"), TypeError,
     "dask_client must be a distributed.Client, got 'tcp://h:1' (a str; for a scheduler "
     "address use seamless.config.init(scheduler='tcp://h:1'))"),
    (dict(dask_client=3), TypeError,
     "dask_client must be a distributed.Client, got 3 (an int; use "
     "seamless.config.init(dask_client=distributed.Client(address)))"),
])
def test_init_argument_checks(kwargs, exc, message):
    g = config.generation()
    with pytest.raises(exc) as info:
        config.init(**kwargs)
    assert str(info.value) == message
    assert not isinstance(info.value, ConfigurationError)
    assert config.generation() == g                  # a refused call changes nothing
    assert all(s.source == "default" for s in config.get_settings().values())


class FakeClient:
    def submit(self, *args, **kwargs):
        raise AssertionError("not called by seamless.config")


def test_init_dask_client_implies_remote():
    client = FakeClient()
    config.init(dask_client=client)
    assert config.get_settings()["execution"] == Setting("remote", "python")
    assert config.get("dask_client") is client
    assert config.get("scheduler") is None
    with pytest.raises(ValueError, match=r"dask_client implies execution='remote', got "
                                         r"execution='spawn'"):
        config.init(dask_client=client, execution="spawn")
    with pytest.raises(ValueError, match="init\\(\\) got both scheduler='tcp://h:1' and a "
                                         "dask_client; pass one"):
        config.init(dask_client=client, scheduler="tcp://h:1")


def test_init_keywords_set_python_rank(monkeypatch):
    monkeypatch.setenv("SEAMLESS_EXECUTION", "process")
    config.init(execution="spawn", workers=2, scheduler="tcp://h:1")
    settings = config.get_settings()
    assert settings["execution"] == Setting("spawn", "python")
    assert settings["workers"] == Setting(2, "python")
    assert settings["nparallel"] == Setting(16, "default")
    assert settings["scheduler"] == Setting("tcp://h:1", "python")
    config.init(workers=1)                       # the others stay
    assert config.get("execution") == "spawn"
    assert config.get_nparallel() == 8


# --------------------------------------------------------------------------------------------
# generation, _set_python, thread safety


def test_generation_bumps_on_every_change(fresh_config, tmp_path):
    g0 = config.generation()
    config.get_nparallel()                       # first read
    g1 = config.generation()
    assert g1 > g0
    config.get_nparallel()
    config.get_settings()
    assert config.generation() == g1             # reads change nothing
    config.set_nparallel(3)
    g2 = config.generation()
    assert g2 > g1
    config.init()
    g3 = config.generation()
    assert g3 > g2
    config.set_workdir(tmp_path)
    g4 = config.generation()
    assert g4 > g3
    config._set_python("workers", 2)
    g5 = config.generation()
    assert g5 > g4
    config._reset_for_tests()
    assert config.generation() > g5


def test_set_python_workers_for_spawn(monkeypatch):
    monkeypatch.setenv("SEAMLESS_WORKERS", "3")
    assert config.get("workers") == 3
    config._set_python("workers", 5)
    assert config.get_settings()["workers"] == Setting(5, "python")
    assert config.get_nparallel() == 40
    config._set_python("workers", None)
    assert config.get_settings()["workers"] == Setting(3, "SEAMLESS_WORKERS")
    with pytest.raises(KeyError):
        config._set_python("frobnicate", 1)


def test_set_python_before_first_read_waits_for_it(fresh_config):
    config._set_python("workers", 4)
    write(fresh_config / "seamless.yaml", "- nparallel: 2\n")
    assert config.get("workers") == 4
    assert config.get_nparallel() == 2


def test_set_python_conflict_changes_nothing():
    config.get_nparallel()
    g = config.generation()
    with pytest.raises(ConfigurationError, match="no Dask scheduler is set"):
        config._set_python("execution", "remote")
    assert config.get("execution") == "process"
    assert config.generation() == g


def test_concurrent_first_use_reads_once(fresh_config):
    write(fresh_config / "seamless.yaml", "- nparallel: 3\n")
    g = config.generation()
    results = []
    barrier = threading.Barrier(8)

    def use():
        barrier.wait()
        results.append(config.get_nparallel())

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [3] * 8
    assert config.generation() == g + 1


def test_concurrent_set_and_get_see_whole_snapshots():
    config.get_nparallel()
    stop = threading.Event()
    seen = []

    def reader():
        while not stop.is_set():
            s = config.get_settings()
            seen.append((s["nparallel"].value, s["nparallel"].source))

    t = threading.Thread(target=reader)
    t.start()
    for n in range(1, 200):
        config.set_nparallel(n)
    stop.set()
    t.join()
    workers = config.get("workers")
    assert all(source == "python" or value == 8 * workers for value, source in seen)
    assert config.get_nparallel() == 199


# --------------------------------------------------------------------------------------------
# command_cache_dir


def test_command_cache_dir_default_xdg_and_home(fresh_config, monkeypatch, tmp_path):
    assert config.command_cache_dir() == os.path.join(os.environ["HOME"], ".cache", "seamless")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config.command_cache_dir() == str(tmp_path / "xdg" / "seamless")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert config.command_cache_dir() == os.path.join(os.environ["HOME"], ".cache", "seamless")
    assert not os.path.exists(config.command_cache_dir())


def test_command_cache_dir_env_first(fresh_config, monkeypatch):
    write(fresh_config / "seamless.yaml", "- cache: from-file\n")
    monkeypatch.setenv("SEAMLESS_CACHE", "rel")
    assert config.command_cache_dir() == str(fresh_config / "rel")


def test_command_cache_dir_from_files(tmp_path, monkeypatch, fresh_config):
    write(fresh_config / "seamless.yaml", "- cache: from-project\n")
    assert config.command_cache_dir() == str(fresh_config / "from-project")
    write(fresh_config / "seamless.profile.yaml", "- cache: /abs/from-profile\n")
    assert config.command_cache_dir() == "/abs/from-profile"
    write(fresh_config / "seamless.profile.yaml", "- cache: false\n")
    assert config.command_cache_dir() == os.path.join(os.environ["HOME"], ".cache", "seamless")
    config.init(cache=str(tmp_path / "python-only"))  # Python settings are not the commands'
    assert config.command_cache_dir() == os.path.join(os.environ["HOME"], ".cache", "seamless")


def test_command_cache_dir_inherits(tmp_path, monkeypatch):
    child = tmp_path / "p" / "c"
    child.mkdir(parents=True)
    write(tmp_path / "p" / "seamless.yaml", "- cache: c-dir\n")
    write(child / "seamless.profile.yaml", "- inherit_from_parent\n")
    monkeypatch.chdir(child)
    assert config.command_cache_dir() == str(tmp_path / "p" / "c-dir")


def test_command_cache_dir_reports_file_errors(fresh_config):
    write(fresh_config / "seamless.yaml", "- cache: [\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        config.command_cache_dir()


# --------------------------------------------------------------------------------------------
# light import


def run_python(code, cwd, env_extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_light_import_without_yaml_files(fresh_config):
    code = textwrap.dedent("""\
        import sys
        import seamless.config
        assert seamless.config.get_nparallel() >= 1
        seamless.config.command_cache_dir()
        heavy = [m for m in ("numpy", "yaml", "seamless._ipc") if m in sys.modules]
        print(heavy)
        """)
    assert run_python(code, fresh_config).strip() == "[]"


def test_yaml_imported_only_when_a_file_exists(fresh_config):
    write(fresh_config / "seamless.yaml", "- nparallel: 2\n")
    code = ("import sys, seamless.config\n"
            "assert 'yaml' not in sys.modules\n"
            "print(seamless.config.get_nparallel(), 'yaml' in sys.modules)\n")
    assert run_python(code, fresh_config).split() == ["2", "True"]


# --------------------------------------------------------------------------------------------
# machine facts behind the defaults (seamless.machine itself: test_machine.py)


def test_usable_cpu_count_is_the_workers_default():
    with machine.override(cpus=7):
        assert config.get_settings()["workers"] == Setting(7, "default")
        assert config.get_nparallel() == 56


# --------------------------------------------------------------------------------------------
# did-you-mean and the missing colon (docs/configuration.md, "Errors")


@pytest.mark.parametrize("key", ["workrs", "Workers", "WORKERS", "wokers"])
def test_error_unknown_key_suggests_the_close_one(fresh_config, key):
    err = config_error(f"- {key}: 2\n")
    assert str(err) == (f"seamless.yaml, line 1: unknown key {key!r}; did you mean 'workers'? "
                        "(accepted keys: cache, cache_max, execution, inherit_from_parent, "
                        "memory_cache, nparallel, scheduler, workers)")
    assert (err.line, err.key, err.value) == (1, key, 2)


def test_error_unknown_bare_word_suggests_the_close_one(fresh_config):
    err = config_error("- inherit_from_paren\n")
    assert "did you mean 'inherit_from_parent'?" in str(err)


@pytest.mark.parametrize("item, fix", [("nparallel 4", "nparallel: 4"),
                                       ("Workers  2", "workers: 2"),
                                       ("cache /tmp/c", "cache: /tmp/c")])
def test_error_missing_colon_says_so(fresh_config, item, fix):
    err = config_error(f"- execution: process\n- {item}\n")
    assert str(err) == (f"seamless.yaml, line 2: '- {item}' lacks the colon after the key; "
                        f"write '- {fix}' (YAML reads {item!r} as one word)")
    assert err.line == 2


def test_error_is_raised_without_the_parser_frames(fresh_config):
    """What the user sees ends at the settings lookup, not inside the YAML parser."""
    import traceback

    write(fresh_config / "seamless.yaml", "- workrs: 2\n")
    with pytest.raises(ConfigurationError) as info:
        config.get("workers")
    err = info.value
    assert err.__cause__ is None and err.__suppress_context__
    functions = [frame.name for frame in traceback.extract_tb(err.__traceback__)]
    assert "_ensure_loaded" in functions
    assert not {"_read_sources", "_parse_file", "parse", "item"} & set(functions)
