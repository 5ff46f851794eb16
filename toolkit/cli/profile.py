"""``toolkit profile``: measure this machine into a device profile (stage 1 of 4), or inspect profiles.

``toolkit profile [--out FILE] [--quick]`` measures; ``validate``, ``ls`` and ``show`` read profiles and
measure nothing. The measuring form and the sub-actions share one parser: the sub-action is optional.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

EXAMPLES = """examples:
  toolkit profile --out run/profile.yaml          # measure this machine (about a minute)
  toolkit profile --quick                         # fewer repeats (<= 15 s); YAML to stdout
  toolkit profile --device cuda --out gpu.yaml    # a CUDA device instead of the CPU
  toolkit profile validate my-device.yaml         # check a file; exit 2 with file + field if wrong
  toolkit profile ls                              # shipped profiles and which one is this machine
  toolkit profile show h100-sxm                   # resolved YAML (after extends:)
"""


def register(sub) -> None:
    p = sub.add_parser("profile", help="stage 1: measure this machine into a device profile (or: validate, ls, show)",
                       usage="toolkit profile [--out FILE] [--quick] [--name NAME] [--device DEVICE] [--description TEXT]\n"
                       "       toolkit profile {validate FILE [FILE ...] | ls | show NAME}",
                       description="Measure this machine (FLOP/s per dtype, memory bandwidth) into a device profile "
                       "YAML, or inspect profiles with the validate / ls / show actions.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", "-o", default=None, metavar="FILE", help="YAML file to write (default: print to stdout)")
    p.add_argument("--quick", action="store_true", help="fewer repeats per figure (<= 15 s instead of <= 60 s)")
    p.add_argument("--name", default=None, help="profile name (default: the --out file's stem, or 'local')")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--description", default=None, metavar="TEXT", help="free-text description stored in the profile")
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions (optional)")
    v = actions.add_parser("validate", help="validate profile files (or names); exit 2 naming file and field if wrong")
    v.add_argument("files", nargs="+", metavar="FILE", help="device profile YAML files to check")
    v.set_defaults(func=run_validate)
    ls = actions.add_parser("ls", help="list the profiles on the search path")
    ls.set_defaults(func=run_ls)
    show = actions.add_parser("show", help="print a profile, resolved (after extends:), as YAML")
    show.add_argument("profile", metavar="NAME", help="profile name or file")
    show.set_defaults(func=run_show)
    p.set_defaults(func=run)


def _default_name(out: str | None) -> str:
    if not out:
        return "local"
    from pathlib import Path

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(out).stem).strip("-._")
    return stem[:64] or "local"


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def run(args) -> int:
    from toolkit.profiles import Measured, profile_machine
    from toolkit.progress import console, progress_bar

    name = args.name or _default_name(args.out)
    from toolkit import schema  # validate before spending a minute measuring

    try:
        schema.name(name)
    except schema.Invalid as exc:
        from toolkit.errors import UserError

        raise UserError(f"--name: {exc}") from None
    with progress_bar(transient=True) as bar:
        task = bar.add_task("profile", total=None, info="")
        profile = profile_machine(name=name, device=args.device, quick=args.quick, description=args.description,
                                  on_step=lambda label: bar.update(task, info=label))
    err = console()
    for key, prov in profile.provenance.items():
        if not isinstance(prov, Measured):
            continue
        if prov.cpu_share is not None and prov.cpu_share < 0.8:
            err.print(f"[bold yellow]warning:[/] {key}: this process got {prov.cpu_share:.0%} of the CPU time it asked "
                      "for: other processes are busy and the figure understates this machine; re-run when it is idle",
                      soft_wrap=True)
        elif prov.spread > 0.10:
            err.print(f"[bold yellow]warning:[/] {key}: spread {prov.spread:.0%} over {prov.repeats} repeats "
                      "(is the machine busy?); re-run when it is idle", soft_wrap=True)
    if args.out:
        profile.save(args.out)
        def figure(key: str, value: str) -> str:
            prov = profile.provenance[key]
            share = f", cpu share {prov.cpu_share:.0%}" if prov.cpu_share is not None else ""
            return f"{value} (spread {prov.spread:.1%}{share})"

        peaks = ", ".join(figure(f"compute.peak_flops.{dt}", f"{dt} {_si(v, 'FLOP/s')}")
                          for dt, v in profile.compute.peak_flops.items())
        bw = figure("memory.bandwidth_bytes_per_s", _si(profile.memory.bandwidth_bytes_per_s, "B/s"))
        if args.json:
            print(json.dumps({"out": str(args.out), "name": profile.name, "fingerprint": profile.fingerprint,
                              "machine": profile.describe_machine(), "engines": dict(profile.engines)}, indent=2))
        else:
            print(f"wrote {args.out}: {profile.name}, {profile.describe_machine()}; peak {peaks}; bandwidth {bw}; "
                  f"engines {_engines(profile)}; fingerprint {profile.fingerprint}")
    elif args.json:
        print(json.dumps(profile.to_dict(), indent=2))
    else:
        sys.stdout.write(profile.to_yaml())
        err.print(f"engines installed: {_engines(profile)}", soft_wrap=True, highlight=False)
    return 0


def _engines(profile) -> str:
    """The engines found on this machine with their versions, and the ones a profile could name but cannot run here."""
    from toolkit.engines import ENGINES

    have = ", ".join(f"{e} {v}" for e, v in profile.engines.items())
    missing = [e for e in ENGINES if e not in profile.engines]
    return have + (f" (not installed: {', '.join(missing)})" if missing else "")


def run_validate(args) -> int:
    from toolkit.profiles import load_profile

    checked = []
    for f in args.files:
        prof = load_profile(f)
        checked.append({"file": str(f), "name": prof.name, "kind": prof.kind, "source": prof.source_kind,
                        "fingerprint": prof.fingerprint})
        if not args.json:
            print(f"ok: {f} ({prof.name}, {prof.kind}, {prof.source_kind}, fingerprint {prof.fingerprint})")
    if args.json:  # after every file passed: a bad one is one line on stderr and nothing on stdout
        print(json.dumps({"ok": True, "profiles": checked}, indent=2))
    return 0


def run_ls(args) -> int:
    from rich.table import Table

    from toolkit.errors import UserError
    from toolkit.profiles import list_profiles, load_profile, profile_search_path

    t = Table(title="device profiles (* = this machine)")
    for col in ("name", "kind", "model", "peak (runtime dtype)", "bandwidth", "usable memory", "figures", "file"):
        t.add_column(col)
    listed = []
    for name, path in list_profiles().items():
        try:
            p = load_profile(path)
        except UserError as exc:
            t.add_row(name, "", "", "", "", "", "[red]invalid[/]", str(exc))
            listed.append({"name": name, "file": str(path), "error": str(exc)})
            continue
        mark = "*" if p.matches_current_machine() else ""
        listed.append({"name": p.name, "file": str(path), "kind": p.kind, "model": p.identity.model,
                       "source": p.source_kind, "this_machine": bool(mark)})
        t.add_row(f"{mark}{p.name}", p.kind, p.identity.model,
                  f"{_si(p.compute.peak_flops[p.runtime.dtype], 'FLOP/s')} {p.runtime.dtype}",
                  _si(p.memory.bandwidth_bytes_per_s, "B/s"), f"{p.memory.usable_bytes / 2**30:.1f} GiB",
                  p.source_kind, str(path))
    if args.json:
        print(json.dumps({"profiles": listed, "searched": [str(d) for d in profile_search_path()]}, indent=2))
        return 0
    from toolkit.progress import stdout_console

    stdout_console().print(t)
    print("searched: " + ", ".join(str(d) for d in profile_search_path()))
    return 0


def run_show(args) -> int:
    from toolkit.profiles import find_profile, load_profile

    path = find_profile(args.profile)
    p = load_profile(path)
    here = "yes" if p.matches_current_machine() else "no"
    if args.json:
        print(json.dumps({"file": str(path), "this_machine": here == "yes", "profile": p.to_dict()}, indent=2))
        return 0
    sys.stdout.write(f"# file: {path}\n# this machine: {here}\n" + p.to_yaml())
    return 0
