"""Device profiles: shipped files validate, extends chains resolve, save/load round-trips exactly,
malformed files fail through the CLI with one line naming file and field (exit 2), the fingerprint
tells a foreign profile apart, and ``toolkit profile`` measures this machine."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from toolkit.cli.main import main
from toolkit.errors import ConfigError
from toolkit.profiles import (
    DeviceProfile,
    ForeignProfileWarning,
    Identity,
    Measured,
    Spec,
    describe_current_machine,
    detect,
    fingerprint_current_machine,
    find_profile,
    list_profiles,
    load_profile,
    profile_search_path,
    shipped_profiles_dir,
    warn_if_foreign,
)

SHIPPED = sorted(shipped_profiles_dir().glob("*.yaml"))

# One valid cpu profile; the malformed cases below are single edits of it.
BASE = {
    "version": 1,
    "name": "base",
    "identity": {"kind": "cpu", "vendor": "AMD", "model": "Test CPU", "arch": "x86_64"},
    "compute": {"cores": 2, "threads": 2, "peak_flops": {"float32": 5.0e10, "bfloat16": 1.0e11}},
    "memory": {"capacity_bytes": 8 << 30, "usable_bytes": 6 << 30, "bandwidth_bytes_per_s": 1.2e10},
    "features": {"avx2": True, "avx512": False, "amx": False, "neon": False, "bf16": True, "fp16": False,
                 "cuda_capability": None},
    "runtime": {"device": "cpu", "dtype": "float32", "threads": 2},
    "workload": {"prompt_tokens": 128, "generate_tokens": 32, "batch_size": 1},
    "provenance": {
        "compute.cores": {"spec": "test datasheet, page 1"},
        "compute.threads": {"spec": "test datasheet, page 1"},
        "compute.peak_flops.float32": {"measured": {"date": "2026-11-24T03:00:00+00:00", "repeats": 15,
                                                    "spread": 0.03, "method": "torch.matmul 2048"}},
        "compute.peak_flops.bfloat16": {"spec": "test datasheet, page 2"},
        "memory.capacity_bytes": {"spec": "test datasheet, page 3"},
        "memory.bandwidth_bytes_per_s": {"spec": "test datasheet, page 3"},
    },
}


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def edit(*steps):
    """A copy of BASE with ``(dotted.path, value)`` steps applied; value DELETE removes the key."""
    d = copy.deepcopy(BASE)
    for path, value in steps:
        *parents, last = path.split("/")
        node = d
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return d


DELETE = object()


def run_cli(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------ shipped


def test_shipped_profiles_cover_the_targets():
    names = {p.stem for p in SHIPPED}
    for required in ("cloud-vm-2core-x86", "ryzen9-7950x", "apple-m2", "raspberry-pi-5", "jetson-agx-orin-64gb",
                     "a100-80gb-sxm", "h100-sxm", "rtx4070-laptop"):
        assert required in names, required
    assert load_profile("cloud-vm-2core-x86").source_kind == "measured"
    assert {load_profile(n).kind for n in names} == {"cpu", "gpu"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profile_validates_and_round_trips(path, tmp_path, capsys):
    rc, out, err = run_cli(["profile", "validate", str(path)], capsys)
    assert rc == 0 and out.startswith("ok: "), err
    prof = load_profile(path)
    assert prof.name == path.stem
    assert prof.workload.prompt_tokens > 0 and prof.runtime.dtype in prof.compute.peak_flops
    for key, prov in prof.provenance.items():  # every figure names where it comes from
        assert isinstance(prov, (Measured, Spec)), key
        if isinstance(prov, Spec):
            assert len(prov.source) > 10, key
    # Save/load round-trips exactly: equal records, and a second save writes the same bytes.
    first = prof.save(tmp_path / "a.yaml")
    again = load_profile(first)
    assert again == prof
    assert again.to_dict() == prof.to_dict()
    second = again.save(tmp_path / "b.yaml")
    assert first.read_text() == second.read_text()
    assert again.fingerprint == prof.fingerprint


def test_round_trip_preserves_types_and_yaml_quirks(tmp_path):
    # Unsigned exponents are strings in YAML 1.1, unquoted dates are date objects: both normalise.
    text = yaml.safe_dump(BASE, sort_keys=False).replace("50000000000.0", "5e10")
    text = text.replace("'2026-11-24T03:00:00+00:00'", "2026-11-24T03:00:00+00:00")
    prof = load_profile(write(tmp_path / "quirks.yaml", text))
    assert prof.compute.peak_flops["float32"] == 5e10 and isinstance(prof.compute.peak_flops["float32"], float)
    assert prof.provenance["compute.peak_flops.float32"].date == "2026-11-24T03:00:00+00:00"
    again = load_profile(prof.save(tmp_path / "out.yaml"))
    assert again == prof
    assert isinstance(again.memory.capacity_bytes, int)


def test_stable_api_fields():
    p = load_profile("h100-sxm")
    assert p.runtime.device == "cuda" and p.runtime.dtype == "bfloat16" and p.runtime.threads is None
    assert p.workload.prompt_tokens == 128 and p.workload.generate_tokens == 32 and p.workload.batch_size == 1
    assert p.compute.peak_flops == {"float32": 6.7e13, "bfloat16": 9.895e14, "float16": 9.895e14}
    assert p.memory.usable_bytes < p.memory.capacity_bytes and p.memory.bandwidth_bytes_per_s == 3.35e12
    assert p.fingerprint.startswith("gpu-") and p.fingerprint == load_profile("h100-sxm").fingerprint


def test_constructing_in_python_validates():
    good = DeviceProfile.from_dict(BASE)
    with pytest.raises(ConfigError, match="identity.kind"):
        Identity(kind="tpu", vendor="x", model="y", arch="z")
    with pytest.raises(ConfigError, match="memory.usable_bytes"):
        DeviceProfile(**{**good.__dict__, "memory": type(good.memory)(8, 9, 1.0)})


# ------------------------------------------------------------------------------------------ extends


def test_extends_chain_resolves_with_deep_merge(tmp_path):
    write(tmp_path / "base.yaml", BASE)
    write(tmp_path / "mid.yaml", {
        "name": "mid", "extends": "base",
        "compute": {"peak_flops": {"float32": 6.0e10}},
        "provenance": {"compute.peak_flops.float32": {"spec": "mid datasheet"}},
        "workload": {"batch_size": 4},
    })
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "leaf.yaml", {"name": "leaf", "extends": "../mid.yaml", "runtime": {"threads": 1},
                              "description": "three levels"})
    leaf = load_profile(sub / "leaf.yaml")
    assert leaf.name == "leaf" and leaf.description == "three levels"
    assert leaf.runtime.threads == 1 and leaf.runtime.dtype == "float32"  # sibling keys inherited
    assert leaf.workload.batch_size == 4 and leaf.workload.prompt_tokens == 128
    assert leaf.compute.peak_flops == {"float32": 6.0e10, "bfloat16": 1.0e11}
    assert leaf.provenance["compute.peak_flops.float32"] == Spec("mid datasheet")
    assert leaf.provenance["compute.peak_flops.bfloat16"] == Spec("test datasheet, page 2")
    # The resolved profile saves without extends: and reloads equal.
    saved = leaf.save(tmp_path / "flat.yaml")
    assert "extends" not in yaml.safe_load(saved.read_text())
    assert load_profile(saved) == leaf


def test_shipped_extends_resolve_by_name():
    small, big = load_profile("raspberry-pi-5-4gb"), load_profile("raspberry-pi-5")
    assert small.memory.capacity_bytes == big.memory.capacity_bytes // 2
    assert small.compute == big.compute and small.memory.bandwidth_bytes_per_s == big.memory.bandwidth_bytes_per_s
    a40, a80 = load_profile("a100-40gb-sxm"), load_profile("a100-80gb-sxm")
    assert a40.compute.peak_flops == a80.compute.peak_flops
    assert a40.memory.bandwidth_bytes_per_s < a80.memory.bandwidth_bytes_per_s
    assert a40.fingerprint != a80.fingerprint  # identity.model overridden


def test_search_path_honours_env(tmp_path, monkeypatch):
    write(tmp_path / "my-box.yaml", {**BASE, "name": "my-box"})
    monkeypatch.setenv("TOOLKIT_PROFILES_DIR", str(tmp_path))
    assert profile_search_path()[0] == tmp_path
    assert find_profile("my-box") == tmp_path / "my-box.yaml"
    assert load_profile("my-box").name == "my-box"
    assert "my-box" in list_profiles() and "h100-sxm" in list_profiles()  # shipped ones still found
    # A child in the env folder can extend a shipped profile by name.
    write(tmp_path / "h100-batch8.yaml", {"name": "h100-batch8", "extends": "h100-sxm", "workload": {"batch_size": 8}})
    assert load_profile("h100-batch8").workload.batch_size == 8


# ------------------------------------------------------------------------------------------ malformed

# (case id, file content (mapping or raw text), the dotted field the one-line error must name)
MALFORMED = [
    ("bad-yaml", "version: 1\nname: [unclosed\n", "line 3"),
    ("tab-indent-yaml", "version: 1\nidentity:\n\tkind: cpu\n", "line 3"),
    ("empty-file", "", "profile"),
    ("top-level-list", "- a\n- b\n", "profile"),
    ("duplicate-key", yaml.safe_dump(BASE, sort_keys=False) + "name: again\n", "name"),
    ("missing-version", edit(("version", DELETE)), "version"),
    ("unsupported-version", edit(("version", 2)), "version"),
    ("missing-name", edit(("name", DELETE)), "name"),
    ("bad-name", edit(("name", "has spaces")), "name"),
    ("unknown-top-key", edit(("colour", "red")), "colour"),
    ("unknown-nested-key", edit(("compute/flops", 1.0)), "compute.flops"),
    ("section-not-mapping", edit(("memory", 5)), "memory"),
    ("missing-section", edit(("features", DELETE)), "features"),
    ("bad-kind", edit(("identity/kind", "tpu")), "identity.kind"),
    ("empty-model", edit(("identity/model", "  ")), "identity.model"),
    ("threads-wrong-type", edit(("compute/threads", "two")), "compute.threads"),
    ("cores-zero", edit(("compute/cores", 0)), "compute.cores"),
    ("cores-bool", edit(("compute/cores", True)), "compute.cores"),
    ("peak-negative", edit(("compute/peak_flops/float32", -1.0e9)), "compute.peak_flops.float32"),
    ("peak-unknown-dtype", edit(("compute/peak_flops/float8", 1.0e9)), "compute.peak_flops.float8"),
    ("peak-empty", edit(("compute/peak_flops", {})), "compute.peak_flops"),
    ("peak-not-a-number", edit(("compute/peak_flops/bfloat16", "fast")), "compute.peak_flops.bfloat16"),
    ("bandwidth-zero", edit(("memory/bandwidth_bytes_per_s", 0)), "memory.bandwidth_bytes_per_s"),
    ("bandwidth-nan", "", "memory.bandwidth_bytes_per_s"),  # text built below (.nan)
    ("capacity-list", edit(("memory/capacity_bytes", [8, 16])), "memory.capacity_bytes"),
    ("capacity-fraction", edit(("memory/capacity_bytes", 1.5)), "memory.capacity_bytes"),
    ("usable-over-capacity", edit(("memory/usable_bytes", 9 << 30)), "memory.usable_bytes"),
    ("missing-usable", edit(("memory/usable_bytes", DELETE)), "memory.usable_bytes"),
    ("feature-not-bool", edit(("features/avx2", "yes")), "features.avx2"),
    ("feature-missing", edit(("features/fp16", DELETE)), "features.fp16"),
    ("cuda-capability-on-cpu", edit(("features/cuda_capability", "8.0")), "features.cuda_capability"),
    ("bad-dtype", edit(("runtime/dtype", "float8")), "runtime.dtype"),
    ("dtype-without-peak", edit(("runtime/dtype", "float16")), "runtime.dtype"),
    ("cuda-device-on-cpu", edit(("runtime/device", "cuda")), "runtime.device"),
    ("bad-device", edit(("runtime/device", "tpu:0")), "runtime.device"),
    ("threads-over-hardware", edit(("runtime/threads", 64)), "runtime.threads"),
    ("prompt-zero", edit(("workload/prompt_tokens", 0)), "workload.prompt_tokens"),
    ("batch-fraction", edit(("workload/batch_size", 1.5)), "workload.batch_size"),
    ("provenance-missing", edit(("provenance/memory.bandwidth_bytes_per_s", DELETE)), "provenance.memory.bandwidth_bytes_per_s"),
    ("provenance-not-a-figure", edit(("provenance/memory.usable_bytes", {"spec": "x"})), "provenance.memory.usable_bytes"),
    ("provenance-bad-kind", edit(("provenance/compute.cores", {"guessed": "x"})), "provenance.compute.cores"),
    ("provenance-empty-source", edit(("provenance/compute.cores", {"spec": ""})), "provenance.compute.cores.spec"),
    ("provenance-negative-spread", edit(("provenance/compute.peak_flops.float32/measured/spread", -0.1)),
     "provenance.compute.peak_flops.float32.measured.spread"),
    ("provenance-missing-date", edit(("provenance/compute.peak_flops.float32/measured/date", DELETE)),
     "provenance.compute.peak_flops.float32.measured.date"),
    ("provenance-bad-date", edit(("provenance/compute.peak_flops.float32/measured/date", "yesterday")),
     "provenance.compute.peak_flops.float32.measured.date"),
    ("gpu-without-capability", edit(("identity/kind", "gpu"), ("runtime/device", "cuda")), "features.cuda_capability"),
    ("extends-unknown", edit(("extends", "no-such-profile")), "extends"),
    ("extends-not-a-string", edit(("extends", ["a", "b"])), "extends"),
    ("extends-self", edit(("extends", "case.yaml")), "extends"),
]


def _materialise(case_id, content, tmp_path) -> Path:
    path = tmp_path / "case.yaml"
    if case_id == "bandwidth-nan":
        content = yaml.safe_dump(BASE, sort_keys=False).replace("bandwidth_bytes_per_s: 12000000000.0",
                                                                  "bandwidth_bytes_per_s: .nan")
    return write(path, content)


def _assert_one_line_error(rc, out, err, file: Path, field: str):
    assert rc == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(file) in lines[0], lines[0]
    assert f": {field}:" in lines[0] or f": {field} " in lines[0] or f": {field}," in lines[0], lines[0]


def test_the_profile_every_malformed_case_edits_is_valid(tmp_path, capsys):
    """Each case below is one edit of BASE: BASE itself passes the same command (rc 0, nothing on stderr),
    so each case fails because of its edit, and a validator that refuses valid profiles fails here."""
    path = write(tmp_path / "base.yaml", BASE)
    rc, out, err = run_cli(["profile", "validate", str(path)], capsys)
    assert rc == 0 and out.startswith(f"ok: {path} (base, cpu, measured+spec") and err == ""


@pytest.mark.parametrize("case_id,content,field", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_profile_fails_with_one_line(case_id, content, field, tmp_path, capsys):
    path = _materialise(case_id, content, tmp_path)
    rc, out, err = run_cli(["profile", "validate", str(path)], capsys)
    _assert_one_line_error(rc, out, err, path, field)


def test_extends_cycle_and_parent_errors_name_the_right_file(tmp_path, capsys):
    a = write(tmp_path / "a.yaml", {**BASE, "name": "a", "extends": "b"})
    write(tmp_path / "b.yaml", {"name": "b", "extends": "a"})
    rc, out, err = run_cli(["profile", "validate", str(a)], capsys)
    _assert_one_line_error(rc, out, err, tmp_path / "b.yaml", "extends")
    assert "cycle" in err and "a.yaml -> b.yaml -> a.yaml" in err

    # A bad value inherited from the parent is reported in the parent's file.
    write(tmp_path / "parent.yaml", edit(("name", "parent"), ("compute/cores", -3)))
    child = write(tmp_path / "child.yaml", {"name": "child", "extends": "parent", "workload": {"batch_size": 2}})
    rc, out, err = run_cli(["profile", "validate", str(child)], capsys)
    _assert_one_line_error(rc, out, err, tmp_path / "parent.yaml", "compute.cores")

    # A child that overrides a figure must give that figure's provenance.
    write(tmp_path / "good.yaml", {**BASE, "name": "good"})
    sneaky = write(tmp_path / "sneaky.yaml", {"name": "sneaky", "extends": "good",
                                              "memory": {"bandwidth_bytes_per_s": 9.9e11}})
    rc, out, err = run_cli(["profile", "validate", str(sneaky)], capsys)
    _assert_one_line_error(rc, out, err, sneaky, "provenance.memory.bandwidth_bytes_per_s")

    # A child must name itself.
    nameless = write(tmp_path / "nameless.yaml", {"extends": "good"})
    rc, out, err = run_cli(["profile", "validate", str(nameless)], capsys)
    _assert_one_line_error(rc, out, err, nameless, "name")


def test_malformed_through_the_real_command(tmp_path):
    """The installed entry point (a fresh process): exit 2, one line on stderr, no traceback."""
    bad = write(tmp_path / "bad.yaml", edit(("compute/peak_flops/float32", 0)))
    cyc = write(tmp_path / "cyc.yaml", {**BASE, "name": "cyc", "extends": "cyc"})
    for path, field in ((bad, "compute.peak_flops.float32"), (cyc, "extends")):
        proc = subprocess.run([sys.executable, "-m", "toolkit.cli.main", "profile", "validate", str(path)],
                              capture_output=True, text=True)
        _assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, path, field)
    proc = subprocess.run([sys.executable, "-m", "toolkit.cli.main", "profile", "show", "no-such-profile"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no-such-profile" in proc.stderr


# ------------------------------------------------------------------------------------------ fingerprint


def _this_machine_profile(**over) -> DeviceProfile:
    """A profile of this machine built from detect() (no benchmark), with made-up rates."""
    m = detect("cpu")
    d = edit(("identity/model", m.model), ("compute/cores", m.cores), ("compute/threads", m.threads),
             ("memory/capacity_bytes", m.capacity_bytes), ("memory/usable_bytes", m.capacity_bytes // 2),
             ("runtime/threads", m.cores),
             *((f"features/{f}", getattr(m.features, f)) for f in ("avx2", "avx512", "amx", "neon", "bf16", "fp16")))
    for k, v in over.items():
        d["identity" if k == "model" else "memory"][k] = v
    return DeviceProfile.from_dict(d)


def test_fingerprint_matches_this_machine_only():
    here = _this_machine_profile()
    assert here.fingerprint == fingerprint_current_machine() and here.matches_current_machine()
    assert here.describe_machine() == describe_current_machine()  # one routine describes both
    assert not _this_machine_profile(model="Some Other CPU").matches_current_machine()
    # the same CPU model string with another ISA (e.g. a host without AVX-512) is another machine
    other = dataclasses.replace(here, features=dataclasses.replace(here.features, avx512=not here.features.avx512))
    assert other.fingerprint != here.fingerprint and not other.matches_current_machine()
    assert not load_profile("h100-sxm").matches_current_machine() or detect("auto").kind == "gpu"
    # Capacity is compared rounded up to 2 GiB: what the OS reports for a "24 GB" VM still matches it.
    a = DeviceProfile.from_dict(edit(("memory/capacity_bytes", int(23.5 * 2**30)), ("memory/usable_bytes", 1 << 30)))
    b = DeviceProfile.from_dict(edit(("memory/capacity_bytes", 24 * 2**30), ("memory/usable_bytes", 1 << 30)))
    c = DeviceProfile.from_dict(edit(("memory/capacity_bytes", 32 * 2**30), ("memory/usable_bytes", 1 << 30)))
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize("flags,bf16", [
    ({"avx2", "avx512f", "avx512_bf16"}, True),  # x86 AVX512-BF16
    ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, True),  # x86 AMX-BF16
    ({"asimd", "bf16"}, True),  # Arm BF16 extension
    ({"avx2", "avx512f", "avx_vnni"}, False),  # VNNI has integer dot products only
    ({"avx2", "avx512f", "amx_tile", "amx_int8"}, False),  # AMX without its bf16 part
    ({"avx2"}, False),
])
def test_native_bf16_from_the_cpu_flags(monkeypatch, flags, bf16):
    import toolkit.profiles.machine as D
    monkeypatch.setattr(D, "_cpu_flags", lambda: flags)
    assert detect("cpu").features.bf16 is bf16


def test_warn_if_foreign(capsys):
    foreign = _this_machine_profile(model="Some Other CPU")
    with pytest.warns(ForeignProfileWarning, match="Some Other CPU"):
        assert warn_if_foreign(foreign) is True
    err = capsys.readouterr().err
    assert "warning:" in err and "'base'" in err and "toolkit profile" in err


def test_foreign_warning_is_printed_once_and_can_be_made_an_error():
    """Measuring tools (calibrate, search) call warn_if_foreign: the user sees one stderr line (not a
    second copy from the warnings module), and a program can make it fatal with a warnings filter."""
    code = "from toolkit.profiles import load_profile, warn_if_foreign; warn_if_foreign(load_profile('ryzen9-7950x'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("warning:") and proc.stderr.count("ryzen9-7950x") == 1, proc.stderr
    strict_code = ("import warnings; from toolkit.profiles import ForeignProfileWarning; "
                   "warnings.simplefilter('error', ForeignProfileWarning); " + code)
    strict = subprocess.run([sys.executable, "-c", strict_code], capture_output=True, text=True)
    assert strict.returncode != 0 and "ForeignProfileWarning" in strict.stderr


def test_cuda_detection_and_fingerprint_with_a_fake_device(monkeypatch):
    """The CUDA path (no GPU here): detect() reads torch.cuda's device properties, and an H100 host
    matches the shipped datasheet profile."""
    torch = pytest.importorskip("torch")
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=85520809984,
                                  multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda idx: props)
    m = detect("auto")
    assert (m.kind, m.device, m.cores, m.threads, m.features.cuda_capability) == ("gpu", "cuda", 132, None, "9.0")
    assert m.features.bf16 and m.capacity_bytes == 85520809984
    h100 = load_profile("h100-sxm")
    assert fingerprint_current_machine("gpu", "cuda") == h100.fingerprint and h100.matches_current_machine()
    assert not load_profile("a100-80gb-sxm").matches_current_machine()


# ------------------------------------------------------------------------------------------ CLI


def test_profile_measures_this_machine(tmp_path, capsys, monkeypatch):
    """`toolkit profile --quick --out` end to end, with small sizes so the test stays fast."""
    import toolkit.profiles.microbench as M

    monkeypatch.setattr(M, "_plan", lambda kind, cap, quick: M._Plan(256, 8 << 20, rounds=2, repeats=2, warmup=1,
                                                                      min_time_s=0.0, max_time_s=2.0))
    out = tmp_path / "here.yaml"
    rc, stdout, err = run_cli(["profile", "--quick", "--out", str(out)], capsys)
    assert rc == 0, err
    assert stdout.startswith(f"wrote {out}")
    prof = load_profile(out)
    assert prof.name == "here" and prof.kind == "cpu" and prof.matches_current_machine()
    assert prof.runtime.threads == prof.compute.cores and prof.runtime.dtype == "float32"
    expected = ["float32"] + (["bfloat16"] if prof.features.bf16 else [])
    assert list(prof.compute.peak_flops) == expected
    assert all(v > 1e8 for v in prof.compute.peak_flops.values())  # > 0.1 GFLOP/s on any real CPU
    assert prof.memory.bandwidth_bytes_per_s > 1e8
    for dt in expected:
        prov = prof.provenance[f"compute.peak_flops.{dt}"]
        assert isinstance(prov, Measured) and prov.repeats == 4 and prov.spread >= 0 and "torch.matmul 256x256" in prov.method
        assert 0 < prov.cpu_share <= 1.5  # CPU time over (wall x threads): ~1 when idle
    assert prof.workload.prompt_tokens == 128 and prof.workload.generate_tokens == 32 and prof.workload.batch_size == 1

    # Without --out the YAML goes to stdout and loads back.
    rc, stdout, err = run_cli(["profile", "--quick", "--name", "stdout-box"], capsys)
    assert rc == 0
    assert DeviceProfile.from_dict(yaml.safe_load(stdout)).name == "stdout-box"


def test_profile_ls_show_validate(capsys, tmp_path):
    rc, out, _ = run_cli(["profile", "ls"], capsys)
    assert rc == 0
    for p in SHIPPED:
        assert p.stem in out
    rc, out, _ = run_cli(["profile", "show", "a100-40gb-sxm"], capsys)
    assert rc == 0 and "# this machine: no" in out
    shown = DeviceProfile.from_dict(yaml.safe_load(out))
    assert shown == load_profile("a100-40gb-sxm")
    rc, out, _ = run_cli(["profile", "validate", str(SHIPPED[0]), "h100-sxm"], capsys)
    assert rc == 0 and len(out.strip().splitlines()) == 2


def test_lean_import_of_profiles():
    """Loading profiles and fingerprinting the CPU do not import torch."""
    code = ("import sys, toolkit.profiles as P, toolkit.measure; P.load_profile('ryzen9-7950x'); "
            "P.fingerprint_current_machine(); print(json.dumps('torch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip()) is False
