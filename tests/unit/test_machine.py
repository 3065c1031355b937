"""seamless.machine: the one reader of CPU, memory and resource limits
(docs/design/configuration.md, "Machine facts").

The cgroup tests point the readers at fake trees under tmp_path; the snapshot tests check the
cache and ``override()`` that the configuration tests rely on."""

import os
import resource
import subprocess
import sys

import pytest

from seamless import machine


def fake_cgroup(tmp_path, files, proc="0::/\n"):
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    root.mkdir(exist_ok=True)
    proc_file = tmp_path / "proc-self-cgroup"
    proc_file.write_text(proc)
    return str(root), str(proc_file)


def affinity():
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cpu_max, expected", [
    ("max 100000\n", None),
    ("200000 100000\n", 2),
    ("150000 100000\n", 2),
    ("50000 100000\n", 1),
    ("1000 100000\n", 1),
    ("6400000 100000\n", 64),
])
def test_usable_cpu_count_cgroup_v2(tmp_path, cpu_max, expected):
    root, proc = fake_cgroup(tmp_path, {"cpu.max": cpu_max})
    count = machine.usable_cpu_count(cgroup_root=root, proc_cgroup=proc)
    assert count == (affinity() if expected is None else min(affinity(), expected))
    assert count >= 1


def test_usable_cpu_count_cgroup_v2_nested_lowest_wins(tmp_path):
    root, proc = fake_cgroup(tmp_path, {"cpu.max": "max 100000\n",
                                        "user.slice/job/cpu.max": "100000 100000\n"},
                             proc="0::/user.slice/job\n")
    assert machine.usable_cpu_count(cgroup_root=root, proc_cgroup=proc) == 1


@pytest.mark.parametrize("quota, period, expected", [
    ("-1", "100000", None),
    ("100000", "100000", 1),
    ("250000", "100000", 3),
    ("20000", "100000", 1),
])
def test_usable_cpu_count_cgroup_v1(tmp_path, quota, period, expected):
    root, proc = fake_cgroup(tmp_path, {"cpu/cpu.cfs_quota_us": quota,
                                        "cpu/cpu.cfs_period_us": period},
                             proc="4:cpu,cpuacct:/\n")
    count = machine.usable_cpu_count(cgroup_root=root, proc_cgroup=proc)
    assert count == (affinity() if expected is None else min(affinity(), expected))


def test_usable_cpu_count_without_cgroup_files(tmp_path):
    root, proc = fake_cgroup(tmp_path, {})
    assert machine.usable_cpu_count(cgroup_root=root, proc_cgroup=proc) == affinity()
    assert machine.usable_cpu_count(cgroup_root=str(tmp_path / "none"),
                                     proc_cgroup=str(tmp_path / "none")) == affinity()


def test_physical_memory_from_meminfo_and_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384 kB\nMemFree:   100 kB\n")
    root, proc = fake_cgroup(tmp_path, {})
    assert machine.physical_memory(root, str(meminfo), proc) == 16384 * 1024
    root, proc = fake_cgroup(tmp_path, {"memory.max": "max\n"})
    assert machine.physical_memory(root, str(meminfo), proc) == 16384 * 1024
    root, proc = fake_cgroup(tmp_path, {"memory.max": "1048576\n"})
    assert machine.physical_memory(root, str(meminfo), proc) == 1048576
    v1 = tmp_path / "v1"
    v1.mkdir()
    root, proc = fake_cgroup(v1, {"memory/memory.limit_in_bytes": "9223372036854771712\n",
                                  "memory/job/memory.limit_in_bytes": "2097152\n"},
                             proc="4:memory:/job\n")
    assert machine.physical_memory(root, str(meminfo), proc) == 2097152


def test_available_memory_names_the_binding_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 16384 kB\nMemAvailable: 8192 kB\n")
    root, proc = fake_cgroup(tmp_path, {"memory.max": "4194304\n", "memory.current": "1048576\n"})
    assert machine.available_memory(root, str(meminfo), proc) == (3145728, "memory.max", 4194304)
    root, proc = fake_cgroup(tmp_path, {"memory.max": "max\n"})
    assert machine.available_memory(root, str(meminfo), proc) == (8192 * 1024, "MemAvailable",
                                                                  None)
    none = str(tmp_path / "none")
    assert machine.available_memory(none, none, none) is None


def test_available_memory_follows_the_patched_paths(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable: 1024 kB\n")
    monkeypatch.setattr(machine, "MEMINFO", str(meminfo))
    monkeypatch.setattr(machine, "PROC_CGROUP", str(tmp_path / "none"))
    assert machine.available_memory() == (1024 * 1024, "MemAvailable", None)
    meminfo.write_text("MemAvailable: 2048 kB\n")
    assert machine.available_memory() == (2048 * 1024, "MemAvailable", None), "never cached"


def test_memory_limit_files_cover_every_ancestor(tmp_path):
    proc = tmp_path / "self"
    proc.write_text("0::/a/b\n4:memory:/job\n")
    files = machine.memory_limit_files("/cg", str(proc))
    limits = [limit for limit, _, _ in files]
    assert limits[:3] == ["/cg/a/b/memory.max", "/cg/a/memory.max", "/cg/memory.max"]
    assert "/cg/unified/a/b/memory.max" in limits
    assert limits[-2:] == ["/cg/memory/job/memory.limit_in_bytes",
                           "/cg/memory/memory.limit_in_bytes"]


def test_snapshot_is_read_once_and_matches_the_readers():
    machine.refresh()
    first = machine.snapshot()
    assert machine.snapshot() is first
    assert first.cpus == machine.usable_cpu_count() >= 1
    assert first.physical_memory == machine.physical_memory()
    assert 0 < first.physical_memory <= first.total_memory
    assert first.page_size == os.sysconf("SC_PAGE_SIZE")
    assert first.iov_max >= 16
    with pytest.raises(AttributeError):
        first.cpus = 3  # type: ignore[misc]


def test_override_replaces_fields_for_the_block_only():
    real = machine.snapshot()
    with machine.override(cpus=real.cpus + 5, physical_memory=12345) as fake:
        assert machine.snapshot() is fake
        assert (fake.cpus, fake.physical_memory) == (real.cpus + 5, 12345)
        assert fake.page_size == real.page_size
    assert machine.snapshot() is real
    with pytest.raises(ValueError):
        with machine.override(no_such_fact=1):
            pass
    assert machine.snapshot() is real


def test_refresh_reads_the_machine_again(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1024 kB\n")
    monkeypatch.setattr(machine, "MEMINFO", str(meminfo))
    monkeypatch.setattr(machine, "PROC_CGROUP", str(tmp_path / "none"))
    machine.refresh()
    try:
        assert machine.snapshot().total_memory == 1024 * 1024
        meminfo.write_text("MemTotal: 2048 kB\n")
        assert machine.snapshot().total_memory == 1024 * 1024, "cached until refresh()"
        machine.refresh()
        assert machine.snapshot().physical_memory == 2048 * 1024
    finally:
        monkeypatch.undo()
        machine.refresh()


def test_resource_limits_are_read_afresh():
    code = ("import resource; from seamless import machine\n"
            "before = machine.file_size_limit()\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, before[1]))\n"
            "print(before[0] == resource.RLIM_INFINITY or before[0] > 1 << 20, "
            "machine.file_size_limit()[0] == 1 << 20, "
            "machine.open_files_limit() == resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1 << 20:
        pytest.skip("the hard RLIMIT_FSIZE here is below 1 MiB, so the child cannot set 1 MiB")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split() == ["True", "True", "True"]
