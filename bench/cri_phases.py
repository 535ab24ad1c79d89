"""Splits each RunPodSandbox of a CRI benchmark run into phases, from `perf script` output of
the sched_process_exec/exit tracepoints (see bench/cri-phases). A sandbox start is recognised by
its CNI ADD chain: `bridge` runs first, `portmap` after it, then `egress-guard` when it is in the
chain, then containerd starts the sandbox's shim, which starts `pause`. Teardowns run the chain
in the other order and are not counted. Prints medians in milliseconds per configuration."""

import re
import statistics
import sys

LINE = re.compile(r"(\d+\.\d+): sched:sched_process_(exec|exit): (.*)")


def events(path):
    """(time s, 'exec' | 'exit', program) in order; an exit counts once the whole process is gone."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.search(line)
            if not m:
                continue
            t, kind, rest = float(m.group(1)), m.group(2), m.group(3)
            if kind == "exec":
                name = re.search(r"filename=(\S+)", rest)
                if name:
                    out.append((t, "exec", name.group(1).rsplit("/", 1)[-1]))
            else:
                c = re.search(r"comm=(\S+) pid=\d+ .*group_dead=(\w+)", rest)
                if c and c.group(2) == "true":
                    out.append((t, "exit", c.group(1)))
    return out


def sandboxes(ev):
    """Phases of every sandbox start: dict of name -> ms, and whether egress-guard ran."""
    found = []
    start = None
    seen = []
    for i, (t, kind, prog) in enumerate(ev):
        if kind == "exec" and prog == "bridge":
            start, seen = t, []
        if start is None:
            continue
        seen.append((t, kind, prog))
        if kind == "exec" and prog == "containerd-shim-runc-v2":
            def last(k, p):
                ts = [x[0] for x in seen if x[1] == k and x[2] == p]
                return ts[-1] if ts else None
            bridge_exit, portmap_exit = last("exit", "bridge"), last("exit", "portmap")
            guard_exec, guard_exit = last("exec", "egress-guard"), last("exit", "egress-guard")
            pause = next((x[0] for x in ev[i:i + 400] if x[1] == "exec" and x[2] == "pause"), None)
            start_t, start = start, None
            if bridge_exit is None or portmap_exit is None or pause is None:
                continue
            if (guard_exec is None) != (guard_exit is None):
                continue
            found.append((guard_exec is not None, {
                "bridge (+host-local)": (bridge_exit - start_t) * 1e3,
                "portmap exit -> shim exec": (t - portmap_exit) * 1e3,
                "egress-guard exec -> exit": ((guard_exit - guard_exec) * 1e3) if guard_exec else 0.0,
                "CNI chain (bridge exec -> shim exec)": (t - start_t) * 1e3,
                "shim exec -> pause exec": (pause - t) * 1e3,
            }))
    return found


def main():
    found = sandboxes(events(sys.argv[1]))
    groups = {"with egress-guard": [p for g, p in found if g],
              "without": [p for g, p in found if not g]}
    if not all(groups.values()):
        print("cri-phases: no sandbox starts of both kinds found", file=sys.stderr)
        return 1
    names = list(groups["without"][0])
    print("| phase (median ms) | without egress-guard | with egress-guard | difference |")
    print("|---|---|---|---|")
    for n in names:
        a = statistics.median(p[n] for p in groups["without"])
        b = statistics.median(p[n] for p in groups["with egress-guard"])
        print(f"| {n} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    print(f"\nsandbox starts: {len(groups['without'])} without egress-guard (plain and + init),"
          f" {len(groups['with egress-guard'])} with it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
